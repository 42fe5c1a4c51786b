"""Dataset detection: split lists (Grocery layout), class folders, and clear errors."""
import numpy as np
import pytest

from skulens import DatasetError, load_dataset


def test_grocery_split_lists_with_coarse_classes(grocery_root):
    ds = load_dataset(grocery_root)
    assert ds.layout == "split_lists" and len(ds.classes) == 81
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 2640, "val": 296, "test": 2485}
    assert ds.classes[1] == "Granny-Smith" and len(ds.coarse_classes) == 43
    assert ds.coarse_labels[1] == "Apple" and ds.splits["train"][0].path.is_file()


def test_class_folders_get_a_deterministic_split(tmp_path, grocery_subset):
    src = load_dataset(grocery_subset)
    for split in ("train", "test"):
        for s in src.split(split):
            d = tmp_path / "shop" / src.classes[s.label]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{split}_{s.path.name}").symlink_to(s.path)
    a, b = load_dataset(tmp_path / "shop"), load_dataset(tmp_path / "shop")
    assert a.layout == "folders" and sorted(a.classes) == sorted(src.classes)
    assert sum(len(v) for v in a.splits.values()) == len(src.split("train")) + len(src.split("test"))
    assert [s.path for s in a.splits["test"]] == [s.path for s in b.splits["test"]]


def test_split_folders(tmp_path, grocery_subset):
    src = load_dataset(grocery_subset)
    for split in ("train", "test"):
        for s in src.split(split):
            d = tmp_path / "ds" / split / src.classes[s.label]
            d.mkdir(parents=True, exist_ok=True)
            (d / s.path.name).symlink_to(s.path)
    ds = load_dataset(tmp_path / "ds")
    assert ds.layout == "split_folders" and len(ds.split("test")) == len(src.split("test"))
    with pytest.raises(DatasetError, match="no 'val' split"):
        ds.split("val")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("a.jpg, 0\nb.jpg, zero\n")
    with pytest.raises(DatasetError, match=r"train.txt:2: expected"):
        load_dataset(bad)
    (bad / "train.txt").write_text("a.jpg, 0\nb.jpg, 7\n")
    (bad / "classes.csv").write_text("name,id\napple,0\npear,1\n")
    with pytest.raises(DatasetError, match=r"class ids \[7\]"):
        load_dataset(bad)
    (bad / "train.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot read split list"):
        load_dataset(bad)


def test_subset_renumbers_classes_and_round_trips_through_split_lists(grocery_root, tmp_path):
    from skulens._dataset import subset, write_split_lists

    ds = load_dataset(grocery_root)
    sub = subset(ds, [1, 0, 40], per_class={"train": 5})
    assert sub.classes == [ds.classes[1], ds.classes[0], ds.classes[40]]
    assert len(sub.split("train")) == 15 and {s.label for s in sub.split("train")} == {0, 1, 2}
    assert len(sub.split("test")) == sum(1 for s in ds.split("test") if s.label in (0, 1, 40))
    back = load_dataset(write_split_lists(sub, tmp_path / "sub"))
    assert back.classes == sub.classes and back.coarse_labels == sub.coarse_labels
    assert [s.path for s in back.split("train")] == [s.path for s in sub.split("train")]


def _folders(dst, photos):
    """ROOT/<class>/<name> symlinks: {class: [(name, real photo)]}."""
    for cls, items in photos.items():
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for name, src in items:
            (dst / cls / name).symlink_to(src)
    return dst


