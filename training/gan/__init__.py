"""Class-conditional GAN for product images (needs ``skulens[train]``).

    from skulens.training.gan import GanConfig, train_gan
    train_gan(GanConfig(data="path/to/dataset", image_size=64, epochs=100))

Names are imported lazily so ``skulens.training.gan.config`` stays importable without torch.
"""
from skulens.internal import lazy_exports

__all__ = ["GanConfig", "train_gan", "evaluate_gan"]
__getattr__ = lazy_exports(__name__, {"GanConfig": "config", "train_gan": "trainer", "evaluate_gan": "evaluate"},
                           extra="train", deps=("torch", "tqdm", "matplotlib"))
