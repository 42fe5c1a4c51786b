"""``skulens serve MODEL``: registered with the CLI; the web stack is imported only when it runs."""
from __future__ import annotations

from skulens.internal import add_dataclass_flags, dataclass_from_args
from skulens.serve.config import ServeConfig


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service with dynamic micro-batching (needs skulens[serve])",
                       description="POST /v1/classify, GET /v1/model, /healthz, /readyz; API docs at /docs "
                       "(served offline) and /openapi.json. "
                       "Authentication: with --token or the SKULENS_API_TOKEN environment variable "
                       "(preferred: keeps it out of the process list) set, /v1/* requires "
                       "'Authorization: Bearer TOKEN'; with neither, no authentication. An empty or "
                       "whitespace token from either source is refused at start-up.")
    add_dataclass_flags(p, ServeConfig, positional=("model",))
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from skulens import SkulensError
    from skulens.serve import serve  # MissingExtraError naming skulens[serve] when the web stack is absent

    from ._main import require_model

    try:
        config = dataclass_from_args(ServeConfig, args)
        config.api_token()  # an unusable SKULENS_API_TOKEN is refused before anything loads
    except ValueError as exc:
        raise SkulensError(str(exc)) from None
    require_model(config.model)
    serve(config)
    return 0
