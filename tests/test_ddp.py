"""torchrun -m training: 2 processes (gloo on CPU) follow the 1-process run for the same seed and
global batch size, and only rank 0 logs and writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, data, out) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "skulens.training", "--data", str(data), "--out", str(out), "--model", "edge_resnet_tiny",
           "--epochs", "2", "--input-size", "32", "--batch-size", "16", "--num-workers", "0", "--lr", "0.05", "--ema-decay", "0",
           "--threads", "1", "--seed", "3", "--model-kwargs", '{"dropout": 0}']  # dropout masks are per process
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_processes_match_one_process(grocery_subset, tmp_path):
    log1 = torchrun(1, grocery_subset, tmp_path / "one")
    log2 = torchrun(2, grocery_subset, tmp_path / "two")
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert one["model"].keys() == two["model"].keys()
    assert not any(k.startswith("module.") for k in two["model"]), "the checkpoint holds the bare model"
    worst = max((one["model"][k].double() - two["model"][k].double()).abs().max().item() for k in one["model"])
    assert worst < 1e-4, f"weights differ by {worst}"
    means = [k for k in two["model"] if k.endswith("running_mean")]
    assert means and all(two["model"][k].abs().max() > 0 for k in means), "BatchNorm statistics were synced and kept"
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], abs=1e-4)
        assert h1["train_top1"] == h2["train_top1"] and h1["val_top1"] == h2["val_top1"]
    # Only rank 0 logs and writes: one line per epoch, the usual files, nothing else.
    assert log2.count("epoch 1/2") == 1 and "[rank 0/2]" in log2 and "[rank 1/2]" not in log2
    assert '"world_size": 2' in log2 and '"world_size": 1' in log1
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert {"best.pt", "last.pt", "metrics.json"} <= set(names)
