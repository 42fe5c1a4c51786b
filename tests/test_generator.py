"""sdk.ImageGenerator, `skulens generate`, the --gan-augment hook and `skulens gan eval`."""
import dataclasses
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skulens import GeneratorOptions, ImageGenerator, ModelError, SkulensError
from skulens._generator import GenerationError


@pytest.fixture()
def gen_path(tiny_gen):
    """The tiny GAN (conftest) exported as fp32 + INT8 (shipped or rejected by its gate)."""
    return tiny_gen[0]


def test_generate_is_bgr_uint8_and_deterministic_for_a_seed(gen_path):
    with ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1, max_batch=3)) as g:
        a = g.generate("Lime", n=5, seed=7)
        b = g.generate(g.labels.index("Lime"), n=5, seed=7)
        c = g.generate("Lime", n=5, seed=8)
        raw = g.generate_raw("Lime", n=5, seed=7)
        assert g.output_size == (16, 16) and g.z_dim == 16
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # OpenCV conventions: channel 0 of the output is blue = the model's RGB channel 2
    expected_blue = np.clip(np.rint((raw[:, 2] + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(a[..., 0], expected_blue)
    # max_batch does not change results (the latents are drawn once, with numpy)
    with ImageGenerator.from_path(gen_path, GeneratorOptions(max_batch=64)) as g:
        assert np.array_equal(g.generate("Lime", n=5, seed=7), a)


def test_latent_scale_widens_the_latent_and_what_the_generator_draws(gen_path):
    with ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1)) as g1, \
            ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1, latent_scale=2.5)) as g2:
        z1, z2 = g1.latent(64, seed=3), g2.latent(64, seed=3)
        assert np.allclose(z2, 2.5 * z1) and 2.2 < z2.std() < 2.8   # the same draw, wider
        # the images are the generator's at that latent: varied further from one noise vector to the next
        assert np.allclose(g2.generate_raw("Lime", n=64, seed=3), g2.run(z2, np.full(64, g2.labels.index("Lime"))),
                           atol=1e-6)
        spread = [g.generate_raw("Lime", n=64, seed=3).std(0).mean() for g in (g1, g2)]
        assert spread[1] > spread[0]
    for bad in (0, -1.0, 11, float("nan")):
        with pytest.raises(ValueError, match="latent_scale"):
            GeneratorOptions(latent_scale=bad)


def test_generator_errors(gen_path, tiny_models):
    with ImageGenerator.from_path(gen_path) as g:
        with pytest.raises(GenerationError, match="unknown label 'Lemon'"):
            g.generate("Lemon", n=1, seed=0)
        with pytest.raises(GenerationError, match="out of range"):
            g.generate(6, n=1)
        for bad in (0, -3, 2.5, True):
            with pytest.raises(GenerationError, match="n must be a positive integer"):
                g.generate("Lime", n=bad)
        with pytest.raises(GenerationError, match="seed"):
            g.generate("Lime", n=1, seed=-1)
        assert isinstance(GenerationError("x"), SkulensError)
    with pytest.raises(RuntimeError, match="closed"):
        g.generate("Lime", n=1, seed=0)
    fp32_classifier = tiny_models[0]
    with pytest.raises(ModelError, match="this is a classifier model, expected a generator"):
        ImageGenerator.from_path(fp32_classifier)
    with pytest.raises(ModelError, match="no such model file"):
        ImageGenerator.from_path(gen_path.with_name("missing.onnx"))


