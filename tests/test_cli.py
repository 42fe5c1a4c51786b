"""The skulens CLI: flags mirror the Python API; predict/eval on a real model and photos."""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from skulens.cli import build_parser, main


def _flags(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest for a in sub.choices[command]._actions} - {"help"}


def test_train_and_export_flags_match_the_python_api():
    from skulens.export.config import ExportConfig
    from skulens.training import TrainConfig

    scalar = {f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("augment", "model_kwargs")}
    assert scalar <= _flags("train")
    from skulens.training import SoupConfig
    assert scalar | {f.name for f in dataclasses.fields(SoupConfig)} <= _flags("soup")
    assert {f.name for f in dataclasses.fields(ExportConfig)} <= _flags("export")


def test_predict_json_and_text(tiny_models, grocery_image, capsys, tmp_path):
    assert main(["predict", str(tiny_models[1]), str(grocery_image), "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["source"] == str(grocery_image) and len(out["categories"]) == 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["predict", str(tiny_models[1]), str(grocery_image), str(bad)]) == 1
    captured = capsys.readouterr()
    assert str(grocery_image) in captured.out and "bad.jpg" in captured.err


def test_eval_reports_fine_and_coarse_accuracy(tiny_models, grocery_subset, capsys):
    assert main(["eval", str(tiny_models[0]), "--data", str(grocery_subset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 24 and report["split"] == "test"
    assert {"top1", "top5", "coarse_top1", "per_class"} <= set(report)
    assert len(report["per_class"]) == 6


def test_eval_writes_per_class_table_confusion_matrix_and_misclassified_photos(tiny_models, grocery_subset,
                                                                               capsys, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_models[0]), "--data", str(grocery_subset), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for shown in ("top-1", "top-5", "mean per-class", "macro F1", "coarse top-1", "weakest classes"):
        assert shown in text
    assert main(["eval", str(tiny_models[0]), "--data", str(grocery_subset), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "details" not in report and {"macro_f1", "mean_class_top1"} <= set(report)

    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    labels, matrix = rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert [r[0] for r in rows[1:]] == labels and matrix.sum() == report["n"] == 24
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["top1"])
    with open(out / "per_class.csv", newline="") as f:
        per_class = {r["label"]: r for r in csv.DictReader(f)}
    assert len(per_class) == 6 and sum(int(r["n"]) for r in per_class.values()) == 24
    for i, label in enumerate(labels):  # the table and the matrix tell the same story
        if label in per_class:
            r = per_class[label]
            assert int(r["n"]) == matrix[i].sum() and int(r["predicted"]) == matrix[:, i].sum()
            assert float(r["recall"]) == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-4)
            assert float(r["precision"]) == pytest.approx(matrix[i, i] / max(matrix[:, i].sum(), 1), abs=1e-4)
            assert report["per_class"][label]["f1"] == pytest.approx(float(r["f1"]), abs=1e-4)
    md = (out / "per_class.md").read_text()
    assert "| class | n | precision | recall | F1 | predicted |" in md and "macro average" in md
    png = cv2.imread(str(out / "confusion.png"))
    assert png is not None and png.shape[0] > 6 * 18 and png.shape[1] > 6 * 18
    copies = sorted(os.listdir(out / "misclassified"))
    assert len(copies) == 24 - np.trace(matrix)
    assert all("_as_" in name for name in copies)
    with open(out / "misclassified.csv", newline="") as f:
        wrong = list(csv.DictReader(f))
    assert len(wrong) == len(copies) and all(w["true"] != w["pred"] for w in wrong)
    for w in wrong:
        assert (out / w["copy"]).read_bytes() == Path(w["path"]).read_bytes()


def test_predict_takes_folders_and_globs_and_goes_on_after_a_bad_input(tiny_models, grocery_image, tmp_path,
                                                                          capsys):
    shelf = tmp_path / "shelf"
    (shelf / "top" / "left").mkdir(parents=True)
    (shelf / ".thumbs").mkdir()
    for where in (shelf / "a.jpg", shelf / "top" / "b.JPG", shelf / "top" / "left" / "c.jpg",
                  shelf / ".thumbs" / "hidden.jpg", tmp_path / "loose1.jpg", tmp_path / "loose2.jpg"):
        shutil.copyfile(grocery_image, where)
    (shelf / "notes.txt").write_text("not a photo")
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_models[1]), str(shelf), str(tmp_path / "loose*.jpg"), str(tmp_path / "empty"),
                 str(tmp_path / "missing.jpg"), str(tmp_path / "nothing*.png"), "--json"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["source"]).relative_to(tmp_path).as_posix() for r in rows if "error" not in r] == [
        "shelf/a.jpg", "shelf/top/b.JPG", "shelf/top/left/c.jpg", "loose1.jpg", "loose2.jpg"]
    errors = {Path(r["source"]).name: r["error"] for r in rows if "error" in r}
    assert "no image files in this folder" in errors["empty"]
    assert "no such image file" in errors["missing.jpg"]
    assert "no file matches" in errors["nothing*.png"]
    assert "3 of 8 images could not be classified" in captured.err


def test_a_checkpoint_where_a_model_belongs_and_the_reverse(tiny_run, tiny_models, grocery_image, capsys):
    best = tiny_run[0] / "best.pt"
    assert main(["predict", str(best), str(grocery_image)]) == 2
    err = capsys.readouterr().err
    assert "this is a training checkpoint" in err and f"skulens export {best} --out" in err
    assert "INVALID_PROTOBUF" not in err
    assert main(["eval", str(best), "--data", "whatever"]) == 2
    assert "training checkpoint" in capsys.readouterr().err
    assert main(["export", str(tiny_models[0])]) == 2
    err = capsys.readouterr().err
    assert "this is an exported ONNX model, not a checkpoint" in err and "weights_only" not in err
    assert main(["predict", str(grocery_image), str(tiny_models[0])]) == 2  # arguments swapped
    assert "this is an image, not an exported model" in capsys.readouterr().err
    assert main(["predict", str(grocery_image.parent), str(grocery_image)]) == 2
    assert "this is a folder" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(tiny_models, grocery_image):
    """`skulens predict ... | head`: the reader went away; exit 0 without a traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", str(tiny_models[1]),
                               *[str(grocery_image)] * 3], stdout=write, stderr=subprocess.PIPE, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""


def test_gallery_add_skips_an_unreadable_photo(tiny_models, grocery_subset, grocery_image, tmp_path, capsys):
    gallery = tmp_path / "shop.gallery"
    assert main(["-q", "gallery", "create", str(tiny_models[0]), "--data", str(grocery_subset), "--per-class", "2",
                 "--out", str(gallery), "--threads", "1"]) == 0
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    capsys.readouterr()
    assert main(["gallery", "add", str(gallery), str(tiny_models[0]), "--label", "New Cola", str(bad),
                 str(grocery_image)]) == 1
    captured = capsys.readouterr()
    assert "bad.jpg" in captured.err and "skipped" in captured.err and "New Cola: 1 photos added" in captured.out
    assert main(["gallery", "list", str(gallery), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["products"]["New Cola"] == 1


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.onnx"), "x.jpg"]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.onnx"), "--data", str(tmp_path)]) == 2


def test_missing_extra_names_the_extra(monkeypatch):
    import builtins

    import skulens.training
    from skulens import MissingExtraError

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    for mod in [m for m in list(__import__("sys").modules) if m.startswith("skulens.training.") and m != "skulens.training.config"]:
        monkeypatch.delitem(__import__("sys").modules, mod)
    with pytest.raises(MissingExtraError, match=r"skulens\[train\]"):
        skulens.training.train
