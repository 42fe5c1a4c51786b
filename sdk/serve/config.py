"""Service options (free of the web stack, so the CLI builds its flags without importing it)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .._config import option
from .._errors import SkulensError
from .._image import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS

TOKEN_ENV = "SKULENS_API_TOKEN"


class ServeError(SkulensError, ValueError):
    """The service cannot start as configured (an unusable token, too few file descriptors)."""


@dataclass(frozen=True)
class ServeConfig:
    """How ``skulens serve`` runs; each field is a ``skulens serve`` flag with the help text below.

    Dynamic micro-batching: a batch goes to the model when it holds ``max_batch`` images or
    ``max_delay_ms`` after its first image arrived (``max_batch`` 1 = off).

    Authentication: ``token``, else the ``SKULENS_API_TOKEN`` environment variable, else none.
    A token that is set but empty, padded with or containing whitespace, or not printable ASCII
    is refused at start-up (it never silently turns authentication off).

    Hostile clients: a connection must deliver a complete request head within
    ``header_timeout_s`` and the body within ``body_timeout_s``, idles at most ``keep_alive_s``
    between requests, and at most ``max_connections`` are open at once (at the limit a new one
    takes the place of one idle or slow for 0.5 s or more, else gets 503 at once).
    Images are decoded by ``decode_workers`` worker processes, each allowed ``decode_memory_mb``:
    a decode past the request's deadline is stopped (the worker is replaced) and one that needs
    more memory gets 413 ``image_too_large``.
    """

    model: str = option(help="the exported classifier .onnx to serve (fp32 or INT8)")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port to listen on")
    max_batch: int = option(32, "micro-batching: the most images sent to the model at once (1 = no batching)")
    max_delay_ms: float = option(2.0, "micro-batching: the longest a batch waits for more images after its "
                                 "first one arrived")
    max_queue: int = option(256, "images waiting for the model (and, apart, for a decode worker); beyond it "
                            "requests get 503 'overloaded'")
    num_threads: int = option(0, "onnxruntime intra-op threads (0 = all cores)")
    top_k: int = option(5, "categories per answer unless the request's ?top_k= asks otherwise")
    max_body_bytes: int = option(10 * 1024 * 1024, "larger uploads get 413 'payload_too_large'")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "larger images (width x height) get 413 'image_too_large', "
                             "checked before decoding")
    max_aspect_ratio: float = option(DEFAULT_MAX_ASPECT_RATIO, "more elongated images (longer side / shorter "
                                     "side) get 413 'image_too_large', checked before decoding")
    request_timeout_s: float = option(10.0, "a request not answered within this many seconds gets 504 "
                                      "'timeout' (a decode still running then is stopped)")
    token: str | None = option(None, "require 'Authorization: Bearer TOKEN' on /v1/*; unset: the "
                               "SKULENS_API_TOKEN environment variable, else no authentication (prefer the "
                               "variable: flags show in the process list). An empty or whitespace token "
                               "from either is refused")
    graceful_timeout_s: float = option(10.0, "on SIGTERM/SIGINT, in-flight requests get this many seconds "
                                       "to finish")
    access_log: bool = option(False, "log every request (uvicorn's access log)")
    gallery: str | None = option(None, "a product gallery file: classify by retrieval among its products; "
                                 "/v1/gallery lists them and, with a token, enrols (POST) and delists "
                                 "(DELETE) products, saving the file atomically")
    max_connections: int = option(256, "open client connections at most (bounds file descriptors): "
                                  "at the limit a new one takes the place of one idle or slow for 0.5 s+, "
                                  "else gets 503 'too_many_connections'")
    header_timeout_s: float = option(10.0, "a connection must send a complete request head (request line "
                                     "and headers) within this many seconds of opening or of its previous "
                                     "answer, else it gets 408 'timeout' and is closed (slow-header attacks)")
    body_timeout_s: float = option(30.0, "a request body must arrive in full within this many seconds of "
                                   "its head, else the connection is closed (slow-body attacks)")
    keep_alive_s: float = option(5.0, "an idle keep-alive connection is closed after this many seconds")
    max_header_bytes: int = option(16 * 1024, "the most bytes of an unfinished request head kept per "
                                   "connection; beyond it 431 'headers_too_large'")
    decode_workers: int = option(0, "worker processes decoding images (0 = min(4, CPU cores)); a decode "
                                 "past its request's deadline is stopped by replacing the worker")
    decode_memory_mb: int = option(1024, "memory one image decode may use (MiB, per worker); an image "
                                   "that needs more gets 413 'image_too_large' (0 = no limit)")

    def __post_init__(self):
        problems = []
        for name in ("max_batch", "max_queue", "top_k", "max_body_bytes", "max_pixels", "max_connections",
                     "max_header_bytes", "max_aspect_ratio"):
            if not getattr(self, name) >= 1:
                problems.append(f"{name} must be >= 1")
        for name in ("max_delay_ms", "num_threads", "decode_workers", "decode_memory_mb"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("request_timeout_s", "graceful_timeout_s", "header_timeout_s", "body_timeout_s",
                     "keep_alive_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.token is not None:
            problem = token_problem(self.token)
            if problem:
                problems.append(f"token {problem}")
        if problems:
            raise ValueError("invalid ServeConfig: " + "; ".join(problems))

    def api_token(self, environ=None) -> str | None:
        """The bearer token the service requires: ``token``, else ``$SKULENS_API_TOKEN``, else None
        (no authentication). ValueError when the variable is set but unusable (empty, whitespace...)."""
        if self.token is not None:
            return self.token
        value = (os.environ if environ is None else environ).get(TOKEN_ENV)
        if value is None:
            return None
        problem = token_problem(value)
        if problem:
            raise ValueError(f"{TOKEN_ENV} is set but {problem}; unset it to serve without "
                             "authentication")
        return value


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token (None: it can)."""
    if not token.strip():
        return "is empty or only whitespace (that would not protect anything)"
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        return "must be printable ASCII without spaces (it is sent as 'Authorization: Bearer TOKEN')"
    return None