def test_sdk_stays_torch_free():
    code = "import sys, skulens, skulens._generator, skulens.cli._gan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_generate_cli_writes_a_deterministic_grid(gen_path, tmp_path, capsys):
    from skulens.cli import main

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main(["generate", str(gen_path), "--label", "Lime", "--n", "16", "--seed", "0",
                     "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    grid = cv2.imread(str(a))
    assert grid.shape == (4 * (64 + 2) + 2, 4 * (64 + 2) + 2, 3)  # 4x4 tiles of 16 px scaled x4
    assert main(["generate", str(gen_path), "--label", "Nope", "--out", str(tmp_path / "c.png")]) == 2
    assert "unknown label 'Nope'" in capsys.readouterr().err
    wide = tmp_path / "wide.png"
    assert main(["generate", str(gen_path), "--label", "Lime", "--n", "16", "--latent-scale", "2",
                 "--out", str(wide)]) == 0
    assert wide.read_bytes() != a.read_bytes() and cv2.imread(str(wide)).shape == grid.shape
    assert main(["generate", str(gen_path), "--label", "Lime", "--latent-scale", "0", "--out", str(wide)]) == 2
    assert "latent_scale must be in (0, 10]" in capsys.readouterr().err


def test_gan_augment_hook_adds_synthetic_samples(gen_path, grocery_subset, tmp_path):
    from skulens import PreprocessConfig
    from skulens.training import AugmentConfig, TrainConfig, train
    from skulens.training.data import TrainSet
    from skulens.training.gan.augment_hook import GanAugment

    with ImageGenerator.from_path(gen_path) as g:
        classes = list(g.labels) + ["Unknown-Product"]
    real_labels = [0, 0, 1, 2, 6, 6]
    extra = GanAugment(gen_path, classes, real_labels, ratio=1.5, seed=0)
    assert len(extra) == 3 + 2 + 2 and set(extra.slot_labels.tolist()) == {0, 1, 2}  # none for class 6
    assert [len(extra.pools[c]) for c in (0, 1, 2)] == [12, 8, 8]  # 4 distinct images per slot by default
    wide = GanAugment(gen_path, classes, real_labels, ratio=1.5, seed=0, pool_factor=16, latent_scale=3.0)
    assert [len(wide.pools[c]) for c in (0, 1, 2)] == [48, 32, 32]
    assert wide.pools[0].std(0).mean() > extra.pools[0].std(0).mean()  # the wider latent varies them more
    pre = PreprocessConfig(input_size=(32, 32))
    images = [np.zeros((40, 40, 3), np.uint8)] * len(real_labels)
    ts = TrainSet(images, real_labels, pre, AugmentConfig(), seed=0, extra=extra)
    assert len(ts) == len(real_labels) + len(extra)
    x, y = ts[len(real_labels)]
    assert tuple(x.shape) == (3, 32, 32) and y == 0
    assert TrainConfig(data="x").gan_augment is None  # off by default
    m = train(TrainConfig(data=str(grocery_subset), out=str(tmp_path), model="edge_resnet_tiny", epochs=1,
                          input_size=16, batch_size=16, num_workers=0, threads=1, gan_augment=str(gen_path)))
    assert m["n_train"] == 48 and "eval" in m


def test_gan_augment_add_mode_keeps_the_real_steps_and_adds_synthetic_batches(gen_path, grocery_subset, tmp_path):
    import torch

    from skulens import PreprocessConfig
    from skulens.training import AugmentConfig, TrainConfig, train
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.config import TrainConfigError
    from skulens.training.gan.augment_hook import GanAugment, SyntheticBatches

    with ImageGenerator.from_path(gen_path) as g:
        classes = list(g.labels)
    hook = GanAugment(gen_path, classes, [0, 1, 1, 2], ratio=1.0, seed=0)
    syn = SyntheticBatches(hook, PreprocessConfig(input_size=(16, 16)), AugmentConfig(), seed=0)
    first = list(syn.epoch(0, batches=3, batch_size=2))
    assert len(first) == 3 and all(tuple(x.shape) == (2, 3, 16, 16) and y.dtype == torch.int64 for x, y in first)
    again = list(syn.epoch(0, batches=3, batch_size=2))  # a pure function of (seed, epoch): resume is exact
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in syn.epoch(1, 3, 2)]))
    with pytest.raises(ValueError, match="gan-augment-ratio"):
        syn.epoch(0, batches=3, batch_size=0)
    first_only = SyntheticBatches(hook, PreprocessConfig(input_size=(16, 16)), AugmentConfig(), seed=0, epochs=1)
    assert torch.equal(next(first_only.epoch(0, 3, 2))[0], first[0][0]) and first_only.epoch(1, 3, 2) is None

    common = dict(data=str(grocery_subset), model="edge_resnet_tiny", epochs=2, input_size=16, batch_size=16,
                  num_workers=0, threads=1, seed=0)
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **common))
    add = train(TrainConfig(out=str(tmp_path / "add"), gan_augment=str(gen_path), gan_augment_mode="add", **common))
    mix = train(TrainConfig(out=str(tmp_path / "mix"), gan_augment=str(gen_path), **common))
    ck = {name: load_checkpoint(tmp_path / name / "best.pt") for name in ("plain", "add", "mix")}
    steps = {name: c["scheduler"]["last_epoch"] for name, c in ck.items()}  # optimiser steps taken
    assert add["n_train"] == plain["n_train"] == mix["n_train"] == 48
    assert steps["add"] == steps["plain"] < steps["mix"]  # add: the real-only run's steps; mix: more per epoch
    # the same real batches, and the synthetic images' loss on top: other weights
    assert any(not torch.equal(ck["plain"]["model"][k], ck["add"]["model"][k]) for k in ck["plain"]["model"])
    with pytest.raises(TrainConfigError, match="add does not combine"):
        train(TrainConfig(out=str(tmp_path / "bad"), gan_augment=str(gen_path), gan_augment_mode="add",
                          mix_prob=0.5, **common))
    # the synthetic batch normalised on its own: the same real batches and steps, other running statistics
    sep = train(TrainConfig(out=str(tmp_path / "sep"), gan_augment=str(gen_path), gan_augment_mode="add",
                            gan_augment_bn="separate", **common))
    ck["sep"] = load_checkpoint(tmp_path / "sep" / "best.pt")
    assert sep["n_train"] == 48 and ck["sep"]["scheduler"]["last_epoch"] == steps["plain"]
    means = [k for k in ck["plain"]["model"] if k.endswith("running_mean")]
    assert means and any(not torch.allclose(ck["sep"]["model"][k], ck["add"]["model"][k]) for k in means)
    with pytest.raises(TrainConfigError, match="need gan_augment_mode='add'"):
        TrainConfig(data="d", gan_augment=str(gen_path), gan_augment_bn="separate")
    with pytest.raises(TrainConfigError, match="need gan_augment_mode='add'"):
        TrainConfig(data="d", gan_augment=str(gen_path), gan_augment_epochs=1)
    # synthetic batches in the first epoch only: the same steps, other weights than with them in both
    train(TrainConfig(out=str(tmp_path / "e1"), gan_augment=str(gen_path), gan_augment_mode="add",
                      gan_augment_epochs=1, **common))
    e1 = load_checkpoint(tmp_path / "e1" / "best.pt")
    assert e1["scheduler"]["last_epoch"] == steps["plain"]
    assert any(not torch.equal(e1["model"][k], ck["add"]["model"][k]) for k in means)


