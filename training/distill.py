"""Knowledge distillation: a small student learns from a trained teacher's soft targets.

The teacher (e.g. the fine-tuned EfficientNet-Lite0) is run once, before training, on a fixed
set of ``views`` augmented copies of every training image at its own input size; the student
then cycles through exactly those views (epoch e uses view e % views), each resized to the
student's contract, and is trained on

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels)

Caching the teacher's logits per view (as in "A Fast Knowledge Distillation Framework", Shen &
Xing 2021) costs views x N teacher forward passes once, instead of one per student step: on 2
CPU cores the teacher's forward pass costs several times the student's training step.
"""
from __future__ import annotations

import logging

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from skulens import ModelError

from .checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from .data import TrainSet

log = logging.getLogger(__name__)


def distill_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float, criterion):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * criterion(student, labels)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * criterion(student_logits, labels)


class DistillSet(Dataset):
    """(student input, label, teacher logits) of the current epoch's view."""

    def __init__(self, base: TrainSet, logits: torch.Tensor):  # logits [views, N, K]
        self.base, self.logits = base, logits

    @property
    def epoch(self):
        return self.base.epoch

    @epoch.setter
    def epoch(self, value):
        self.base.epoch = value

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x, y, self.logits[self.base.view(), i]


class Teacher:
    def __init__(self, model, pre, info: dict, views: int = 8):
        self.model, self.pre, self.info, self.views = model, pre, info, views

    @classmethod
    def from_checkpoint(cls, path, labels, views: int = 8) -> "Teacher":
        ckpt = load_checkpoint(path)
        if list(ckpt["labels"]) != list(labels):
            raise ModelError(f"teacher {path} was trained on other classes ({len(ckpt['labels'])} labels) "
                             f"than this dataset ({len(labels)})")
        ev = (ckpt.get("metrics") or {}).get("eval", {})
        info = {"checkpoint": str(path), "model": ckpt["model_name"], "views": views,
                "eval_top1": ev.get("top1"), "eval_split": ev.get("split")}
        return cls(model_from_checkpoint(ckpt), preprocess_of(ckpt), info, views)

    @property
    def input_size(self) -> int:
        return max(self.pre.input_size)

    @torch.no_grad()
    def prepare(self, student: TrainSet, num_workers: int = 1, bf16: bool = False, progress=None) -> DistillSet:
        """Run the teacher (autocast to bfloat16 with ``bf16``) on ``views`` augmented views of
        every image; returns the student's dataset over the same views (augmented at the
        teacher's size, then the student's contract)."""
        if student.extra is not None:
            raise ValueError("distillation does not combine with GAN augmentation")
        size = self.input_size
        common = dict(seed=student.seed, aug_size=size, views=self.views)
        views = TrainSet(student.images, student.labels, self.pre, student.augment_cfg, **common)
        self.model.eval().to(memory_format=torch.channels_last)
        out = torch.empty(self.views, len(views), len(self.model.head.weight))
        bar = progress(total=self.views * len(views), desc="teacher", unit="img", leave=False) if progress else None
        for v in range(self.views):
            views.epoch, k = v, 0
            for x, _ in DataLoader(views, batch_size=64, shuffle=False, num_workers=num_workers):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = self.model(x.contiguous(memory_format=torch.channels_last))
                out[v, k:k + len(x)] = logits.float()
                k += len(x)
                if bar:
                    bar.update(len(x))
        if bar:
            bar.close()
        agree = (out.argmax(2) == torch.tensor(student.labels)).float().mean().item()
        self.info["views_top1"] = round(agree, 4)
        log.info("teacher %s: %d views x %d images, top-1 on its augmented views %.3f",
                 self.info["model"], self.views, len(views), agree)
        return DistillSet(TrainSet(student.images, student.labels, student.cfg, student.augment_cfg, **common), out)
