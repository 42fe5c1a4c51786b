"""Exception types raised by skulens. Every user-facing failure is one of these."""


class SkulensError(Exception):
    """Base class of every error skulens raises on purpose."""


class ImageError(SkulensError, ValueError):
    """An input image cannot be used: missing, unreadable, corrupt, truncated, unsupported or too large."""


class ModelError(SkulensError, ValueError):
    """A model file cannot be used: not ONNX, truncated, no skulens metadata, inconsistent metadata."""


class DatasetError(SkulensError, ValueError):
    """A dataset folder or split list cannot be read or is inconsistent."""


class MissingExtraError(SkulensError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require_extra(module: str, extra: str):
    """Import ``module`` or raise MissingExtraError naming ``pip install 'skulens[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised via monkeypatched import in tests
        raise MissingExtraError(
            f"'{module}' is required for this feature but is not installed: "
            f"pip install 'skulens[{extra}]'"
        ) from exc


class GalleryError(SkulensError, ValueError):
    """A product gallery cannot be used: unreadable or tampered file, another model's embeddings, a bad request."""
