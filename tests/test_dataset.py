"""Dataset detection: split lists (Grocery layout), class folders, and clear errors."""
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
