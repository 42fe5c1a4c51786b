"""skulens training: build and train product classifiers in PyTorch (needs ``skulens[train]``)."""
from sdk._errors import require_extra

require_extra("torch", "train")
require_extra("tqdm", "train")

from .augment import AugmentConfig  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .trainer import TrainConfig, train  # noqa: E402

__all__ = ["TrainConfig", "train", "AugmentConfig", "create_model", "list_models"]