def test_own_batch_statistics_leaves_the_running_statistics_to_the_real_images():
    import copy

    import torch
    from torch import nn

    from skulens.training.gan.augment_hook import own_batch_statistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    real, fake = torch.randn(8, 3, 8, 8), 3 + 2 * torch.randn(8, 3, 8, 8)
    joint, real_only = copy.deepcopy(net), copy.deepcopy(net)
    joint(torch.cat([real, fake]))
    real_only(real)
    net(real)
    with own_batch_statistics(net):
        out = net(fake)
    norms = [(a, b, c) for a, b, c in zip(net.modules(), real_only.modules(), joint.modules())
             if isinstance(a, nn.BatchNorm2d)]
    for sep, ref, mixed in norms:  # the real batch's statistics only; a joint pass would have moved them
        assert torch.equal(sep.running_mean, ref.running_mean) and torch.equal(sep.running_var, ref.running_var)
        assert int(sep.num_batches_tracked) == 1 and not torch.allclose(sep.running_mean, mixed.running_mean)
    # the fake batch was normalised by its own statistics: every channel of the last BatchNorm has mean 0, var 1
    assert out.mean((0, 2, 3)).abs().max() < 1e-5 and (out.var((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    before = norms[0][0].running_mean.clone()
    net(fake)  # tracking is back after the block
    assert not torch.equal(norms[0][0].running_mean, before)
    frozen = copy.deepcopy(net).eval()  # a module in eval mode normalises with its running statistics still
    with own_batch_statistics(frozen):
        assert torch.equal(frozen(fake), copy.deepcopy(net).eval()(fake))


def test_gan_eval_reuses_a_finished_run_of_the_same_settings_and_refuses_another(tmp_path):
    from skulens.training import TrainConfig
    from skulens.training.gan.config import GanConfigError
    from skulens.training.gan.evaluate import _train_once

    cfg = TrainConfig(data="d", out=str(tmp_path / "run"), epochs=60, gan_augment="g.onnx")
    stored = {k: v for k, v in cfg.to_dict().items() if k != "gan_augment_mode"}  # written before the field existed
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"eval": {"top1": 0.5}, "config": stored}))

    def never(_):
        raise AssertionError("trained again")

    assert _train_once(cfg, never)["eval"]["top1"] == 0.5
    with pytest.raises(GanConfigError, match="finished run of other settings"):
        _train_once(dataclasses.replace(cfg, epochs=30), never)
    with pytest.raises(GanConfigError, match="finished run of other settings"):
        _train_once(dataclasses.replace(cfg, gan_augment_mode="add"), never)


