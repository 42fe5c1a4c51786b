"""ImageNet weights: really loaded (real Grocery fruit photos get their ImageNet class through
our key map and the model's declared normalisation), provenance, refusals."""
import numpy as np
import pytest
import torch

from skulens import MissingExtraError, ModelError, decode_image, load_dataset
from skulens.training.config import TrainConfig, make_preprocess, pretrained_installed, resolve
from skulens.training.models import create_model, preprocess_facts

pytestmark = pytest.mark.skipif(not pretrained_installed("efficientnet_lite0"),
                                reason="the pretrained extra is not installed (pip install 'skulens[pretrained]')")

# Grocery fine class id -> ImageNet-1k class id
GROCERY_TO_IMAGENET = {1: 948, 6: 954, 8: 951, 16: 950, 25: 957, 63: 943, 67: 947, 71: 945}
# Granny Smith, banana, lemon, orange, pomegranate, cucumber, mushroom, bell pepper


def _fruit_photos(grocery_root, per_class=5):
    ds = load_dataset(grocery_root)
    train = ds.split("train")
    return [(s.path, GROCERY_TO_IMAGENET[c]) for c in GROCERY_TO_IMAGENET
            for s in [s for s in train if s.label == c][:per_class]]


@torch.no_grad()
def test_imagenet_weights_name_real_fruit_photos(grocery_root):
    from skulens.training.pretrained import imagenet_classifier

    model = create_model("efficientnet_lite0", num_classes=81, pretrained=True).eval()
    info = model.pretrained_info
    assert info["weights"] == "efficientnet_lite0" and len(info["sha256"]) == 64 and info["tensors"] == 294
    fc = imagenet_classifier("efficientnet_lite0")
    # the contract training builds for this model: its declared (x - 127) / 128 normalisation
    pre = make_preprocess(resolve(TrainConfig(data="-", model="efficientnet_lite0")), preprocess_facts("efficientnet_lite0"))
    assert pre.input_size == (224, 224) and pre.color_order == "RGB" and abs(pre.mean[0] * 255 - 127) < 1e-6
    photos = _fruit_photos(grocery_root)
    x = torch.from_numpy(np.stack([pre.apply(decode_image(p)) for p, _ in photos]))
    pred = fc(model.features(x)).argmax(1).numpy()
    hits = int((pred == np.array([c for _, c in photos])).sum())
    # measured: 25 of 40 with these weights; 0-2 with a wrong key map, ~15 with ImageNet mean/std
    assert hits >= 20, f"only {hits}/40 fruit photos got their ImageNet class"
    # the new head is untouched by the weights: 81 outputs, fresh init
    assert model.head.weight.shape == (81, 1280)


def test_wrong_weights_file_and_models_without_weights_are_refused():
    from skulens.training import pretrained

    model = create_model("efficientnet_lite0", num_classes=5)
    if pretrained_installed("efficientnet_lite1"):  # Lite1's file has more blocks than Lite0
        with pytest.raises(ModelError, match="does not fit|does not use"):
            pretrained.load_pretrained(model, "efficientnet_lite1")
    with pytest.raises(ValueError, match="has no pretrained weights"):
        create_model("edge_resnet_patch", num_classes=5, pretrained=True)
    with pytest.raises(ValueError, match="3-channel"):
        create_model("efficientnet_lite0", num_classes=5, in_chans=1, pretrained=True)


def test_missing_weights_package_names_the_extra(monkeypatch):
    from skulens.training import pretrained

    monkeypatch.setitem(pretrained.SOURCES, "efficientnet_lite0",
                        pretrained.WeightSource("no_such_weights_pkg", "X", "no-such-weights-pkg"))
    with pytest.raises(MissingExtraError, match=r"skulens\[pretrained\]"):
        create_model("efficientnet_lite0", num_classes=5, pretrained=True)


def test_recipe_defaults_follow_the_installed_weights():
    cfg = resolve(TrainConfig(data="-"))
    assert (cfg.model, cfg.pretrained, cfg.recipe) == ("efficientnet_lite0", True, "finetune")
    assert cfg.input_size == 224 and cfg.train_size < cfg.input_size and cfg.layer_decay < 1
    scratch = resolve(TrainConfig(data="-", model="edge_resnet_patch"))
    assert (scratch.pretrained, scratch.recipe, scratch.input_size, scratch.lr) == (False, "scratch", 128, 0.1)
    explicit = resolve(TrainConfig(data="-", pretrained=False, epochs=3))
    assert (explicit.model, explicit.recipe, explicit.epochs) == ("efficientnet_lite0", "scratch", 3)
