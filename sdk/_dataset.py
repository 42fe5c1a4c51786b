"""Reading labelled image datasets (torch-free: used by training, export and `skulens eval`).

Two layouts are detected:

* **split lists** (as the Grocery Store dataset): ``train.txt`` / ``val.txt`` / ``test.txt``
  with lines ``relative/path, class_id[, coarse_id]``; class names from ``classes.csv`` when
  present (columns: name, id, coarse name, coarse id), else the ids as strings.
* **class folders**: ``ROOT/<class>/*.jpg``, or ``ROOT/<split>/<class>/*.jpg`` for splits
  train/val/test. Without split folders a deterministic stratified 80/10/10 split is made: per
  class, 10 % (at least one photo) for val and for test, in the order of the file names' hashes,
  so the same files always give the same split. A class needs ``MIN_PHOTOS_PER_CLASS`` photos.

Class folders that hold sub-folders of images (``ROOT/Fruit/Apple/Granny-Smith/*.jpg``) are a
nested hierarchy: which level names the classes is the user's choice (``class_depth``: 1 = the
top-level folders, 2 = the level below, ..., 0 = every folder that directly holds images), and
without one :func:`load_dataset` refuses, listing what each choice would give.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import DatasetError
from ._io import sha256_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
MIN_PHOTOS_PER_CLASS = 5  # class folders without split folders: 3 to train on, 1 to validate, 1 to test
HOLDOUT_FRACTION = 0.1   # of each class, for val and for test


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    coarse: int | None = None


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    coarse_classes: list[str] | None = None
    layout: str = "folders"
    fine_to_coarse: dict[int, int] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits or not self.splits[name]:
            have = [k for k, v in self.splits.items() if v]
            raise DatasetError(f"{self.root}: dataset has no '{name}' split (has {have})")
        return self.splits[name]

    @property
    def coarse_labels(self) -> list[str] | None:
        """Coarse name of each fine class, when the dataset has coarse ids."""
        if not self.coarse_classes or not self.fine_to_coarse:
            return None
        return [self.coarse_classes[self.fine_to_coarse[i]] if i in self.fine_to_coarse else ""
                for i in range(len(self.classes))]

    def summary(self) -> str:
        parts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return f"{self.root} ({self.layout}): {len(self.classes)} classes; {parts}"


def load_dataset(root, class_depth: int | None = None) -> Dataset:
    """Detect the layout of ``root`` and read it; DatasetError for anything else.

    ``class_depth`` (class folders only): the folder level that names the classes, 1 =
    ``ROOT/<class>/``, 2 = ``ROOT/<group>/<class>/``, ..., 0 = every folder that directly holds
    images; None: 1 when the class folders are flat, else a DatasetError listing the choices."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (pass a folder of class sub-folders or of "
                           "train.txt/val.txt/test.txt split lists)")
    if any((root / f"{s}.txt").is_file() for s in SPLITS):
        return _load_split_lists(root)
    return _load_folders(root, class_depth)