def test_cas_per_group_pools_classes_by_their_photos():
    from skulens.training.gan.eval_report import per_group

    per_class = {"a": {"n": 3, "cas_top1": 1 / 3, "real_top1": 1.0}, "b": {"n": 1, "cas_top1": 1.0, "real_top1": 0.0},
                 "c": {"n": 2, "cas_top1": 0.5, "real_top1": None}, "d": {"n": 5, "cas_top1": 1.0, "real_top1": 1.0},
                 "e": {"n": 0, "cas_top1": 0.0, "real_top1": 0.0}}
    groups = per_group(per_class, {"a": "X", "b": "X", "c": "Y", "d": "", "e": "Z"})
    assert list(groups) == ["X", "Y"]   # largest first; no group ("") and no photos are left out
    assert groups["X"] == {"classes": 2, "n": 4, "cas_top1": pytest.approx(0.5), "real_top1": pytest.approx(0.75),
                           "fraction_of_real": pytest.approx(2 / 3)}
    assert groups["Y"]["real_top1"] is None and groups["Y"]["fraction_of_real"] is None
    assert per_group({"a": {"n": 2, "cas_top1": 0.0, "real_top1": 0.0}}, {"a": "X"})["X"]["fraction_of_real"] is None


def test_gan_eval_cli_names_the_classes_and_groups_taught_least(monkeypatch, capsys, tmp_path):
    import skulens.training.gan as gan
    from skulens.cli import main

    per_class = {f"c{i}": {"n": 2, "cas_top1": i / 10, "real_top1": 1.0} for i in range(8)}
    groups = {g: {"classes": 1, "n": 2, "cas_top1": f, "real_top1": 0.5, "fraction_of_real": 2 * f}
              for g, f in (("Milk", 0.05), ("Juice", 0.1), ("Apple", 0.4), ("Pear", 0.3), ("Oat", 0.2), ("Kiwi", 0.5))}
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {"setup": {}, "cas": {"top1_generated_only": 0.35, "per_class": per_class, "per_coarse": groups}}

    monkeypatch.setattr(gan, "evaluate_gan", fake)
    assert main(["gan", "eval", "g.onnx", "--data", str(tmp_path), "--classifier", "c.pt", "--out", str(tmp_path / "e"),
                 "--no-fid", "--no-latency"]) == 0
    printed = json.loads(capsys.readouterr().out)["cas"]
    assert seen["cfg"].generator == "g.onnx" and not seen["cfg"].fid
    assert printed["least_taught"] == ["c0", "c1", "c2", "c3", "c4"] and printed["per_class"].startswith("8 classes")
    assert printed["least_taught_groups"] == {"Milk": 0.1, "Juice": 0.2, "Oat": 0.4, "Pear": 0.6, "Apple": 0.8}
    assert printed["per_coarse"].startswith("6 groups")


