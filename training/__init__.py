"""skulens training: build and train product classifiers in PyTorch (needs ``skulens[train]``).

Names are imported lazily so that ``training.config`` stays importable without torch; a
missing dependency raises MissingExtraError naming the extra to install.
"""
import importlib

from sdk._errors import MissingExtraError

__all__ = ["TrainConfig", "train", "AugmentConfig", "create_model", "list_models", "make_demo_catalogue"]
_WHERE = {"TrainConfig": "config", "AugmentConfig": "augment", "train": "trainer",
          "create_model": "models", "list_models": "models", "make_demo_catalogue": "demo_data"}
EXTRA_MODULES = ("torch", "tqdm", "matplotlib")


def import_or_extra(module: str, extra: str, deps=EXTRA_MODULES):
    """Import ``module``; if one of ``deps`` is missing, raise MissingExtraError naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in deps:
            raise MissingExtraError(f"'{exc.name}' is not installed; it is needed for this feature: "
                                    f"pip install 'skulens[{extra}]'") from exc
        raise


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(import_or_extra(f"training.{_WHERE[name]}", "train"), name)
