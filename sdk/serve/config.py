"""Service options (free of the web stack, so the CLI builds its flags without importing it)."""
from __future__ import annotations

from dataclasses import dataclass

from .._image import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServeConfig:
    """How ``skulens serve`` runs.

    max_batch / max_delay_ms: dynamic micro-batching: a batch is sent to the model when it holds
        ``max_batch`` images or ``max_delay_ms`` after its first image arrived (max_batch 1 = off).
    max_queue: images waiting for the model; beyond it requests get 503 ``overloaded``.
    max_body_bytes / max_pixels: larger uploads get 413 (``payload_too_large`` / ``image_too_large``).
    request_timeout_s: a request not answered within this gets 504 ``timeout``.
    token: require ``Authorization: Bearer <token>`` on /v1/* (default: the SKULENS_API_TOKEN
        environment variable, else no authentication).
    graceful_timeout_s: on SIGTERM/SIGINT, in-flight requests get this long to finish.
    gallery: classify by retrieval among this product gallery's products; ``/v1/gallery``
        lists them and, with a token set, enrols (POST) and delists (DELETE) products, saving
        the file atomically after each change.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    num_threads: int = 0
    top_k: int = 5
    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 10.0
    token: str | None = None
    graceful_timeout_s: float = 10.0
    access_log: bool = False
    gallery: str | None = None

    def __post_init__(self):
        problems = []
        for name in ("max_batch", "max_queue", "top_k", "max_body_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("max_delay_ms", "num_threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("request_timeout_s", "graceful_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.token is not None and (not self.token or not self.token.isascii()):
            problems.append("token must be a non-empty ASCII string")
        if problems:
            raise ValueError("invalid ServeConfig: " + "; ".join(problems))
