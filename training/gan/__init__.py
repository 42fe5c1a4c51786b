"""Class-conditional GAN for product images (needs ``skulens[train]``).

    from training.gan import GanConfig, train_gan
    train_gan(GanConfig(data="path/to/dataset", image_size=64, epochs=100))

Names are imported lazily so ``training.gan.config`` stays importable without torch.
"""
from .. import import_or_extra

__all__ = ["GanConfig", "train_gan", "evaluate_gan"]
_WHERE = {"GanConfig": "config", "train_gan": "trainer", "evaluate_gan": "evaluate"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'training.gan' has no attribute {name!r}")
    return getattr(import_or_extra(f"training.gan.{_WHERE[name]}", "train"), name)
