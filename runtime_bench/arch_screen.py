"""Screen model variants for INT8-vs-PyTorch speed before training them:

    python -m runtime_bench.arch_screen '{}' '{"stem_width": 24, "widths": [24, 64, 128, 160]}'

Each argument is a JSON dict of keyword arguments for ``create_model(--model, ...)``. Every
variant gets random weights (and random BatchNorm statistics), then goes through the real
export path: BatchNorm folded, uint8 input where exact, ONNX, INT8 U8S8. Its INT8 latency is
timed against PyTorch eager, batch 1, 1 thread, interleaved (median of per-round means). No
accuracy: a variant that screens well still needs training runs on several seeds.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path


def screen(variants: list[dict], model: str = "edge_resnet_patch", input_size: int = 128,
           num_classes: int = 81, rounds: int = 15, iters: int = 40) -> list[dict]:
    import numpy as np
    import torch

    from export._input import onnx_input
    from export._onnx import torch_to_onnx
    from export._quantize import quantize_int8
    from training.config import TrainConfig, make_preprocess
    from training.models import count_macs, create_model, fold_batchnorm

    from ._timing import ort_runner, time_callables, torch_runner

    torch.set_num_threads(1)
    pre = make_preprocess(TrainConfig(data="-", input_size=input_size))
    images = list(np.random.default_rng(0).integers(0, 256, (32, input_size, input_size, 3), dtype=np.uint8))
    rows, fns = [], []
    with tempfile.TemporaryDirectory(prefix="skulens-screen-") as tmp:
        for i, kwargs in enumerate(variants):
            torch.manual_seed(0)
            net = create_model(model, num_classes, **kwargs).eval()
            for m in net.modules():  # BatchNorm statistics as after training, not the identity
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.1, 0.1)
            onnx_model, onnx_pre = onnx_input(fold_batchnorm(copy.deepcopy(net)), pre)
            x = onnx_pre.apply_batch(images)
            fp32, int8 = Path(tmp) / f"v{i}.onnx", Path(tmp) / f"v{i}.int8.onnx"
            torch_to_onnx(onnx_model, (torch.from_numpy(x[:2]),), fp32)
            quantize_int8(fp32, int8, x, activation_type="u8")
            fns += [ort_runner(int8, x[:1].copy(), 1), torch_runner(net, pre.apply_batch(images[:1]), 1)]
            rows.append({"kwargs": kwargs, "input": onnx_pre.dtype, "mmac": round(count_macs(net, pre.tensor_shape) / 1e6, 1),
                         "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3)})
        times = time_callables(fns, rounds=rounds, iters=iters)
    for k, row in enumerate(rows):
        int8_s, torch_s = times[2 * k], times[2 * k + 1]
        row.update(int8_ms=round(int8_s * 1e3, 3), torch_ms=round(torch_s * 1e3, 3), ratio=round(torch_s / int8_s, 2))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime_bench.arch_screen", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="JSON dicts of create_model keyword arguments ('{}': the model as is)")
    p.add_argument("--model", default="edge_resnet_patch")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    try:
        variants = [json.loads(v) for v in args.variants]
    except json.JSONDecodeError as exc:
        p.error(f"each variant must be a JSON dict: {exc}")
    if not all(isinstance(v, dict) for v in variants):
        p.error("each variant must be a JSON dict of keyword arguments")
    for row in screen(variants, args.model, args.input_size, rounds=args.rounds):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
