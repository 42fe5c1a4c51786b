"""What classifier and generator exports share: provenance, the staging folder that makes an
export all-or-nothing, and the report.

An export writes its files (fp32 model, INT8 or rejected INT8 model, report) into a hidden
staging folder beside ``out`` and moves them into place only when every stage has passed. The
report is removed first and moved last, so a set of files is complete exactly when its report
exists (the report names each file's sha256); an interrupted or failed export leaves the
previous set untouched (or, if killed during the final renames, a set without a report) and
no temporary files.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

import skulens
from skulens.internal import atomic_write_text, int8_path_for, rejected_path_for, report_path_for, sha256_file

log = logging.getLogger(__name__)


def provenance(ckpt_path, ckpt: dict | None = None) -> dict:
    """Who made the file from what: versions, the checkpoint's sha256 and, where the training
    started from ImageNet weights, distilled a teacher or averaged runs' weights, which (files and sha256)."""
    out = {"created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "skulens_version": skulens.__version__, "torch_version": str(torch.__version__),
           "onnx_version": onnx.__version__, "onnxruntime_version": ort.__version__,
           "checkpoint_sha256": sha256_file(ckpt_path)}
    for key in ("pretrained", "teacher", "averaged_from"):
        if (ckpt or {}).get(key):
            out[key] = ckpt[key]
    return out


def quantization_settings(activation_type: str, calibrate_method: str, **extra) -> dict:
    return {"format": "QDQ", "weights": "s8 per-channel symmetric", "activations": activation_type,
            "calibrate_method": calibrate_method, **extra, "tool": f"onnxruntime.quantization {ort.__version__}"}


class Staging:
    """The files of one export, written under a temporary folder and committed together.

        with Staging(out) as stage:
            write(stage.fp32) ...; stage.commit(report)    # files appear in out's folder now
    """

    def __init__(self, out):
        self.out = Path(out)

    def __enter__(self) -> "Staging":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._remove_dead_stagings()
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.export-{os.getpid()}-", dir=self.out.parent))
        staged = self.dir / self.out.name
        self.fp32, self.int8, self.rejected = staged, int8_path_for(staged), rejected_path_for(staged)
        return self

    def _remove_dead_stagings(self) -> None:
        """Staging folders of earlier exports of ``out`` whose process died (SIGKILL, power
        loss) without cleaning up: removed, so a killed export leaves nothing behind for long."""
        for old in self.out.parent.glob(f".{self.out.name}.export-*"):
            try:
                pid = int(old.name[len(f".{self.out.name}.export-"):].split("-")[0])
            except ValueError:
                continue
            if not _alive(pid):
                log.info("removing %s, left by an export that was killed", old)
                shutil.rmtree(old, ignore_errors=True)

    def final(self, staged: Path) -> Path:
        """Where a staged file will be once committed."""
        return self.out.parent / Path(staged).name

    def commit(self, report: dict) -> Path:
        """Move the staged models into place and write the report last (it names every file's
        sha256). Files of a previous export of ``out`` that this one does not produce (an INT8
        model, a rejected one) are removed, so no stale file looks like part of the new set."""
        report_path = report_path_for(self.out)
        if report_path.exists():
            report_path.unlink()
        for staged in (self.fp32, self.int8, self.rejected):
            target = self.final(staged)
            if staged.exists():
                os.replace(staged, target)
            elif target.exists():
                target.unlink()
        report["report_path"] = str(report_path)
        atomic_write_text(report_path, json.dumps(report, indent=2))
        return report_path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
