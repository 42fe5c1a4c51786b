"""skulens training: build and train product classifiers in PyTorch (needs ``skulens[train]``).

    from skulens.training import TrainConfig, train
    train(TrainConfig(data="path/to/dataset", out="runs/mine"))

Names are imported lazily so that ``skulens.training.config`` stays importable without torch; a
missing dependency raises MissingExtraError naming the extra to install.
"""
from skulens.internal import lazy_exports

__all__ = ["TrainConfig", "train", "AugmentConfig", "create_model", "list_models", "make_demo_catalogue",
           "AverageConfig", "average", "SoupConfig", "train_soup"]
__getattr__ = lazy_exports(__name__, {"TrainConfig": "config", "AugmentConfig": "augment", "train": "trainer",
                                      "create_model": "models", "list_models": "models",
                                      "make_demo_catalogue": "demo_data",
                                      "AverageConfig": "config", "average": "soup",
                                      "SoupConfig": "config", "train_soup": "soup"},
                           extra="train", deps=("torch", "tqdm", "matplotlib"))
