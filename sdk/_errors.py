"""Exception types raised by skulens. Every user-facing failure is one of these."""


class SkulensError(Exception):
    """Base class of every error skulens raises on purpose."""


class ImageError(SkulensError, ValueError):
    """An input image cannot be used: missing, unreadable, corrupt, truncated, unsupported or too large."""


class ImageTooLargeError(ImageError):
    """An input image is over a size limit (pixels or aspect ratio), refused before decoding."""


class ModelError(SkulensError, ValueError):
    """A model file cannot be used: not ONNX, truncated, no skulens metadata, inconsistent metadata."""


class DatasetError(SkulensError, ValueError):
    """A dataset folder or split list cannot be read or is inconsistent."""


class MissingExtraError(SkulensError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require_extra(module: str, extra: str, deps: tuple[str, ...] | None = None):
    """Import ``module``; if it, or one of the top-level packages ``deps`` it needs, is missing,
    raise MissingExtraError naming ``pip install 'skulens[extra]'``. An import error of anything
    else (a bug in our own code) propagates unchanged."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in (deps if deps is not None else (module.split(".")[0],)):
            raise MissingExtraError(f"'{exc.name}' is not installed; it is needed for this feature: "
                                    f"pip install 'skulens[{extra}]'") from exc
        raise


def lazy_exports(package: str, where: dict[str, str], extra: str, deps: tuple[str, ...]):
    """A module ``__getattr__`` for a package whose public names live in submodules that need an
    extra: ``where`` maps each name to its submodule; nothing heavy is imported until a name is
    used, and a missing dependency raises MissingExtraError naming ``extra``."""
    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(require_extra(f"{package}.{where[name]}", extra, deps), name)

    return __getattr__


class GalleryError(SkulensError, ValueError):
    """A product gallery cannot be used: unreadable or tampered file, another model's embeddings, a bad request."""
