"""Shared fixtures: small subsets of the real datasets in ../shared/datasets (referenced by
absolute path, never copied), and one tiny trained + exported model per test session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKULENS_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
GROCERY = SHARED / "grocery-store" / "dataset"
FASHION = SHARED / "fashion-mnist-sample" / "sprite900.npz"


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"{path} is missing: CI must run with ../shared/datasets beside the repo")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def grocery_root() -> Path:
    return _require(GROCERY)


def make_grocery_subset(dst: Path, fine_ids=(0, 1, 9, 18, 30, 60), n_train=8, n_val=3, n_test=4) -> Path:
    """A split-list dataset over real Grocery photos: renumbered classes, absolute image paths."""
    src = _require(GROCERY)
    dst.mkdir(parents=True, exist_ok=True)
    rows = [line.split(",") for line in (src / "classes.csv").read_text().splitlines()[1:] if line]
    by_id = {int(r[1]): r for r in rows}
    coarse_map = {}
    csv_lines = [(src / "classes.csv").read_text().splitlines()[0]]
    for new, old in enumerate(fine_ids):
        r = by_id[old]
        coarse_map.setdefault(int(r[3]), len(coarse_map))
        csv_lines.append(f"{r[0]},{new},{r[2]},{coarse_map[int(r[3])]},,")
    (dst / "classes.csv").write_text("\n".join(csv_lines) + "\n")
    # val.txt in Grocery lacks many classes; take val images from the train list's tail instead
    train_lines = [line.split(", ") for line in (src / "train.txt").read_text().splitlines() if line]
    test_lines = [line.split(", ") for line in (src / "test.txt").read_text().splitlines() if line]
    out = {"train": [], "val": [], "test": []}
    for new, old in enumerate(fine_ids):
        coarse = coarse_map[int(by_id[old][3])]
        tr = [p for p, f, _ in train_lines if int(f) == old]
        te = [p for p, f, _ in test_lines if int(f) == old]
        out["train"] += [f"{src / p}, {new}, {coarse}" for p in tr[:n_train]]
        out["val"] += [f"{src / p}, {new}, {coarse}" for p in tr[n_train:n_train + n_val]]
        out["test"] += [f"{src / p}, {new}, {coarse}" for p in te[:n_test]]
    for split, lines in out.items():
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="session")
def grocery_subset(tmp_path_factory) -> Path:
    return make_grocery_subset(tmp_path_factory.mktemp("grocery_subset"))


@pytest.fixture(scope="session")
def grocery_image(grocery_root) -> Path:
    return grocery_root / "test" / "Fruit" / "Apple" / "Granny-Smith" / sorted(
        os.listdir(grocery_root / "test" / "Fruit" / "Apple" / "Granny-Smith"))[0]


@pytest.fixture(scope="session")
def fashion_sample():
    d = np.load(_require(FASHION))
    return d["x"], d["y"]


@pytest.fixture(scope="session")
def tiny_run(grocery_subset, tmp_path_factory):
    """A tiny edge model with a patchify stem, like the shipped edge_resnet_patch, trained
    2 epochs on the real subset (32x32 inputs)."""
    from skulens.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(data=str(grocery_subset), out=str(out), model="edge_resnet_tiny", epochs=2,
                      input_size=32, batch_size=16, num_workers=0, lr=0.05, ema_decay=0.0,
                      model_kwargs={"stem_stride": 2, "patch_stem": True})
    metrics = train(cfg)
    return out, metrics


def _export_tiny(tiny_run, grocery_subset, folder, **kwargs):
    from skulens.export import ExportConfig, export_classifier

    report = export_classifier(ExportConfig(checkpoint=str(tiny_run[0] / "best.pt"), out=str(folder / "tiny.onnx"),
                                            int8=True, data=str(grocery_subset), calibration_size=32,
                                            activation_type="u8", **kwargs))
    return Path(report["fp32"]["path"]), Path(report["int8"]["path"]), report


@pytest.fixture(scope="session")
def tiny_models(tiny_run, grocery_subset, tmp_path_factory):
    """The tiny model exported as export does by default: uint8 NHWC pixel input (the
    normalisation folded into the patchify stem). (fp32 path, int8 path, export report)."""
    return _export_tiny(tiny_run, grocery_subset, tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def tiny_float_models(tiny_run, grocery_subset, tmp_path_factory):
    """The same checkpoint exported with float32 NCHW input (the contract it was trained on)."""
    return _export_tiny(tiny_run, grocery_subset, tmp_path_factory.mktemp("tiny_float_export"),
                        input_dtype="float32")


TINY_GAN = dict(image_size=16, z_dim=16, embed_dim=8, g_width=32, d_width=16, batch_size=8,
                steps_per_epoch=3, threads=1, discriminator="dcgan")


@pytest.fixture(scope="session")
def tiny_gan(grocery_subset, tmp_path_factory):
    """A tiny GAN trained 2 epochs x 3 steps on real Grocery photos (6 classes, 16x16):
    (run folder, training result, GanConfig)."""
    from skulens.training.gan import GanConfig, train_gan

    out = tmp_path_factory.mktemp("tiny_gan")
    cfg = GanConfig(data=str(grocery_subset), out=str(out), epochs=2, grid_classes="0,2,5", **TINY_GAN)
    return out, train_gan(cfg), cfg


@pytest.fixture(scope="session")
def tiny_gen(tiny_gan, tmp_path_factory):
    """The tiny GAN exported through the same `skulens export` command as classifiers (+ INT8):
    (path, export report)."""
    import json

    from skulens.cli import main

    path = tmp_path_factory.mktemp("tiny_gen") / "gen.onnx"
    if main(["-q", "export", str(tiny_gan[0] / "last.pt"), "--out", str(path), "--int8",
             "--calibration-size", "24"]) != 0:
        raise RuntimeError("exporting the tiny GAN failed")
    return path, json.loads(path.with_name("gen.report.json").read_text())


@pytest.fixture()
def gen_path(tiny_gen):
    """The tiny GAN exported as fp32 + INT8 (shipped or rejected by its gate)."""
    return tiny_gen[0]
