"""Faithful resume (issue #12): a training run SIGKILLed mid-run and continued with --resume ends
with the very weights of the uninterrupted run, bit for bit."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from skulens.training import TrainConfig, train
from skulens.training.checkpoint import load_checkpoint, save_checkpoint

# dropout, CutMix/MixUp, augmentation, shuffling and an EMA: every random draw of a training step
TINY = dict(model="edge_resnet_tiny", epochs=3, input_size=32, batch_size=16, num_workers=0, lr=0.05,
            ema_decay=0.9, mix_prob=0.5, threads=1, seed=3, model_kwargs={"dropout": 0.5})
TENSOR_KEYS = ("model", "raw_model", "ema")


def _cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **kw})


def _train(cfg: TrainConfig) -> dict:
    threads = torch.get_num_threads()
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)  # cfg.threads is process-wide


def _argv(data, out, **kw) -> list[str]:
    argv = [sys.executable, "-m", "skulens.training", "--data", str(data), "--out", str(out)]
    for k, v in {**TINY, **kw}.items():
        flag = "--" + k.replace("_", "-")
        if k == "model_kwargs":
            argv += [flag, json.dumps(v)]
        elif v is True:
            argv.append(flag)
        else:
            argv += [flag, str(v)]
    return argv


def _flat(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor that training produced: weights, EMA, optimizer state."""
    out = {f"{k}.{n}": t for k in TENSOR_KEYS for n, t in (ckpt[k] or {}).items()}
    for pid, s in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{pid}.{n}": t for n, t in s.items() if isinstance(t, torch.Tensor)})
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    differ = [k for k in fa if not torch.equal(fa[k], fb[k])]
    assert not differ, f"{len(differ)} of {len(fa)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(grocery_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _train(_cfg(grocery_subset, out))
    return out


def test_a_sigkilled_run_resumes_to_bit_identical_weights(grocery_subset, reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_argv(grocery_subset, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # a real kill, somewhere in epoch 2
    finally:
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = load_checkpoint(out / "last.pt")["epoch"]
    assert killed_at < TINY["epochs"] - 1, "the run finished its epochs before the kill"
    done = subprocess.run(_argv(grocery_subset, out, resume=True), capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"resumed from" in done.stderr and b"not exact" not in done.stderr
    for name in ("last.pt", "best.pt"):
        ref, got = load_checkpoint(reference / name), load_checkpoint(out / name)
        assert got["epoch"] == ref["epoch"] == TINY["epochs"] - 1
        assert_same_weights(ref, got)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_a_checkpoint_without_rng_states_resumes_with_a_warning(grocery_subset, reference, tmp_path, caplog):
    out = tmp_path / "old"
    _train(_cfg(grocery_subset, out, epochs=1))
    ckpt = load_checkpoint(out / "last.pt")
    ckpt = {k: v for k, v in ckpt.items() if k not in ("rng", "format")}  # as written before the fix
    save_checkpoint(out / "last.pt", ckpt)
    with caplog.at_level(logging.WARNING):
        _train(_cfg(grocery_subset, out, resume=True))
    assert any("not exact" in r.getMessage() for r in caplog.records)
    assert load_checkpoint(out / "last.pt")["epoch"] == TINY["epochs"] - 1
    assert "rng" in load_checkpoint(out / "last.pt")  # from then on the states are saved


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from skulens.training.checkpoint import restore_rng_states, rng_states

    mix = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_states(torch.device("cpu"), mix=mix)})
    want = (torch.rand(3), torch.rand(3, generator=mix), np.random.rand(3), random.random())
    torch.manual_seed(99), mix.manual_seed(99), np.random.seed(99), random.seed(99)
    assert restore_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"], torch.device("cpu"), mix=mix)
    got = (torch.rand(3), torch.rand(3, generator=mix), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert np.array_equal(got[2], want[2]) and got[3] == want[3]
    assert not restore_rng_states(None, torch.device("cpu"), mix=mix)  # an old checkpoint: not exact


def test_a_killed_writes_temp_files_are_removed_by_the_next_run(tmp_path):
    from skulens.training.checkpoint import remove_partial_writes

    for name in (".last.pt.ab12cd.tmp", ".results.csv.x_y.tmp", ".notes.txt.ab12cd.tmp", "last.pt"):
        (tmp_path / name).write_bytes(b"partial")
    assert [p.name for p in remove_partial_writes(tmp_path)] == [".last.pt.ab12cd.tmp", ".results.csv.x_y.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.ab12cd.tmp", "last.pt"]  # not ours: kept
