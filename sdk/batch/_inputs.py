"""The input of a batch job as one deterministic list: a folder tree, a text or CSV manifest, or
a Parquet file of paths or of encoded image bytes.

The list's order fixes the shards (``shard s`` = items ``[s * shard_size, (s + 1) * shard_size)``),
so it must be the same on every run over the same input: a folder is listed sorted (by the
path relative to it, hidden files and folders skipped); a manifest and a Parquet file keep their
own row order (duplicates included: every row is an item, numbered by ``index``). The list's
fingerprint (sha256 of its entries) is recorded in the output folder, and a re-run over a
changed input is refused instead of resumed with shifted shards.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .._dataset import IMAGE_SUFFIXES
from .._errors import require_extra
from .config import BatchError

PATH_COLUMNS = ("path", "image_path", "file", "filename", "image")
PARQUET_SUFFIXES = (".parquet", ".pq")
MANIFEST_MAX_LINE = 4096


@dataclass(frozen=True)
class InputPlan:
    """The job's items. ``paths``: each item's path as the input gives it (for a bytes input its
    name from ``path_column``, or None); relative paths are read from ``base``. A bytes input
    reads its rows from the Parquet file ``source`` (column ``bytes_column``)."""

    kind: str  # "folder" | "manifest" | "csv" | "parquet-paths" | "parquet-bytes"
    source: str
    base: str
    count: int
    paths: list | None = None
    bytes_column: str | None = None
    fingerprint: str = ""

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "count": self.count,
                "bytes_column": self.bytes_column, "fingerprint": self.fingerprint}


def plan_input(src, *, path_column: str | None = None, bytes_column: str | None = None) -> InputPlan:
    """Read ``src`` into an :class:`InputPlan` (BatchError when it cannot be used)."""
    path = Path(os.fspath(src))
    if not path.exists():
        raise BatchError(f"{src}: no such input (pass a folder of images, a manifest .txt/.csv or a .parquet file)")
    if path.is_dir():
        if path_column or bytes_column:
            raise BatchError(f"{src}: --path-column and --bytes-column are for CSV and Parquet inputs, not folders")
        paths = list_folder(path)
        if not paths:
            raise BatchError(f"{src}: no image files in this folder (looked for "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}, in sub-folders too)")
        return _plan("folder", path, Path.cwd(), paths)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _plan_parquet(path, path_column, bytes_column)
    if bytes_column:
        raise BatchError(f"{src}: --bytes-column is for Parquet inputs")
    if path.suffix.lower() == ".csv":
        return _plan("csv", path, path.parent, _read_csv(path, path_column))
    if path_column:
        raise BatchError(f"{src}: --path-column is for CSV and Parquet inputs; a text manifest has one path a line")
    return _plan("manifest", path, path.parent, _read_lines(path))


def list_folder(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, by extension), hidden ones skipped, sorted by
    their path relative to ``root``; returned as ``root`` joined with that path."""
    rels = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_top = os.path.relpath(top, root)
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                rels.append(f if rel_top == "." else os.path.join(rel_top, f))
    rels.sort()
    return [os.path.join(os.fspath(root), r) for r in rels]


def _fingerprint(kind: str, count: int, entries) -> str:
    h = hashlib.sha256(f"{kind}\n{count}\n".encode())
    for e in entries:
        h.update(b"\x00" if e is None else str(e).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def _plan(kind: str, source: Path, base: Path, paths: list) -> InputPlan:
    if not paths:
        raise BatchError(f"{source}: the input lists no images")
    return InputPlan(kind, str(source.resolve()), str(base.resolve()), len(paths), paths,
                     fingerprint=_fingerprint(kind, len(paths), paths))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path}: cannot read the manifest ({exc})") from exc


def _read_lines(path: Path) -> list[str]:
    """A text manifest: one path a line; blank lines and '#' comments skipped; a split list's
    ``path, label[, coarse]`` line gives its path."""
    out = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MANIFEST_MAX_LINE:
            raise BatchError(f"{path}:{lineno}: line of {len(line)} characters is not a path")
        if ", " in line and os.path.splitext(line)[1].lower() not in IMAGE_SUFFIXES:
            first = line.split(",", 1)[0].strip()
            if os.path.splitext(first)[1].lower() in IMAGE_SUFFIXES:  # a split list's "path, label" line
                line = first
        out.append(line)
    return out


