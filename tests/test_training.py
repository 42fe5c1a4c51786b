"""Training: outputs, atomic weights-only checkpoints, resume, transfer learning."""
import json

import pytest
import torch

from skulens import ModelError
from skulens.training import TrainConfig, train
from skulens.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="edge_resnet_tiny", epochs=2, input_size=32,
                batch_size=16, num_workers=0, lr=0.05, ema_decay=0.0)
    return TrainConfig(**{**base, **kw})


def test_run_writes_metrics_plots_and_a_weights_only_checkpoint(tiny_run):
    out, metrics = tiny_run
    for name in ("best.pt", "last.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["history"]) == 2 and saved["eval"]["split"] == "test"
    assert set(saved["eval"]["per_class"]) <= set(load_checkpoint(out / "best.pt")["labels"])
    assert "coarse_top1" in saved["eval"] and 0 <= saved["eval"]["top1"] <= 1
    ckpt = torch.load(out / "best.pt", weights_only=True)  # no pickled code inside
    assert ckpt["preprocess"]["input_size"] == [32, 32] and len(ckpt["labels"]) == 6


def test_best_checkpoint_is_the_last_epoch_or_the_best_val_one(tiny_run, grocery_subset, tmp_path):
    out, metrics = tiny_run  # the default: select="last"
    assert load_checkpoint(out / "best.pt")["epoch"] == load_checkpoint(out / "last.pt")["epoch"] == 1
    assert metrics["best_epoch"] == 2 and metrics["select"] == "last"
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert metrics["best_val_top1"] == history[-1]["val_top1"]  # best.pt's, not the max
    m = train(_cfg(grocery_subset, tmp_path / "v", epochs=3, select="val"))
    vals = [h["val_top1"] for h in json.loads((tmp_path / "v" / "metrics.json").read_text())["history"]]
    want = max(i for i, v in enumerate(vals) if v == max(vals))  # ties go to the later epoch
    assert load_checkpoint(tmp_path / "v" / "best.pt")["epoch"] == want and m["best_epoch"] == want + 1
    assert m["select"] == "val" and m["best_val_top1"] == max(vals)


def test_resume_continues_an_interrupted_run(grocery_subset, tmp_path):
    train(_cfg(grocery_subset, tmp_path / "r", epochs=1, ema_decay=0.9))
    first = load_checkpoint(tmp_path / "r" / "last.pt")
    assert first["epoch"] == 0
    # with EMA the kept weights are the average, the raw ones are kept for resuming
    assert not torch.equal(first["model"]["head.weight"], first["raw_model"]["head.weight"])
    train(_cfg(grocery_subset, tmp_path / "r", epochs=3, resume=True, ema_decay=0.9))
    resumed = load_checkpoint(tmp_path / "r" / "last.pt")
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert int(resumed["ema"]["n_averaged"]) == 3 * int(first["ema"]["n_averaged"])
    with pytest.raises(ValueError, match="another model or class set"):
        train(_cfg(grocery_subset, tmp_path / "r", model="seed_cnn", epochs=4, resume=True))


def test_init_from_copies_the_backbone_and_replaces_the_head(tiny_run, grocery_subset, tmp_path):
    from skulens import load_dataset

    # a different class set: keep 4 of the 6 classes -> the head must be new
    ds = load_dataset(grocery_subset)
    sub = tmp_path / "four"
    sub.mkdir()
    (sub / "classes.csv").write_text((grocery_subset / "classes.csv").read_text())
    for split in ("train", "val", "test"):
        keep = [ln for ln in (grocery_subset / f"{split}.txt").read_text().splitlines()
                if ln and int(ln.split(", ")[1]) < 4]
        (sub / f"{split}.txt").write_text("\n".join(keep) + "\n")
    src_ckpt = load_checkpoint(tiny_run[0] / "best.pt")
    src = src_ckpt["model"]
    out = tmp_path / "ft"
    train(_cfg(sub, out, epochs=1, init_from=str(tiny_run[0] / "best.pt"), freeze_backbone=1, lr=0.0,
               model_kwargs=src_ckpt["model_kwargs"]))
    ft = load_checkpoint(out / "last.pt")["model"]
    assert len(ds.classes) == 6 and ft["head.weight"].shape[0] == 6  # classes.csv names 6
    # lr=0 and frozen backbone: the copied backbone weights are unchanged
    torch.testing.assert_close(ft["stem.0.weight"], src["stem.0.weight"])


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"kind": "classifier", "x": torch.ones(2)})

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2)), "old checkpoint intact"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temp files left behind"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="not a readable skulens checkpoint"):
        load_checkpoint(path)


def test_cutmix_mixup_keeps_shapes_and_label_weights():
    from skulens.training.trainer import _mix

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    seen_kinds = set()
    for _ in range(20):
        xm, yb, lam = _mix(x, y, 1.0, gen)
        assert xm.shape == x.shape and 0.0 <= lam <= 1.0 and sorted(yb.tolist()) == list(range(8))
        # CutMix copies whole pixels from the partner image; MixUp blends them
        same_or_partner = ((xm == x) | (xm == x[yb])).all()  # y = arange, so x[yb] = partners
        seen_kinds.add("cutmix" if bool(same_or_partner) else "mixup")
    assert seen_kinds == {"cutmix", "mixup"}
    assert _mix(x, y, 0.0, gen) == (x, y, 1.0)
