"""``skulens serve MODEL``: registered with the CLI; the web stack is imported only when it runs."""
from __future__ import annotations

from skulens.internal import add_dataclass_flags, dataclass_from_args
from skulens.serve.config import ServeConfig


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service with dynamic micro-batching (needs skulens[serve])",
                       description="POST /v1/classify, GET /v1/model, /healthz, /readyz, /docs. "
                       "The bearer token may also come from the SKULENS_API_TOKEN environment "
                       "variable (keeps it out of the process list).")
    add_dataclass_flags(p, ServeConfig, positional=("model",))
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from skulens.serve import serve  # MissingExtraError naming skulens[serve] when the web stack is absent

    try:
        config = dataclass_from_args(ServeConfig, args)
    except ValueError as exc:
        raise SystemExit(f"skulens serve: error: {exc}") from None
    serve(config)
    return 0