def test_gan_eval_end_to_end(gen_path, tiny_run, grocery_subset, tmp_path):
    from skulens._dataset import load_dataset, subset, write_split_lists
    from skulens.training.gan import evaluate_gan
    from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
    from skulens.training.data import eval_tensors
    from skulens.training.gan.config import GanEvalConfig
    from skulens.training.gan.evaluate import heldout_photos
    from skulens.training.trainer import predict_logits

    ds = load_dataset(grocery_subset)
    low = write_split_lists(subset(ds, range(6), per_class={"train": 2}), tmp_path / "low")
    with pytest.raises(SkulensError, match="lowdata"):
        GanEvalConfig(generator=str(gen_path), data="d", classifier="c", lowdata_data=str(low))
    cfg = GanEvalConfig(generator=str(gen_path), data=str(grocery_subset), classifier=str(tiny_run[0] / "best.pt"),
                        out=str(tmp_path / "eval"), lowdata_data=str(low), lowdata_generator=str(gen_path),
                        seeds=2, lowdata_epochs=1, cas=True, sample_classes="Lime,0")
    r = evaluate_gan(cfg)
    saved = json.loads((tmp_path / "eval" / "gan_eval.json").read_text())
    n_test = len(ds.split("test"))
    assert saved["fid"]["n_per_set"] == min(48, n_test) and saved["fid"]["feature_space"] == "imagenet"
    assert saved["fid"]["generated_vs_real_test"] > 0 and saved["fid"]["real_train_vs_real_test"] > 0
    kid = saved["kid"]
    assert kid["generated_vs_real_test"]["mean"] > kid["real_train_vs_real_test"]["mean"]  # an untrained GAN
    assert "classifier_on_generated_top1" in saved
    spread = saved["within_class_spread"]
    assert 0 <= spread["generated"] <= 2 and 0 < spread["real_test"] <= 2
    assert spread["ratio"] == pytest.approx(spread["generated"] / spread["real_test"])
    assert 0 <= saved["cas"]["top1_generated_only"] <= 1 and saved["cas"]["n_generated_train"] == 48
    per_class = saved["cas"]["per_class"]   # each class's real test photos: CAS and the real-data classifier
    assert set(per_class) == {ds.classes[s.label] for s in ds.split("test")}
    assert sum(v["n"] for v in per_class.values()) == n_test
    for key, total in (("cas_top1", saved["cas"]["top1_generated_only"]),
                       ("real_top1", saved["classifier_on_real_test_top1"])):
        assert sum(v[key] * v["n"] for v in per_class.values()) / n_test == pytest.approx(total)
    clf_ckpt = load_checkpoint(tiny_run[0] / "best.pt")
    test_s = ds.split("test")
    hits = predict_logits(model_from_checkpoint(clf_ckpt).eval(),
                          eval_tensors(test_s, preprocess_of(clf_ckpt))).argmax(1).numpy() == [s.label for s in test_s]
    for name, v in per_class.items():
        mask = np.array([ds.classes[s.label] == name for s in test_s])
        assert v["real_top1"] == pytest.approx(hits[mask].mean(), abs=1e-6), name
    # pooled by coarse group: Golden-Delicious and Granny-Smith are both "Apple"
    coarse_of = dict(zip(ds.classes, ds.coarse_labels))
    groups = saved["cas"]["per_coarse"]
    assert set(groups) == {coarse_of[ds.classes[s.label]] for s in test_s} and groups["Apple"]["classes"] == 2
    for g, v in groups.items():
        mask = np.array([coarse_of[ds.classes[s.label]] == g for s in test_s])
        members = [k for k in per_class if coarse_of[k] == g]
        assert v["n"] == mask.sum() and v["classes"] == len(members)
        assert v["real_top1"] == pytest.approx(hits[mask].mean(), abs=1e-6), g
        assert v["cas_top1"] * v["n"] == pytest.approx(sum(per_class[k]["cas_top1"] * per_class[k]["n"]
                                                           for k in members))
        assert v["fraction_of_real"] == (pytest.approx(v["cas_top1"] / v["real_top1"]) if v["real_top1"] else None)
    low_r = saved["lowdata"]
    assert [len(a["runs"]) for a in low_r["arms"].values()] == [2, 2]
    # beside test: the train photos of the subset's classes that it left out, none it trained on
    low_ds = load_dataset(low)
    held = heldout_photos(ds, low_ds)
    assert low_r["n_heldout"] == len(held) == sum(s.label < 6 for s in ds.split("train")) - 12
    assert not {s.path.resolve() for s in held} & {s.path.resolve() for s in low_ds.split("train")}
    assert len(low_r["paired_heldout_gain_pp"]) == 2
    ckpt = load_checkpoint(tmp_path / "eval" / "lowdata" / "real_only_seed0" / "best.pt")
    logits = predict_logits(model_from_checkpoint(ckpt).eval(), eval_tensors(held, preprocess_of(ckpt)))
    direct = float((logits.argmax(1).numpy() == np.array([s.label for s in held])).mean())
    assert low_r["arms"]["real_only"]["runs"][0]["heldout_top1"] == pytest.approx(direct, abs=1e-6)
    assert low_r["n_real_train"] == 12 and low_r["generator_saw_only_lowdata_images"] is False  # saw 48
    last = json.loads((tmp_path / "eval" / "lowdata" / "real_only_seed0" / "metrics.json").read_text())["history"][-1]
    assert low_r["arms"]["real_only"]["runs"][0]["val_top1"] == last.get("val_top1")  # for choosing on val
    # tiny_gen was exported with --int8: timed whether it shipped or was kept as .int8.rejected.onnx
    assert set(saved["latency"]["batch16_ms"]) == {"fp32", "int8"}
    assert saved["latency"]["int8_shipped"] == gen_path.with_name("gen.int8.onnx").exists()
    for png in ("gan_eval.png", "samples_real_vs_generated.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000
    assert r["fid"] == saved["fid"]
    # an evaluation killed after the CAS classifier's last epoch (no metrics.json yet) resumes it,
    # and the finished low-data runs are read back, not retrained
    (tmp_path / "eval" / "cas" / "run" / "metrics.json").unlink()
    low_mtime = (tmp_path / "eval" / "lowdata" / "real_only_seed0" / "best.pt").stat().st_mtime_ns
    again = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False))
    assert again["cas"]["top1_generated_only"] == saved["cas"]["top1_generated_only"]
    assert again["lowdata"]["arms"] == saved["lowdata"]["arms"]
    assert (tmp_path / "eval" / "lowdata" / "real_only_seed0" / "best.pt").stat().st_mtime_ns == low_mtime
    # so are they in a copy of the folder (the runs' own configs name the old one)
    shutil.copytree(tmp_path / "eval", tmp_path / "moved")
    moved = evaluate_gan(dataclasses.replace(cfg, out=str(tmp_path / "moved"), fid=False, latency=False, cas=False,
                                             threads=2))   # another thread count: the same runs
    assert moved["lowdata"]["arms"] == saved["lowdata"]["arms"]
    assert (tmp_path / "moved" / "lowdata" / "real_only_seed0" / "best.pt").stat().st_mtime_ns == \
        (tmp_path / "eval" / "lowdata" / "real_only_seed0" / "best.pt").stat().st_mtime_ns
    # a larger synthetic CAS set: twice the real counts of every class
    with pytest.raises(SkulensError, match="cas_per_real"):
        dataclasses.replace(cfg, cas_per_real=0)
    twice = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False,
                                             lowdata_data=None, lowdata_generator=None, cas_per_real=2))
    assert twice["cas"]["n_generated_train"] == 96 and twice["cas"]["per_real"] == 2
    assert (tmp_path / "eval" / "cas_x2" / "run" / "metrics.json").is_file()  # not the x1 run read back
    # the same set as a stream: half the epochs over twice the images, the optimiser steps of CAS at 1x
    with pytest.raises(SkulensError, match="cas_equal_steps needs cas_per_real > 1"):
        dataclasses.replace(cfg, cas_equal_steps=True)
    stream = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False, lowdata_data=None,
                                              lowdata_generator=None, cas_per_real=2, cas_equal_steps=True))
    assert stream["cas"]["equal_steps"] and stream["cas"]["epochs"] == 1 == twice["cas"]["epochs"] // 2
    run = json.loads((tmp_path / "eval" / "cas_x2_equal_steps" / "run" / "metrics.json").read_text())
    assert len(run["history"]) == 1 and run["n_train"] == 96
    # the low-data arm in add mode, into the same folder: its own summary beside the mix one, which stays;
    # it counts the generated images it draws (a batch beside each real batch), not mix's slots
    mix_summary = (tmp_path / "eval" / "gan_eval.json").read_bytes()
    add = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False, cas=False, gan_mode="add"))
    assert (tmp_path / "eval" / "gan_eval.json").read_bytes() == mix_summary
    add_summary = json.loads((tmp_path / "eval" / "gan_eval_add.json").read_text())
    assert add_summary["lowdata"]["arms"] == add["lowdata"]["arms"]
    assert (tmp_path / "eval" / "gan_eval_add.png").stat().st_size > 1000
    assert add["lowdata"]["gan_mode"] == "add"
    assert add["lowdata"]["arms"]["real_only"] == saved["lowdata"]["arms"]["real_only"]  # shared, not retrained
    assert add["lowdata"]["n_synthetic_per_epoch"] == saved["lowdata"]["n_synthetic_per_epoch"] == 12
    # a wider latent for the generated images: its own summary and GAN arm, the real-only arm shared
    add_bytes = (tmp_path / "eval" / "gan_eval_add.json").read_bytes()
    wide = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False, cas=False, gan_mode="add",
                                            latent_scale=2.0, seeds=1))
    assert (tmp_path / "eval" / "gan_eval_add.json").read_bytes() == add_bytes
    assert json.loads((tmp_path / "eval" / "gan_eval_add_z2.json").read_text())["lowdata"]["latent_scale"] == 2.0
    assert (tmp_path / "eval" / "samples_real_vs_generated_z2.png").stat().st_size > 1000
    assert wide["lowdata"]["arms"]["real_only"]["runs"][0] == add["lowdata"]["arms"]["real_only"]["runs"][0]
    run = json.loads((tmp_path / "eval" / "lowdata" / "real_plus_gan_add_z2_seed0" / "metrics.json").read_text())
    assert run["config"]["gan_augment_latent_scale"] == 2.0 and run["config"]["gan_augment_mode"] == "add"
    # the generated batch normalised on its own: its own summary and GAN arm, the real-only arm shared
    with pytest.raises(SkulensError, match="need --gan-mode add"):
        dataclasses.replace(cfg, gan_bn="separate")
    sep = evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False, cas=False, gan_mode="add",
                                           gan_bn="separate", seeds=1))
    assert json.loads((tmp_path / "eval" / "gan_eval_add_sepbn.json").read_text())["lowdata"]["gan_bn"] == "separate"
    assert sep["lowdata"]["arms"]["real_only"]["runs"][0] == add["lowdata"]["arms"]["real_only"]["runs"][0]
    run = json.loads((tmp_path / "eval" / "lowdata" / "real_plus_gan_add_sepbn_seed0" / "metrics.json").read_text())
    assert run["config"]["gan_augment_bn"] == "separate"
    with pytest.raises(SkulensError, match="gan_epochs must be in"):
        dataclasses.replace(cfg, gan_mode="add", gan_epochs=2)  # more than the arm's 1 epoch
    evaluate_gan(dataclasses.replace(cfg, fid=False, latency=False, cas=False, gan_mode="add", gan_epochs=1, seeds=1))
    run = json.loads((tmp_path / "eval" / "lowdata" / "real_plus_gan_add_e1_seed0" / "metrics.json").read_text())
    assert run["config"]["gan_augment_epochs"] == 1


def test_gan_eval_counts_the_generated_images_each_mode_draws():
    from skulens.training.gan.evaluate import synthetic_per_epoch

    # 405 photos in batches of 32: mix adds a slot per photo; add draws 12 batches of 32 (the last real
    # batch is dropped), 384
    counts = [5] * 81
    assert synthetic_per_epoch("mix", counts, 1.0, 32) == 405 and synthetic_per_epoch("add", counts, 1.0, 32) == 384
    assert synthetic_per_epoch("mix", counts, 0.5, 32) == 81 * 2 and synthetic_per_epoch("add", counts, 0.5, 32) == 192
    assert synthetic_per_epoch("add", [3, 4], 2.0, 32) == 14  # fewer photos than a batch: one batch of them
