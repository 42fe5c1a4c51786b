"""`skulens gan eval`: FID/KID, CAS (per class and per coarse group), the low-data arms, reuse of finished runs."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from skulens import SkulensError


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
