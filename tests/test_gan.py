"""Conditional GAN: architecture, training on real photos, checkpoints, export, INT8 gate, eval."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import TINY_GAN
from skulens import ImageGenerator, SkulensError
from skulens._metadata import SCHEMA_VERSION, decode_metadata


@pytest.mark.parametrize("size,channels", [(8, 3), (28, 1), (32, 3), (48, 3), (64, 1)])
def test_generator_really_upsamples_to_the_configured_size(size, channels):
    from skulens.training.gan.models import Discriminator, Generator, upsampling_plan

    s0, n_up = upsampling_plan(size)
    assert n_up >= 1 and s0 * 2 ** n_up == size and s0 <= 7
    g = Generator(num_classes=4, z_dim=8, image_size=size, channels=channels, width=32, embed_dim=4)
    assert len(g.blocks) == n_up
    x = g(torch.randn(3, 8), torch.tensor([0, 1, 3]))
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    d = Discriminator(num_classes=4, image_size=size, channels=channels, width=8)
    assert d(x, torch.tensor([0, 1, 3])).shape == (3,)


def test_bad_options_are_clear_errors():
    from skulens.training.gan.config import GanConfig

    with pytest.raises(SkulensError, match="image_size must be a multiple of 4"):
        GanConfig(data="x", image_size=30)
    with pytest.raises(SkulensError, match="unknown diffaug policies"):
        GanConfig(data="x", diffaug="color,rotate")


def test_diff_augment_is_differentiable_seeded_and_shape_preserving():
    from skulens.training.gan.diffaug import diff_augment

    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    policies = ["color", "translation", "cutout"]
    a = diff_augment(x, policies, torch.Generator().manual_seed(0))
    b = diff_augment(x, policies, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    cut = diff_augment(torch.ones(2, 1, 8, 8), ["cutout"], torch.Generator().manual_seed(1))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert ((zeros > 0) & (zeros <= 16)).all()  # one (possibly edge-clipped) 4x4 square per image


def test_training_writes_weights_only_checkpoint_grids_and_curves(tiny_gan):
    out, metrics, cfg = tiny_gan
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "generator" and ckpt["epoch"] == 1 and ckpt["step"] == 6
    assert len(ckpt["labels"]) == 6 and ckpt["n_train"] == 48
    assert metrics["steps"] == 6 and len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    assert metrics["cpu_seconds"] > 0 and metrics["train_seconds"] > 0
    import cv2

    grids = sorted((out / "samples").glob("epoch_*.png"))
    assert [g.name for g in grids] == ["epoch_0001.png", "epoch_0002.png"]
    grid = cv2.imread(str(grids[-1]))
    tile = 16 * 4 + 2  # 16 px tiles upscaled x4, 2 px padding
    assert grid.shape[0] == 3 * tile + 2  # one row per chosen class
    assert (out / "losses.png").stat().st_size > 1000


def test_resume_continues_exactly(grocery_subset, tiny_gan, tmp_path):
    """2 epochs in one run == 1 epoch + resume for 1 more: seeded and resumable."""
    from skulens.training.gan import GanConfig, train_gan

    train_gan(GanConfig(data=str(grocery_subset), out=str(tmp_path), epochs=1, **TINY_GAN))
    train_gan(GanConfig(data=str(grocery_subset), out=str(tmp_path), epochs=2, resume=True, **TINY_GAN))
    a = torch.load(tmp_path / "last.pt", weights_only=True)
    b = torch.load(tiny_gan[0] / "last.pt", weights_only=True)
    cpu = [h["cpu_seconds"] for h in a["history"]]  # CPU time carries over the resume
    assert 0 < cpu[0] < cpu[1] and a["cpu_seconds"] == cpu[1]
    for key in ("generator_ema", "discriminator"):
        for name, t in a[key].items():
            assert torch.allclose(t.float(), b[key][name].float(), atol=1e-6), (key, name)


def test_snapshots_keep_the_chosen_epochs_states(grocery_subset, tiny_gan, tmp_path):
    """--snapshot-every N: the whole state every N epochs as epochNNN.pt, beside last.pt."""
    from skulens.training.gan import GanConfig, train_gan

    assert not list(tiny_gan[0].glob("epoch*.pt"))   # off by default
    train_gan(GanConfig(data=str(grocery_subset), out=str(tmp_path), epochs=2, snapshot_every=1, **TINY_GAN))
    first, second = (torch.load(tmp_path / f"epoch00{e}.pt", weights_only=True) for e in (1, 2))
    assert (first["epoch"], first["step"], second["epoch"], second["step"]) == (0, 3, 1, 6)
    same_run = torch.load(tiny_gan[0] / "last.pt", weights_only=True)   # the fixture: the same 2 epochs, same seed
    for name, t in second["generator_ema"].items():
        assert torch.allclose(t.float(), same_run["generator_ema"][name].float(), atol=1e-6), name
    assert not all(torch.equal(t, second["generator_ema"][n]) for n, t in first["generator_ema"].items())
    with pytest.raises(SkulensError, match="snapshot_every must be >= 0"):
        GanConfig(data="x", snapshot_every=-1)


def test_export_parity_shapes_and_metadata_round_trip(tiny_gan, tiny_gen):
    path, report = tiny_gen
    assert report["kind"] == "generator" and report["parity_max_abs_diff"] < 1e-4
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    z_in, label_in = model.graph.input
    assert (z_in.name, label_in.name) == ("z", "label")
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    ckpt = torch.load(tiny_gan[0] / "last.pt", weights_only=True)
    assert meta.kind == "generator" and meta.labels == tuple(ckpt["labels"])
    assert meta.schema_version == SCHEMA_VERSION and meta.preprocess is None
    assert meta.generator["z_dim"] == 16 and meta.generator["output_size"] == [16, 16]
    assert meta.generator["channel_order"] == "RGB" and meta.generator["value_range"] == [-1.0, 1.0]
    assert meta.io["inputs"][0]["dtype"] == "float32" and meta.io["inputs"][1]["dtype"] == "int64"
    assert meta.metrics["training"]["n_train"] == 48
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        out = sess.run(None, {"z": np.zeros((n, 16), np.float32), "label": np.arange(n) % 6})[0]
        assert out.shape == (n, 3, 16, 16)


def test_int8_ships_only_behind_the_gate(tiny_gen):
    path, report = tiny_gen
    gate = report["int8"]["gate"]
    assert report["int8"]["shipped"] == gate["passed"] == (gate["psnr_db"] >= 30.0)
    shipped = path.with_name("gen.int8.onnx")
    assert shipped.exists() == gate["passed"]
    assert (str(shipped) in report["shipped"]) == gate["passed"]


def test_quality_gate_rejects_a_broken_int8_model(tiny_gan, tiny_gen, tmp_path):
    from skulens.export._gan import fixed_inputs, quality_gate
    from skulens.export._onnx import read_metadata_props, write_metadata
    from skulens.export._quantize import quantize_int8

    path, _ = tiny_gen
    same = quality_gate(path, path)
    assert same["passed"] and same["psnr_db"] == float("inf")
    # broken calibration: latents 1000x too small, so every activation range is far too narrow
    z, labels = fixed_inputs(16, 6, 4, seed=0)
    broken = quantize_int8(path, tmp_path / "broken.onnx", {"z": z * 1e-3, "label": labels})
    write_metadata(broken, decode_metadata(read_metadata_props(path)))
    gate = quality_gate(path, broken, classifier=None)
    assert not gate["passed"] and "PSNR" in gate["reason"] and gate["psnr_db"] < 30


def test_failed_gate_ships_fp32_and_says_why(tiny_gan, tmp_path):
    from skulens.export import ExportConfig, export_generator

    out = tmp_path / "g.onnx"
    (tmp_path / "g.int8.onnx").write_bytes(b"stale")  # an older INT8 must not look shipped
    report = export_generator(ExportConfig(checkpoint=str(tiny_gan[0] / "last.pt"), out=str(out), int8=True,
                                           calibration_size=12, psnr_min=1000.0))
    assert report["shipped"] == [str(out)] and not report["int8"]["shipped"]
    assert "PSNR" in report["int8"]["reason"] and "fp32" in report["int8"]["reason"]
    assert not (tmp_path / "g.int8.onnx").exists() and (tmp_path / "g.int8.rejected.onnx").exists()
    saved = json.loads((tmp_path / "g.report.json").read_text())
    assert saved["int8"]["gate"]["passed"] is False
    with ImageGenerator.from_path(tmp_path / "g.int8.rejected.onnx") as g:
        assert g.metadata.metrics["int8_gate"]["passed"] is False


def test_grayscale_fashion_mnist(fashion_sample, tmp_path):
    from skulens.export import ExportConfig, export_generator
    from skulens.training.gan import GanConfig, train_gan
    from skulens.training.gan.data import from_arrays

    x, y = fashion_sample
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
    cfg = GanConfig(data="fashion", out=str(tmp_path / "gan"), channels=1, epochs=1,
                    classes="Sneaker,Bag,Trouser", **{**TINY_GAN, "image_size": 28})
    real = from_arrays(x, y, names, 28, 1, source="fashion-mnist-sample")
    metrics = train_gan(cfg, real=real)
    assert metrics["num_classes"] == 3 and metrics["n_train"] == 270 and metrics["channels"] == 1
    export_generator(ExportConfig(checkpoint=str(tmp_path / "gan" / "last.pt"), out=str(tmp_path / "f.onnx")))
    with ImageGenerator.from_path(tmp_path / "f.onnx") as g:
        assert g.labels == ("Sneaker", "Bag", "Trouser") and g.channel_order == "GRAY"
        imgs = g.generate("Bag", n=3, seed=0)
    assert imgs.shape == (3, 28, 28) and imgs.dtype == np.uint8


def test_fid_and_gate_metrics_on_known_cases():
    from skulens.training.gan.metrics import frechet_distance, psnr, relative_feature_distance

    rng = np.random.default_rng(0)
    f = rng.standard_normal((4000, 3))
    assert frechet_distance(f, f) == pytest.approx(0, abs=1e-9)
    # same covariance, mean shifted by (2, 0, 0): FID = 4
    assert frechet_distance(f, f + [2.0, 0, 0]) == pytest.approx(4.0, abs=1e-6)
    # N(0, I) vs N(0, 4I): Tr(I + 4I - 2*2I) = 3 per dim... = 1 * 3
    assert frechet_distance(f, 2 * rng.standard_normal((4000, 3))) == pytest.approx(3.0, rel=0.1)
    a = np.zeros((2, 4, 4), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255), abs=1e-9)
    assert relative_feature_distance(f[:50], f[:50]) == 0.0


def test_within_class_spread_sees_mode_collapse():
    from skulens.training.gan.metrics import within_class_spread

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 5
    labels = np.repeat(np.arange(4), 10)
    varied = centres[labels] + rng.standard_normal((40, 16))
    collapsed = centres[labels] + 0.01 * rng.standard_normal((40, 16))
    assert within_class_spread(collapsed, labels) < 1e-4 < within_class_spread(varied, labels)
    # the distance between classes does not count; two orthogonal pairs -> cosine distance 1
    assert within_class_spread(np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]]), np.array([0, 0, 1, 1])) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        within_class_spread(np.ones((3, 2)), np.arange(3))
