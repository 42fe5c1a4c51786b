"""Snapshots and forks: a run keeps its state every N epochs (--snapshot-every), and another run
branches from one (--fork-from) with its own seed, sharing the first epochs (README: a cheaper
weight average)."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from skulens.internal import sha256_file
from skulens.training import TrainConfig, train
from skulens.training.checkpoint import load_checkpoint, save_checkpoint
from skulens.training.config import TrainConfigError

# fine-tuned from one start (tiny_run's weights), as averaged runs must be
TINY = dict(model="edge_resnet_tiny", epochs=3, input_size=32, batch_size=16, num_workers=0, lr=0.05,
            ema_decay=0.9, threads=1, seed=0, model_kwargs={"stem_stride": 2, "patch_stem": True})


@pytest.fixture(scope="module")
def run(tiny_run, grocery_subset):
    """run(out, **changes): the TINY recipe on the Grocery subset, from tiny_run's weights."""
    def _run(out, **kw) -> dict:
        threads = torch.get_num_threads()
        try:
            return train(TrainConfig(data=str(grocery_subset), out=str(out), init_from=str(tiny_run[0] / "best.pt"),
                                     **{**TINY, **kw}))
        finally:
            torch.set_num_threads(threads)  # cfg.threads is process-wide
    return _run


@pytest.fixture(scope="module")
def trunk(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("trunk")
    run(out, snapshot_every=1)
    return out


def test_snapshots_hold_the_run_as_it_was_at_each_epoch(trunk):
    snaps = sorted(p.name for p in trunk.glob("epoch*.pt"))
    assert snaps == ["epoch001.pt", "epoch002.pt", "epoch003.pt"]
    for i, name in enumerate(snaps):
        ckpt = load_checkpoint(trunk / name)
        assert ckpt["epoch"] == i and len(ckpt["history"]) == i + 1 and "optimizer" in ckpt and "rng" in ckpt
    last = load_checkpoint(trunk / "last.pt")
    assert torch.equal(load_checkpoint(trunk / "epoch003.pt")["raw_model"]["head.weight"],
                       last["raw_model"]["head.weight"])
    assert not torch.equal(load_checkpoint(trunk / "epoch001.pt")["raw_model"]["head.weight"],
                           last["raw_model"]["head.weight"])


def test_a_fork_continues_the_schedule_with_its_own_draws(trunk, run, tmp_path):
    snap = trunk / "epoch001.pt"
    metrics = {s: run(tmp_path / f"fork{s}", seed=s, fork_from=str(snap)) for s in (1, 2)}
    ref, start = load_checkpoint(trunk / "last.pt"), load_checkpoint(snap)
    forks = {s: load_checkpoint(tmp_path / f"fork{s}" / "last.pt") for s in (1, 2)}
    for s, fork in forks.items():
        assert fork["epoch"] == ref["epoch"] == 2
        assert fork["history"][0] == start["history"][0]  # the shared epoch, then its own two
        assert [h["epoch"] for h in fork["history"]] == [1, 2, 3]
        # the schedule and the EMA went on where the trunk's epoch 1 left them
        assert fork["scheduler"]["last_epoch"] == ref["scheduler"]["last_epoch"]
        assert int(fork["ema"]["n_averaged"]) == int(ref["ema"]["n_averaged"])
        assert fork["forked_from"] == {"path": str(snap.resolve()), "sha256": sha256_file(snap), "epoch": 1,
                                       "seed": 0, "train_seconds": start["train_seconds"]}
        assert metrics[s]["forked_from"]["epoch"] == 1 and fork["train_config"]["seed"] == s
    resumed = run(tmp_path / "fork1", seed=1, fork_from=str(snap), resume=True)  # nothing left: evaluates
    assert resumed["forked_from"] == forks[1]["forked_from"]  # a fork resumed stays a fork
    heads = [ref["raw_model"]["head.weight"], *(f["raw_model"]["head.weight"] for f in forks.values())]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])  # own draws each


def test_forks_average_into_one_model(trunk, run, tmp_path):
    from skulens.training.config import AverageConfig
    from skulens.training.soup import average

    run(tmp_path / "fork", seed=5, fork_from=str(trunk / "epoch002.pt"))
    out = average(AverageConfig(checkpoints=[str(trunk / "best.pt"), str(tmp_path / "fork" / "best.pt")],
                                out=str(tmp_path / "soup.pt")))
    soup = load_checkpoint(out)
    a, b = load_checkpoint(trunk / "best.pt")["model"], load_checkpoint(tmp_path / "fork" / "best.pt")["model"]
    torch.testing.assert_close(soup["model"]["head.weight"], (a["head.weight"] + b["head.weight"]) / 2)