def test_class_folder_split_is_stratified_and_keeps_val_and_test_per_class(grocery_root, tmp_path):
    train = load_dataset(grocery_root).split("train")
    by_class = {}
    for s in train:
        by_class.setdefault(s.label, []).append(s.path)
    sizes = {"five": 5, "twelve": 12, "thirty": 30, "fortyfive": 45}
    photos = {cls: [(p.name, p) for p in by_class[i][:n]] for i, (cls, n) in enumerate(sizes.items())}
    ds = load_dataset(_folders(tmp_path / "a", photos))
    per = {split: np.bincount([s.label for s in ds.splits[split]], minlength=4) for split in ("train", "val", "test")}
    order = [ds.classes.index(c) for c in sizes]
    # 10 % (at least one photo) of every class to val and to test, the rest to train
    assert [int(per["test"][i]) for i in order] == [1, 1, 3, 5] == [int(per["val"][i]) for i in order]
    assert [int(per["train"][i]) for i in order] == [3, 10, 24, 35]
    # deterministic, and the same wherever the dataset lives (file names decide)
    moved = load_dataset(_folders(tmp_path / "b", photos))
    for split in ("train", "val", "test"):
        assert [s.path.name for s in moved.splits[split]] == [s.path.name for s in ds.splits[split]]


def test_tiny_class_folders_are_refused_naming_them(grocery_subset, tmp_path):
    src = load_dataset(grocery_subset).split("train")
    photos = {"apple": [(s.path.name, s.path) for s in src if s.label == 0][:8],
              "pear": [(s.path.name, s.path) for s in src if s.label == 1][:3]}
    with pytest.raises(DatasetError, match=r"'pear' \(3\).*at least 5 photos"):
        load_dataset(_folders(tmp_path / "d", photos))


def test_nested_class_folders_need_a_class_depth(grocery_subset, tmp_path):
    src = load_dataset(grocery_subset).split("train")
    label = lambda k: [(s.path.name, s.path) for s in src if s.label == k][:6]  # noqa: E731
    root = _folders(tmp_path / "shop", {"Fruit/Apple/Green": label(0), "Fruit/Apple/Red": label(1),
                                        "Fruit/Pear": label(2), "Dairy/Milk": label(3)})
    with pytest.raises(DatasetError, match="nested hierarchy") as err:
        load_dataset(root)
    assert "--class-depth 1: 2 classes (Dairy, Fruit)" in str(err.value)
    assert "--class-depth 2: 3 classes (Milk, Apple, Pear)" in str(err.value)
    assert "--class-depth 0: 4 leaf folders" in str(err.value)
    assert load_dataset(root, class_depth=2).classes == ["Apple", "Milk", "Pear"]
    assert load_dataset(root, class_depth=0).classes == ["Green", "Milk", "Pear", "Red"]
    with pytest.raises(DatasetError, match=r"images lie above that level \(in Dairy/Milk/\)"):
        load_dataset(root, class_depth=3)
    # the same choice applies inside train/ val/ test/ split folders (symlinked folders followed)
    split_root = tmp_path / "split"
    split_root.mkdir()
    for split in ("train", "test"):
        (split_root / split).symlink_to(root, target_is_directory=True)
    with pytest.raises(DatasetError, match="nested hierarchy"):
        load_dataset(split_root)
    ds = load_dataset(split_root, class_depth=0)
    assert ds.layout == "split_folders" and len(ds.classes) == 4 and len(ds.split("test")) == 24


def test_holdout_is_stratified_and_duplicates_across_splits_are_found(grocery_subset, tmp_path):
    from skulens.internal import Dataset, duplicates_across_splits, holdout

    ds = load_dataset(grocery_subset)
    keep, held = holdout(ds.split("train"))  # 8 photos per class
    assert np.bincount([s.label for s in held]).tolist() == [1] * 6
    assert len(keep) + len(held) == len(ds.split("train")) and not set(keep) & set(held)
    assert duplicates_across_splits(ds) == []
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(ds.split("train")[0].path.read_bytes())  # the same photo, another name, in test
    leaky = Dataset(ds.root, ds.classes, {"train": ds.split("train"),
                                          "test": ds.split("test") + [type(ds.split("test")[0])(copy, 0)]})
    groups = duplicates_across_splits(leaky)
    assert len(groups) == 1 and sorted(split for split, _ in groups[0]) == ["test", "train"]