def _read_csv(path: Path, path_column: str | None) -> list[str]:
    try:
        rows = list(csv.reader(_read_text(path).splitlines()))
    except csv.Error as exc:
        raise BatchError(f"{path}: not a readable CSV file ({exc})") from exc
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise BatchError(f"{path}: the CSV file is empty")
    header = [c.strip() for c in rows[0]]
    lowered = [c.lower() for c in header]
    if path_column is not None:
        if path_column not in header:
            raise BatchError(f"{path}: no column {path_column!r} (columns: {', '.join(header)})")
        col, rows = header.index(path_column), rows[1:]
    elif any(c in lowered for c in PATH_COLUMNS):
        col, rows = lowered.index(next(c for c in PATH_COLUMNS if c in lowered)), rows[1:]
    elif os.path.splitext(header[0])[1].lower() in IMAGE_SUFFIXES:
        col = 0  # no header: the first column holds the paths
    else:
        raise BatchError(f"{path}: no path column (name one of {', '.join(PATH_COLUMNS)}, or pass --path-column)")
    out = []
    for lineno, row in enumerate(rows, start=2):
        value = row[col].strip() if col < len(row) else ""
        if not value:
            raise BatchError(f"{path}: row {lineno} has no path")
        out.append(value)
    return out


def _plan_parquet(path: Path, path_column: str | None, bytes_column: str | None) -> InputPlan:
    pa = require_extra("pyarrow", "batch")
    pq = require_extra("pyarrow.parquet", "batch", deps=("pyarrow",))
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise BatchError(f"{path}: not a readable Parquet file ({exc})") from exc
    schema = pf.schema_arrow
    names = list(schema.names)

    view = getattr(pa.types, "is_binary_view", lambda t: False), getattr(pa.types, "is_string_view", lambda t: False)

    def is_binary(name):
        t = schema.field(name).type
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or view[0](t)

    def is_string(name):
        t = schema.field(name).type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or view[1](t)

    for given, what in ((path_column, "path"), (bytes_column, "bytes")):
        if given is not None and given not in names:
            raise BatchError(f"{path}: no column {given!r} for the image {what} (columns: {', '.join(names)})")
    if bytes_column is not None and not is_binary(bytes_column):
        raise BatchError(f"{path}: column {bytes_column!r} is {schema.field(bytes_column).type}, not binary")
    if path_column is not None and not is_string(path_column):
        raise BatchError(f"{path}: column {path_column!r} is {schema.field(path_column).type}, not a string")
    if bytes_column is None:  # a binary column holds the images; a path column then names them
        binary = [n for n in names if is_binary(n)]
        if len(binary) > 1:
            raise BatchError(f"{path}: several binary columns ({', '.join(binary)}); choose one with --bytes-column")
        bytes_column = binary[0] if binary else None
    if path_column is None:
        path_column = next((n for n in names if n.lower() in PATH_COLUMNS and is_string(n)), None)
    if bytes_column is None and path_column is None:
        raise BatchError(f"{path}: no column of image paths ({', '.join(PATH_COLUMNS)}) or bytes (binary); "
                         f"columns: {', '.join(names)}")
    count = pf.metadata.num_rows
    if count == 0:
        raise BatchError(f"{path}: the Parquet file has no rows")
    paths = None
    if path_column is not None:
        column = pf.read(columns=[path_column]).column(0)
        if bytes_column is None and column.null_count:
            raise BatchError(f"{path}: column {path_column!r} has {column.null_count} empty paths")
        paths = column.to_pylist()
    if bytes_column is None:
        return _plan("parquet-paths", path, path.parent, paths)
    # the rows' names when there are any; else the file's layout (its own bytes are not hashed:
    # a catalogue of millions of photos would be read twice)
    layout = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    entries = paths if paths is not None else [bytes_column, str(schema), *layout]
    return InputPlan("parquet-bytes", str(path.resolve()), str(path.parent.resolve()), count, paths,
                     bytes_column=bytes_column, fingerprint=_fingerprint("parquet-bytes", count, entries))
