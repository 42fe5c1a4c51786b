"""Weight averaging (`skulens average`): the exact mean of runs fine-tuned from one start, exported
with its provenance; refusals of everything that cannot be averaged meaningfully."""
import numpy as np
import onnx
import pytest
import torch

from skulens import ImageClassifier, ModelError, load_dataset
from skulens.cli import main
from skulens.training import AverageConfig, TrainConfig, average, train
from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of, save_checkpoint
from skulens.training.config import TrainConfigError
from skulens.training.soup import average_checkpoints


@pytest.fixture(scope="module")
def seeds(tiny_run, grocery_subset, tmp_path_factory):
    """Two runs fine-tuned for one epoch from the tiny run's weights (as from ImageNet weights),
    seeds 1 and 2: same start, different heads, batches and augmentations."""
    start = tiny_run[0] / "best.pt"
    kwargs = load_checkpoint(start)["model_kwargs"]
    paths = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"ft{seed}")
        train(TrainConfig(data=str(grocery_subset), out=str(out), model="edge_resnet_tiny", epochs=1, input_size=32,
                          batch_size=16, num_workers=0, lr=0.05, ema_decay=0.0, seed=seed, init_from=str(start),
                          model_kwargs=kwargs))
        paths.append(out / "best.pt")
    return paths


def test_the_average_is_the_elementwise_mean_and_exports_with_its_provenance(seeds, grocery_subset, tmp_path):
    from skulens.export import ExportConfig, export

    out = average(AverageConfig(checkpoints=tuple(map(str, seeds)), out=str(tmp_path / "soup.pt")))
    a, b = (load_checkpoint(p)["model"] for p in seeds)
    soup = torch.load(out, map_location="cpu", weights_only=True)  # plain tensors: no code runs on load
    assert any("running_var" in k for k in soup["model"]) and a["head.weight"].ne(b["head.weight"]).any()
    for k, t in soup["model"].items():
        if t.is_floating_point():  # BatchNorm statistics included
            torch.testing.assert_close(t, (a[k].double() + b[k].double()).div(2).float(), msg=k)
        else:
            assert torch.equal(t, a[k]), k
    assert [f["seed"] for f in soup["averaged_from"]] == [1, 2] and soup["ema"] is None and "optimizer" not in soup
    assert all(len(f["sha256"]) == 64 for f in soup["averaged_from"])

    # the averaged network classifies real photos (finite, not collapsed onto one class)
    model, pre = model_from_checkpoint(soup), preprocess_of(soup)
    from skulens import decode_image
    val = load_dataset(grocery_subset).split("val")
    x = torch.from_numpy(np.stack([pre.apply(decode_image(s.path, preprocess=pre)) for s in val]))
    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all() and len(set(logits.argmax(1).tolist())) > 1

    report = export(ExportConfig(checkpoint=str(out), out=str(tmp_path / "soup.onnx"), data=str(grocery_subset)))
    with ImageClassifier.from_path(report["fp32"]["path"]) as clf:
        sources = clf.metadata.provenance["averaged_from"]
    assert [s["sha256"] for s in sources] == [f["sha256"] for f in soup["averaged_from"]]


def test_the_cli_writes_the_average_and_refuses_bad_sets(seeds, tiny_run, tmp_path, capsys):
    out = tmp_path / "cli" / "soup.pt"
    assert main(["average", str(seeds[0]), str(seeds[1]), "--out", str(out)]) == 0
    assert load_checkpoint(out)["averaged_from"] and "skulens export" in capsys.readouterr().out
    cases = {  # arguments -> what the message must say
        (str(seeds[0]),): "two or more",
        (str(seeds[0]), str(seeds[0])): "same checkpoint",
        (str(seeds[0]), str(tiny_run[0] / "best.pt")): "trained from scratch",
        (str(seeds[0]), str(tmp_path / "missing.pt")): "no such checkpoint",
    }
    model = onnx.helper.make_model(onnx.helper.make_graph(  # an exported model given for a checkpoint
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(model, tmp_path / "model.onnx")
    cases[(str(seeds[0]), str(tmp_path / "model.onnx"))] = "average takes the best.pt of skulens train runs"
    for args, words in cases.items():
        assert main(["average", *args, "--out", str(tmp_path / "x.pt")]) == 2
        assert words in capsys.readouterr().err, args
    (tmp_path / "file").write_text("")
    assert main(["average", str(seeds[0]), str(seeds[1]), "--out", str(tmp_path / "file" / "soup.pt")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert main(["average", str(seeds[0]), str(seeds[1]), "--out", str(seeds[1])]) == 2
    assert "one of the checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and "averaged_from" not in load_checkpoint(seeds[1])


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(labels=c["labels"][::-1]), "labels differs"),
    (lambda c: c.update(model_name="edge_resnet_small"), "model_name differs"),
    (lambda c: c["preprocess"].update(input_size=[48, 48]), "preprocess differs"),
    (lambda c: c["train_config"].update(init_from="other.pt"), "only runs from the same start"),
    (lambda c: c.update(kind="generator"), "only classifiers"),
    (lambda c: c["model"].update({"head.weight": c["model"]["head.weight"][:, :-1]}), "another shape"),
    (lambda c: c["model"].pop("head.bias"), "missing"),
    (lambda c: c["model"]["head.bias"].fill_(float("nan")), "NaN"),
    (lambda c: c.update(model=[1, 2]), "not tensors"),
])
def test_runs_that_cannot_be_averaged_are_refused_by_name(seeds, change, words):
    a, b = (load_checkpoint(p) for p in seeds)
    change(b)
    with pytest.raises(ModelError, match=words) as info:
        average_checkpoints([a, b], ["a.pt", "b.pt"])
    assert "b.pt" in str(info.value) or "a.pt" in str(info.value)


def test_an_extra_tensor_is_refused_and_the_output_is_written_atomically(seeds, tmp_path, monkeypatch):
    a, b = (load_checkpoint(p) for p in seeds)
    b["model"]["extra.weight"] = torch.zeros(2)
    with pytest.raises(ModelError, match="extra.weight"):
        average_checkpoints([a, b], ["a.pt", "b.pt"])
    # a write that fails half-way leaves the old file as it was and no temp file behind
    out = tmp_path / "soup.pt"
    save_checkpoint(out, {"kind": "classifier", "note": "old"})

    def half_write(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(TrainConfigError, match="cannot be written.*disk full"):
        average(AverageConfig(checkpoints=tuple(map(str, seeds)), out=str(out)))
    monkeypatch.undo()
    assert load_checkpoint(out)["note"] == "old" and [p.name for p in tmp_path.iterdir()] == ["soup.pt"]
