"""Reading labelled image datasets (torch-free: used by training, export and `skulens eval`).

Two layouts are detected:

* **split lists** (as the Grocery Store dataset): ``train.txt`` / ``val.txt`` / ``test.txt``
  with lines ``relative/path, class_id[, coarse_id]``; class names from ``classes.csv`` when
  present (columns: name, id, coarse name, coarse id), else the ids as strings.
* **class folders**: ``ROOT/<class>/*.jpg``, or ``ROOT/<split>/<class>/*.jpg`` for splits
  train/val/test. Without split folders a deterministic stratified 80/10/10 split is made.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


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


def load_dataset(root) -> Dataset:
    """Detect the layout of ``root`` and read it; DatasetError for anything else."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (pass a folder of class sub-folders or of "
                           "train.txt/val.txt/test.txt split lists)")
    if any((root / f"{s}.txt").is_file() for s in SPLITS):
        return _load_split_lists(root)
    return _load_folders(root)


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


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _load_folders(root: Path) -> Dataset:
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" in split_dirs:
        classes = [d.name for d in _class_dirs(split_dirs["train"])]
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for split, folder in split_dirs.items():
            samples = []
            for d in _class_dirs(folder):
                if d.name not in index:
                    raise DatasetError(f"{d}: class '{d.name}' is not among the train classes")
                samples += [Sample(p, index[d.name]) for p in _images_in(d)]
            splits[split] = samples
        if not splits["train"]:
            raise DatasetError(f"{root}/train: no images found")
        return Dataset(root, classes, splits, layout="split_folders")
    dirs = [d for d in _class_dirs(root) if _images_in(d)]
    if not dirs:
        raise DatasetError(f"{root}: no images found; expected one sub-folder of images per "
                           "class, or train.txt/val.txt/test.txt split lists")
    if len(dirs) < 2:
        raise DatasetError(f"{root}: found images for only one class ({dirs[0].name}); a classifier "
                           "needs at least two class folders")
    classes = [d.name for d in dirs]
    splits = {s: [] for s in SPLITS}
    for i, d in enumerate(dirs):
        for p in _images_in(d):
            # Deterministic split by file name hash: stable when images are added later.
            h = int(hashlib.sha1(p.name.encode()).hexdigest()[:8], 16) % 10
            splits["test" if h == 0 else "val" if h == 1 else "train"].append(Sample(p, i))
    return Dataset(root, classes, splits, layout="folders")


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
