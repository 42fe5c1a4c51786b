"""``skulens classify-batch MODEL --input SRC --output OUT``: registered with the CLI; pyarrow
and Ray are imported only when it runs."""
from __future__ import annotations

import contextlib
import json
import sys

from skulens.batch import BatchConfig
from skulens.internal import add_dataclass_flags, dataclass_from_args


def register(sub) -> None:
    p = sub.add_parser("classify-batch", help="classify a whole catalogue into Parquet, in-process or on Ray "
                       "(needs skulens[batch], skulens[ray] for --ray)",
                       description="Classify every image of a folder tree, a manifest (text or CSV) or a "
                       "Parquet file of paths or image bytes into a Parquet dataset: per image its path, top-k "
                       "labels and scores, the unknown flag, optionally the embedding, or the error that made "
                       "it unreadable (bad images never fail the job). The input is cut into shards, each "
                       "written atomically as one part; re-running with the same --output resumes exactly "
                       "where a crashed or killed run stopped. --ray runs it on Ray Data with a pool of "
                       "actors that each open the model once (workers x threads = the cluster's CPUs).")
    add_dataclass_flags(p, BatchConfig, positional=("model",))
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    p.set_defaults(func=_classify_batch)


def _classify_batch(args) -> int:
    from skulens import SkulensError
    from skulens.batch import run_batch  # MissingExtraError naming skulens[batch] without pyarrow

    from ._main import require_model

    try:
        config = dataclass_from_args(BatchConfig, args)
    except ValueError as exc:
        raise SkulensError(str(exc)) from None
    require_model(config.model)
    # stdout carries the summary only: what libraries print meanwhile (Ray's driver prints its
    # cluster's error notices, a restarted worker's, to sys.stdout) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_batch(config)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.text())
    return 0
