"""Result files of the runtime_bench commands: ``<stem>.json``, ``<stem>.md`` and a chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from skulens.internal import atomic_write_text


def write_result_files(out_dir, stem: str, result: dict, markdown: str,
                       chart: Callable[[dict, Path], bool]) -> list[Path]:
    """Write ``stem``.json (``result``), ``stem``.md and, where ``chart`` draws one, ``stem``.png
    into ``out_dir``, each atomically; returns the paths written."""
    out = Path(out_dir)
    written = [atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n"),
               atomic_write_text(out / f"{stem}.md", markdown)]
    if chart(result, out / f"{stem}.png"):
        written.append(out / f"{stem}.png")
    return written
