"""Train from the command line, on one process or data-parallel on several:

    python -m skulens.training --data PATH --out runs/x --epochs 40            # like `skulens train`
    torchrun --nproc-per-node 4 -m training --data PATH --out runs/x   # DDP (gloo on CPU)

Flags are the fields of ``skulens.training.TrainConfig``; ``--batch-size`` is the global batch, split
evenly over the processes. Only rank 0 logs and writes checkpoints, metrics and plots.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from skulens.internal import add_dataclass_flags, dataclass_from_args
from skulens import SkulensError

from .config import TrainConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skulens.training", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, TrainConfig)
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help='JSON keyword arguments of the model, e.g. \'{"dropout": 0}\'')
    parser.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun (default: gloo)")
    args = parser.parse_args(argv)

    from . import _distributed
    from .trainer import train

    d = _distributed.init_from_env(args.backend)
    logging.basicConfig(level=logging.INFO if d.is_main else logging.WARNING,
                        format=f"%(levelname)s [rank {d.rank}/{d.world_size}] %(name)s: %(message)s"
                        if d.enabled else "%(levelname)s %(name)s: %(message)s")
    try:
        metrics = train(dataclass_from_args(TrainConfig, args))
        if d.is_main:
            print(json.dumps({k: v for k, v in metrics.items() if k != "eval"} | {"world_size": d.world_size},
                             indent=2))
        return 0
    except SkulensError as exc:
        print(f"python -m skulens.training: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