def _read_classes_csv(path: Path):
    names, coarse_names, fine_to_coarse = {}, {}, {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read class list ({exc})") from exc
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            cid = int(row[1])
            names[cid] = row[0].strip()
            if len(row) >= 4 and row[3].strip():
                coarse_id = int(row[3])
                coarse_names[coarse_id] = row[2].strip()
                fine_to_coarse[cid] = coarse_id
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{lineno}: expected 'name, id[, coarse name, coarse id]'") from None
    return names, coarse_names, fine_to_coarse


def _load_split_lists(root: Path) -> Dataset:
    splits: dict[str, list[Sample]] = {}
    ids, coarse_seen = set(), {}
    for split in SPLITS:
        f = root / f"{split}.txt"
        if not f.is_file():
            continue
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{f}: cannot read split list ({exc})") from exc
        samples = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            try:
                rel, label = parts[0], int(parts[1])
                coarse = int(parts[2]) if len(parts) > 2 and parts[2] else None
            except (IndexError, ValueError):
                raise DatasetError(f"{f}:{lineno}: expected 'relative/path, class_id[, coarse_id]', "
                                   f"got {line.strip()[:80]!r}") from None
            if label < 0:
                raise DatasetError(f"{f}:{lineno}: negative class id {label}")
            ids.add(label)
            if coarse is not None:
                coarse_seen[label] = coarse
            samples.append(Sample(root / rel, label, coarse))
        splits[split] = samples
    if not any(splits.values()):
        raise DatasetError(f"{root}: split lists contain no samples")
    csv_path = root / "classes.csv"
    if csv_path.is_file():
        names, coarse_names, fine_to_coarse = _read_classes_csv(csv_path)
        unknown = sorted(ids - set(names))
        if unknown:
            raise DatasetError(f"{root}: split lists use class ids {unknown[:10]} that "
                               f"classes.csv does not name")
        n = max(names) + 1
        if sorted(names) != list(range(n)):
            raise DatasetError(f"{csv_path}: class ids must be 0..N-1 without gaps")
        classes = [names[i] for i in range(n)]
        coarse_classes = ([coarse_names.get(i, str(i)) for i in range(max(coarse_names) + 1)]
                          if coarse_names else None)
    else:
        n = max(ids) + 1
        classes = [str(i) for i in range(n)]
        fine_to_coarse = coarse_seen
        coarse_classes = ([str(i) for i in range(max(coarse_seen.values()) + 1)]
                          if coarse_seen else None)
    return Dataset(root, classes, splits, coarse_classes, "split_lists", dict(fine_to_coarse))


def _scan(folder: Path) -> dict[tuple[str, ...], list[Path]]:
    """Every non-hidden folder under ``folder`` that directly holds images (symlinks followed,
    each real folder once): its path relative to ``folder`` as a tuple of names -> its images."""
    found, seen = {}, set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = sorted(Path(top) / f for f in files if not f.startswith(".")
                        and Path(f).suffix.lower() in IMAGE_SUFFIXES and (Path(top) / f).is_file())
        rel = Path(top).relative_to(folder).parts
        if images and rel:  # images lying in ROOT itself belong to no class
            found[rel] = images
    return found


def _levels(found: dict[tuple[str, ...], list[Path]]) -> dict[int, list[tuple[str, ...]]]:
    """The class folders each usable ``class_depth`` would give (0: the leaf folders). Level d is
    usable when no images lie above it (they would belong to no class)."""
    deepest = max(len(rel) for rel in found)
    levels = {d: sorted({rel[:d] for rel in found}) for d in range(1, deepest + 1)
              if all(len(rel) >= d for rel in found)}
    levels[0] = sorted(found)
    return levels


def _names(keys: list[tuple[str, ...]]) -> list[str]:
    """Class names: each folder's own name, or its path below ROOT where two share a name."""
    last = [k[-1] for k in keys]
    return last if len(set(last)) == len(last) else ["/".join(k) for k in keys]


def _choices(levels) -> str:
    """One line per usable ``--class-depth``: how many classes it gives, and the first names."""
    lines = []
    for depth in sorted(levels, key=lambda d: (d == 0, d)):
        names = _names(levels[depth])
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        what = "leaf folders, each folder that directly holds images" if depth == 0 else "classes"
        lines.append(f"  --class-depth {depth}: {len(names)} {what} ({shown})")
    return "\n".join(lines)


def _classes_in(folder: Path, class_depth: int | None) -> dict[str, list[Path]]:
    """Class name -> its images, for the class folders under ``folder`` at ``class_depth``."""
    found = _scan(folder)
    if not found:
        return {}
    levels = _levels(found)
    if class_depth is None:
        if any(len(rel) > 1 for rel in found):
            example = "/".join(max(found, key=len))
            raise DatasetError(f"{folder}: the class folders hold sub-folders of images (a nested hierarchy, "
                               f"e.g. {example}/), so which folder level names the classes is ambiguous. "
                               f"Choose it with --class-depth N (Python: class_depth=N):\n{_choices(levels)}")
        class_depth = 1
    if class_depth < 0:
        raise DatasetError(f"class_depth must be 0 (leaf folders) or a folder level >= 1, got {class_depth}")
    if class_depth not in levels:
        shallow = next(rel for rel in found if len(rel) < class_depth)
        raise DatasetError(f"{folder}: --class-depth {class_depth}: images lie above that level (in "
                           f"{'/'.join(shallow)}/) and would belong to no class. Choices:\n{_choices(levels)}")
    keys = levels[class_depth]
    images = {k: [] for k in keys}
    for rel, paths in found.items():
        images[rel if class_depth == 0 else rel[:class_depth]] += paths
    return {name: sorted(images[k]) for name, k in zip(_names(keys), keys)}


def _hash_order(items: list, path=lambda p: p) -> list:
    """A fixed pseudo-random order of ``items`` (paths, or samples with ``path=``): by the hash
    of each file's name, not of where the dataset lives, so a moved dataset splits the same."""
    return sorted(items, key=lambda x: (hashlib.sha1(path(x).name.encode()).hexdigest(), str(path(x))))


def _holdout_count(n: int, fraction: float = HOLDOUT_FRACTION) -> int:
    return max(1, int(n * fraction + 0.5))


def _load_folders(root: Path, class_depth: int | None = None) -> Dataset:
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" in split_dirs:
        by_split = {split: _classes_in(folder, class_depth) for split, folder in split_dirs.items()}
        classes = sorted(by_split["train"])
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for split, found in by_split.items():
            unknown = sorted(set(found) - set(index))
            if unknown:
                raise DatasetError(f"{split_dirs[split]}: class '{unknown[0]}' is not among the train classes")
            splits[split] = [Sample(p, index[c]) for c in classes for p in found.get(c, [])]
        if not splits["train"]:
            raise DatasetError(f"{root}/train: no images found")
        return Dataset(root, classes, splits, layout="split_folders")
    found = _classes_in(root, class_depth)
    if not found:
        raise DatasetError(f"{root}: no images found; expected one sub-folder of images per "
                           "class, or train.txt/val.txt/test.txt split lists")
    if len(found) < 2:
        raise DatasetError(f"{root}: found images for only one class ({next(iter(found))}); a classifier "
                           "needs at least two class folders")
    small = {c: len(p) for c, p in found.items() if len(p) < MIN_PHOTOS_PER_CLASS}
    if small:
        listed = ", ".join(f"'{c}' ({n})" for c, n in sorted(small.items(), key=lambda kv: kv[1])[:10])
        raise DatasetError(
            f"{root}: {len(small)} class folder(s) have too few photos to split into train/val/test: "
            f"{listed}{', ...' if len(small) > 10 else ''}. Each class needs at least {MIN_PHOTOS_PER_CLASS} "
            "photos (3 to train on, 1 to validate, 1 to test); a few dozen per class train far better. "
            "Add photos, merge or remove these folders, or give your own split as train/, val/ and test/ "
            "sub-folders.")
    classes = sorted(found)
    splits = {s: [] for s in SPLITS}
    for i, name in enumerate(classes):
        # stratified: per class, the first 10 % in hash order to test, the next 10 % to val
        order = _hash_order(found[name])
        n_test = n_val = _holdout_count(len(order))
        chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        for split, paths in chosen.items():
            splits[split] += [Sample(p, i) for p in sorted(paths)]
    return Dataset(root, classes, splits, layout="folders")


def holdout(samples: list[Sample], fraction: float = HOLDOUT_FRACTION) -> tuple[list[Sample], list[Sample]]:
    """Stratified hold-out of ``samples`` (e.g. a val split carved from train): per class,
    ``fraction`` of its images (at least one; none for classes under 3 images, which keep them
    all to train on), chosen by file-name hash. Returns (kept, held out), in the input order."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    held = set()
    for group in by_class.values():
        if len(group) >= 3:
            order = _hash_order(group, path=lambda s: s.path)
            held.update(id(s) for s in order[:_holdout_count(len(group), fraction)])
    return [s for s in samples if id(s) not in held], [s for s in samples if id(s) in held]


def duplicates_across_splits(dataset: Dataset) -> list[list[tuple[str, Path]]]:
    """Groups of byte-identical image files found in more than one split, as (split, path):
    a leak that makes val/test figures optimistic. Only files of equal size are hashed."""
    by_size: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for split, samples in dataset.splits.items():
        for s in samples:
            try:
                by_size[s.path.stat().st_size].append((split, s.path))
            except OSError:
                continue  # a missing file is reported when it is decoded
    groups = []
    for entries in by_size.values():
        if len({split for split, _ in entries}) < 2:
            continue
        by_hash: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for split, path in entries:
            by_hash[sha256_file(path)].append((split, path))
        groups += [g for g in by_hash.values() if len({split for split, _ in g}) > 1]
    return groups


def subset(dataset: Dataset, class_ids, per_class: dict[str, int] | None = None, seed: int = 0) -> Dataset:
    """A new Dataset with only ``class_ids`` (renumbered 0..k-1 in the given order) and, per
    split, at most ``per_class[split]`` images of each class (a seeded random choice)."""
    import random

    class_ids = list(class_ids)
    remap = {old: new for new, old in enumerate(class_ids)}
    splits = {}
    for name, samples in dataset.splits.items():
        kept = [Sample(s.path, remap[s.label], s.coarse) for s in samples if s.label in remap]
        limit = (per_class or {}).get(name)
        if limit is not None:
            rng, by_class = random.Random(seed), {}
            for s in kept:
                by_class.setdefault(s.label, []).append(s)
            kept = [s for c in sorted(by_class) for s in sorted(
                rng.sample(by_class[c], min(limit, len(by_class[c]))), key=lambda s: str(s.path))]
        splits[name] = kept
    f2c = {remap[f]: c for f, c in dataset.fine_to_coarse.items() if f in remap}
    return Dataset(dataset.root, [dataset.classes[i] for i in class_ids], splits, dataset.coarse_classes,
                   dataset.layout, f2c)


def write_split_lists(dataset: Dataset, dst) -> Path:
    """Write ``dataset`` as split lists (absolute image paths) + classes.csv into folder ``dst``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with (dst / "classes.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Class Name (str)", "Class ID (int)", "Coarse Class Name (str)", "Coarse Class ID (int)"])
        for i, name in enumerate(dataset.classes):
            c = dataset.fine_to_coarse.get(i)
            w.writerow([name, i, dataset.coarse_classes[c] if c is not None else "", "" if c is None else c])
    for name, samples in dataset.splits.items():
        lines = [f"{s.path.absolute()}, {s.label}" + (f", {s.coarse}" if s.coarse is not None else "")
                 for s in samples]
        (dst / f"{name}.txt").write_text("\n".join(lines) + "\n" if lines else "", encoding="utf-8")
    return dst