def test_a_fork_of_another_recipe_or_of_the_last_epoch_is_refused(trunk, run, tmp_path, caplog):
    with pytest.raises(TrainConfigError, match=r"differs in lr\b"):
        run(tmp_path / "a", seed=1, lr=0.01, fork_from=str(trunk / "epoch001.pt"))
    with pytest.raises(TrainConfigError, match="differs in epochs"):
        run(tmp_path / "b", seed=1, epochs=4, fork_from=str(trunk / "epoch001.pt"))
    with pytest.raises(TrainConfigError, match="holds epoch 3 of 3, so no epoch is left"):
        run(tmp_path / "c", seed=1, fork_from=str(trunk / "epoch003.pt"))
    ckpt = load_checkpoint(trunk / "best.pt")
    save_checkpoint(tmp_path / "weights.pt", {k: v for k, v in ckpt.items() if k != "optimizer"})
    with pytest.raises(TrainConfigError, match="not a training run's snapshot"):
        run(tmp_path / "d", seed=1, fork_from=str(tmp_path / "weights.pt"))
    with caplog.at_level(logging.WARNING):  # allowed, but not what a fork is for
        run(tmp_path / "e", fork_from=str(trunk / "epoch002.pt"))
    assert any("pass another --seed" in r.getMessage() for r in caplog.records)


def test_soup_trains_forked_members_averages_them_and_continues_when_run_again(tiny_run, grocery_subset, tmp_path,
                                                                               caplog):
    from skulens.training import SoupConfig, TrainConfig, train_soup

    cfg = TrainConfig(data=str(grocery_subset), out=str(tmp_path / "soup"), init_from=str(tiny_run[0] / "best.pt"),
                      **{**TINY, "seed": 4})
    summary = train_soup(cfg, SoupConfig(members=3, fork_at=2))
    runs = [tmp_path / "soup" / f"seed{s}" for s in (4, 5, 6)]
    assert [m["run"] for m in summary["members"]] == [str(r) for r in runs]
    assert [m["forked_at"] for m in summary["members"]] == [None, 2, 2]
    assert summary["runs_of_training"] == pytest.approx(1 + 2 * (1 / 3))
    bests = [load_checkpoint(r / "best.pt") for r in runs]
    assert [b["forked_from"] and b["forked_from"]["epoch"] for b in bests] == [None, 2, 2]
    assert [b["train_config"]["seed"] for b in bests] == [4, 5, 6]
    soup = load_checkpoint(tmp_path / "soup" / "soup.pt")
    want = torch.stack([b["model"]["head.weight"].double() for b in bests]).mean(0).float()
    torch.testing.assert_close(soup["model"]["head.weight"], want)
    assert [a["seed"] for a in soup["averaged_from"]] == [4, 5, 6]
    assert [a["forked_at"] for a in soup["averaged_from"]] == [None, 2, 2]
    # the shared epochs count once: the first run's seconds, then each fork's own
    own = [b["train_seconds"] - (b["forked_from"] or {}).get("train_seconds", 0.0) for b in bests]
    assert own[1] < bests[1]["train_seconds"] and soup["train_seconds"] == pytest.approx(sum(own))
    # run again: nothing is retrained (the members' files stay as they were)
    mtimes = [(r / "best.pt").stat().st_mtime_ns for r in runs]
    with caplog.at_level(logging.INFO):
        again = train_soup(cfg, SoupConfig(members=3, fork_at=2))
    assert [(r / "best.pt").stat().st_mtime_ns for r in runs] == mtimes
    assert sum("trained already, kept" in r.getMessage() for r in caplog.records) == 3
    assert again["members"] == summary["members"]
    with pytest.raises(TrainConfigError, match="fork_at=3 leaves none of the 3 epochs"):
        train_soup(cfg, SoupConfig(members=2, fork_at=3))
    with pytest.raises(TrainConfigError, match="from scratch: runs from different random starts"):
        train_soup(dataclasses.replace(cfg, init_from=None, out=str(tmp_path / "scratch")), SoupConfig(members=2))
    assert not (tmp_path / "scratch").exists()  # refused before any training
    with pytest.raises(TrainConfigError, match="members >= 2"):
        SoupConfig(members=1)


def test_skulens_soup_on_the_command_line(tiny_run, grocery_subset, tmp_path, capsys):
    from skulens.cli import main

    argv = ["soup", "--data", str(grocery_subset), "--out", str(tmp_path / "s"), "--init-from",
            str(tiny_run[0] / "best.pt"), "--members", "2",
            "--fork-at", "1", "--epochs", "2"]
    for k in ("model", "input_size", "batch_size", "num_workers", "lr", "ema_decay", "threads"):
        argv += ["--" + k.replace("_", "-"), str(TINY[k])]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"skulens export {tmp_path / 's' / 'soup.pt'}" in out
    assert load_checkpoint(tmp_path / "s" / "seed1" / "best.pt")["forked_from"]["epoch"] == 1
    assert main([*argv, "--resume"]) != 0
    assert "sets --fork-from and --resume for its runs itself" in capsys.readouterr().err
