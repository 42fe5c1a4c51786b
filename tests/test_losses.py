"""Label smoothing kept within the label's coarse group."""
import json

import pytest
import torch

from skulens.training import TrainConfig
from skulens.training.config import TrainConfigError
from skulens.training.losses import GroupSmoothedCrossEntropy, group_smoothed_targets


def test_share_zero_is_plain_label_smoothing():
    logits, y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 0])
    plain = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    assert torch.allclose(GroupSmoothedCrossEntropy([0, 0, 1, 1, -1], 0.1, 0.0)(logits, y), plain, atol=1e-6)


def test_the_smoothing_mass_goes_to_the_group():
    t = group_smoothed_targets([0, 0, 0, 1, -1], eps=0.3, share=1.0)
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert torch.allclose(t[0], torch.tensor([0.8, 0.1, 0.1, 0.0, 0.0]))   # 0.7 + 0.3 / 3 on itself
    assert torch.allclose(t[3], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))   # alone in its group
    assert torch.allclose(t[4], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))   # no coarse label
    half = group_smoothed_targets([0, 0, 0, 1, -1], eps=0.3, share=0.5)
    assert torch.allclose(half[0], torch.tensor([0.7 + 0.05 + 0.03, 0.08, 0.08, 0.03, 0.03]))
    # the loss prefers a wrong answer inside the group to one outside it
    loss = GroupSmoothedCrossEntropy([0, 0, 0, 1, -1], 0.3, 1.0)
    near, far = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0, 1.0, 0.0]])
    assert loss(near, torch.tensor([0])) < loss(far, torch.tensor([0]))


def test_bad_settings_are_refused():
    with pytest.raises(TrainConfigError, match="coarse_smoothing"):
        TrainConfig(data="-", coarse_smoothing=1.5)
    with pytest.raises(ValueError, match="share"):
        GroupSmoothedCrossEntropy([0, 1], 0.1, -0.1)


def test_training_with_coarse_smoothing_runs_and_needs_coarse_labels(grocery_subset, tmp_path):
    import shutil

    from skulens.training import train

    base = dict(model="edge_resnet_tiny", epochs=1, input_size=32, batch_size=16, num_workers=0, lr=0.05,
                ema_decay=0.0, coarse_smoothing=0.5)
    metrics = train(TrainConfig(data=str(grocery_subset), out=str(tmp_path / "g"), **base))
    history = json.loads((tmp_path / "g" / "metrics.json").read_text())["history"]
    assert len(history) == 1 and history[0]["train_loss"] > 0 and metrics["best_epoch"] == 1
    # class folders carry no coarse labels
    lines = (grocery_subset / "train.txt").read_text().splitlines()
    for k, line in enumerate(lines[:20]):
        folder = tmp_path / "folders" / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(line.split(", ")[0], folder / f"{k}.jpg")
    with pytest.raises(TrainConfigError, match="coarse labels"):
        train(TrainConfig(data=str(tmp_path / "folders"), out=str(tmp_path / "f"), **base))
