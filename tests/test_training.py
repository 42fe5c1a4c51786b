"""Training: outputs, atomic weights-only checkpoints, resume, transfer learning."""
import json
from pathlib import Path

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
    train(_cfg(sub, out, epochs=1, init_from=str(tiny_run[0] / "best.pt"), freeze_backbone=1, lr=0.05,
               model_kwargs=src_ckpt["model_kwargs"]))
    ft = load_checkpoint(out / "last.pt")["model"]
    assert len(ds.classes) == 6 and ft["head.weight"].shape[0] == 6  # classes.csv names 6
    # frozen backbone: its weights and BatchNorm statistics are the copied ones; the head learnt
    body = [k for k in src if not k.startswith("head.") and src[k].is_floating_point()]
    assert any("running_mean" in k for k in body)
    for k in body:
        torch.testing.assert_close(ft[k], src[k], msg=k)


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
    from skulens.training.losses import cutmix_or_mixup as _mix

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


def test_run_folder_has_results_csv_and_args_json(tiny_run):
    import csv

    out, metrics = tiny_run
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds"}
    args = json.loads((out / "args.json").read_text())
    saved = json.loads((out / "metrics.json").read_text())
    assert args == saved["config"] and args["epochs"] == 2 and args["model"] == "edge_resnet_tiny"
    assert float(rows[-1]["val_top1"]) == pytest.approx(saved["history"][-1]["val_top1"], abs=1e-5)


def test_an_earlier_run_is_kept_unless_resumed_or_overwritten(tmp_path):
    from skulens.training.checkpoint import check_run_folder
    from skulens.training.config import TrainConfigError

    check_run_folder(tmp_path / "new")  # nothing there yet
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    check_run_folder(tmp_path / "run")  # a folder without a run is fine
    (tmp_path / "run" / "args.json").write_text("{}")
    with pytest.raises(TrainConfigError, match=r"already holds a training run \(args.json\)"):
        check_run_folder(tmp_path / "run")
    check_run_folder(tmp_path / "run", resume=True)
    check_run_folder(tmp_path / "run", exist_ok=True)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_ordinary_permissions_under_the_umask(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.json", lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_patience_stops_when_val_stops_improving(grocery_subset, tmp_path, monkeypatch):
    from skulens.training import trainer

    monkeypatch.setattr(trainer, "_scores", lambda model, x, y: (1.0, 0.5))  # val never improves
    m = train(_cfg(grocery_subset, tmp_path / "p", epochs=6, patience=2, select="val"))
    assert m["stopped_early"] == 3 and m["epochs_run"] == 3 and m["best_epoch"] == 3  # ties: the later epoch
    history = [{"val_top1": t, "val_loss": v} for t, v in ((0.2, 2.0), (0.5, 1.5), (0.5, 1.4), (0.4, 1.0))]
    assert trainer._epochs_without_improvement(history) == 1  # equal top-1, lower loss: epoch 3 is best


def test_data_checks_warn_and_balanced_sampling_evens_out_classes(grocery_subset):
    from skulens import load_dataset
    from skulens.internal import Sample
    from skulens.training.data import balanced_sampler, check_training_data, training_split

    ds = load_dataset(grocery_subset)
    train_s, val_s = training_split(ds)
    assert check_training_data(ds, train_s, val_s, balance=False) == [
        f"6 class(es) have fewer than 10 training photos: {ds.classes[0]} (8), {ds.classes[1]} (8), "
        f"{ds.classes[2]} (8), {ds.classes[3]} (8), {ds.classes[4]} (8), {ds.classes[5]} (8); expect weak "
        "accuracy on them (20-30 photos per class, in the lighting and angles of use, make a good start)"]
    lopsided = train_s + [Sample(s.path, 0) for s in train_s if s.label == 0] * 4 + [ds.split("test")[0]]
    warnings = check_training_data(ds, [s for s in lopsided if s.label != 5], [], balance=False)
    assert any("have no training photos" in w and ds.classes[5] in w for w in warnings)
    assert any(w.startswith(f"imbalanced classes: {ds.classes[0]} has 41 training photos") for w in warnings)
    assert any("no validation photos" in w for w in warnings)
    assert any("in more than one split" in w for w in warnings)  # a test photo among the training ones
    labels = [0] * 40 + [1] * 5
    drawn = list(balanced_sampler(labels, 4000, torch.Generator().manual_seed(0)))
    share = sum(labels[i] for i in drawn) / len(drawn)
    assert 0.45 < share < 0.55  # 5 photos of class 1 among 45, drawn half the time


def test_train_on_val_adds_the_val_photos_and_export_flags_the_threshold(tiny_run, grocery_subset, tmp_path, caplog):
    """--train-on-val trains on train + val (val still reported); export then marks the "unknown"
    threshold calibrated on those photos as not held out."""
    from skulens.export import ExportConfig, export

    _, plain = tiny_run
    m = train(_cfg(grocery_subset, tmp_path / "tv", epochs=1, train_on_val=True))
    assert m["n_val"] == plain["n_val"] > 0 and m["n_train"] == plain["n_train"] + plain["n_val"]
    assert load_checkpoint(tmp_path / "tv" / "best.pt")["train_config"]["train_on_val"] is True
    report = export(ExportConfig(checkpoint=str(tmp_path / "tv" / "best.pt"), out=str(tmp_path / "tv.onnx"),
                                 data=str(grocery_subset), unknown_precision=0.01))
    assert report["fp32"]["unknown"]["held_out"] is False  # a 1 % precision target: always reachable
    assert "trained on" in caplog.text
