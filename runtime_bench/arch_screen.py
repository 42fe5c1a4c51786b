"""Screen model variants for INT8-vs-PyTorch speed before training them:

    python -m skulens.bench.arch_screen '{}' '{"stem_width": 24, "widths": [24, 64, 128, 160]}'

Each argument is a JSON dict of keyword arguments for ``create_model(--model, ...)``. Every
variant gets random weights (and random BatchNorm statistics), then goes through the real
export path: BatchNorm folded, uint8 input where exact, ONNX, INT8 U8S8. Its INT8 latency is
timed against PyTorch eager, batch 1, 1 thread, interleaved (median of per-round means). No
accuracy: a variant that screens well still needs training runs on several seeds.

``--layers`` times single layer types instead, to see where a model's compute is cheap in
INT8 relative to PyTorch (``{"kind": "conv3x3" | "conv1x1" | "basic", "channels": C,
"size": S}``: the marginal cost of one such layer on a [1, C, S, S] input).
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

    from skulens.export._input import onnx_input
    from skulens.export._onnx import torch_to_onnx
    from skulens.export._quantize import quantize_int8
    from skulens.training.config import TrainConfig, make_preprocess
    from skulens.training.models import count_macs, create_model, fold_batchnorm

    from ._timing import ort_runner, time_callables, torch_runner

    torch.set_num_threads(1)
    pre = make_preprocess(TrainConfig(data="-", input_size=input_size))
    images = list(np.random.default_rng(0).integers(0, 256, (32, input_size, input_size, 3), dtype=np.uint8))
    rows, fns = [], []
    with tempfile.TemporaryDirectory(prefix="skulens-screen-") as tmp:
        for i, kwargs in enumerate(variants):
            torch.manual_seed(0)
            net = create_model(model, num_classes, **kwargs).eval()
            _randomize_batchnorm(net)
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


def _randomize_batchnorm(net):
    """BatchNorm statistics as after training, not the identity (so folding changes the weights)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return net


def screen_layers(layers: list[dict], rounds: int = 15, iters: int = 40, lo: int = 1, hi: int = 4) -> list[dict]:
    """Marginal latency of one layer, INT8 U8S8 vs PyTorch eager, batch 1, 1 thread: chains of
    ``lo`` and ``hi`` copies are timed interleaved and the cost per layer is their difference
    over ``hi - lo`` (which cancels the input quantization and the per-run overhead)."""
    import numpy as np
    import torch

    from skulens.export._onnx import torch_to_onnx
    from skulens.export._quantize import quantize_int8
    from skulens.training.models import BasicBlock, ConvBNAct, fold_batchnorm

    from ._timing import ort_runner, time_callables, torch_runner

    kinds = {"conv3x3": lambda c: ConvBNAct(c, c, 3), "conv1x1": lambda c: ConvBNAct(c, c, 1),
             "basic": lambda c: BasicBlock(c, c)}
    torch.set_num_threads(1)
    fns = []
    with tempfile.TemporaryDirectory(prefix="skulens-screen-") as tmp:
        for i, spec in enumerate(layers):
            if spec.get("kind") not in kinds:
                raise ValueError(f"layer kind must be one of {sorted(kinds)}, got {spec.get('kind')!r}")
            c, s = int(spec["channels"]), int(spec["size"])
            x = np.random.default_rng(0).standard_normal((16, c, s, s)).astype(np.float32)
            for n in (lo, hi):
                torch.manual_seed(0)
                net = _randomize_batchnorm(torch.nn.Sequential(*[kinds[spec["kind"]](c) for _ in range(n)])).eval()
                fp32, int8 = Path(tmp) / f"l{i}_{n}.onnx", Path(tmp) / f"l{i}_{n}.int8.onnx"
                torch_to_onnx(fold_batchnorm(copy.deepcopy(net)), (torch.from_numpy(x[:2]),), fp32)
                quantize_int8(fp32, int8, x, activation_type="u8")
                fns += [ort_runner(int8, x[:1].copy(), 1), torch_runner(net, x[:1].copy(), 1)]
        t = time_callables(fns, rounds=rounds, iters=iters)
    rows = []
    for i, spec in enumerate(layers):
        int8_lo, torch_lo, int8_hi, torch_hi = t[4 * i:4 * i + 4]
        int8_us, torch_us = (int8_hi - int8_lo) / (hi - lo) * 1e6, (torch_hi - torch_lo) / (hi - lo) * 1e6
        rows.append({**spec, "int8_us": round(int8_us, 3), "torch_us": round(torch_us, 3),
                     "ratio": round(torch_us / int8_us, 2) if int8_us > 0 else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.arch_screen", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="JSON dicts of create_model keyword arguments ('{}': the model "
                   "as is), or with --layers, layer specs")
    p.add_argument("--layers", action="store_true", help='time layer types: {"kind": "conv3x3", "channels": 64, "size": 16}')
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
    if args.layers:
        try:
            rows = screen_layers(variants, rounds=args.rounds)
        except (KeyError, ValueError) as exc:
            p.error(f"bad layer spec: {exc}")
    else:
        rows = screen(variants, args.model, args.input_size, rounds=args.rounds)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
