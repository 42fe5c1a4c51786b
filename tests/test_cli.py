"""The skulens CLI: flags mirror the Python API; predict/eval on a real model and photos."""
import dataclasses
import json

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
