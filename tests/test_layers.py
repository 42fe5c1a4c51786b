"""The package's shape: one import root (``skulens``), one-way layers, a wheel that installs
``skulens`` only, and the runtime commands working with torch unimportable."""
from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> (subpackage of skulens, layer rank): a module may import only ranks <= its own
LAYERS = {"sdk": ("skulens", 0), "training": ("skulens.training", 1), "export": ("skulens.export", 2),
          "runtime_bench": ("skulens.bench", 3), "cli": ("skulens.cli", 4)}
OLD_ROOTS = set(LAYERS)  # the folder names are never import roots
HEAVY = ("torch", "onnx", "onnxscript", "matplotlib", "tqdm")  # never imported by the runtime's own modules


def _layer_of(module: str) -> str | None:
    """The folder (layer) a ``skulens...`` module lives in, or None for a third-party module."""
    if module != "skulens" and not module.startswith("skulens."):
        return None
    best = "sdk"
    for folder, (pkg, _) in LAYERS.items():
        if folder != "sdk" and (module == pkg or module.startswith(pkg + ".")):
            best = folder
    return best


def _imports(path: Path, folder: str):
    """(line, absolute module, imported names) of every import in ``path``, relative ones resolved."""
    rel = path.relative_to(REPO / folder).with_suffix("")
    parts = [*LAYERS[folder][0].split("."), *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module, tuple(a.name for a in node.names)


def _sources():
    for folder in LAYERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield folder, path


def test_layers_import_one_way_only():
    bad = []
    for folder, path in _sources():
        rank = LAYERS[folder][1]
        for line, module, names in _imports(path, folder):
            where = f"{path.relative_to(REPO)}:{line}"
            root = module.split(".")[0]
            if root in OLD_ROOTS:
                bad.append(f"{where} imports {module!r}: the import root is 'skulens'")
                continue
            target = _layer_of(module)
            if target is None:
                if folder == "sdk" and root in HEAVY:
                    bad.append(f"{where}: the runtime imports {root}")
                continue
            if LAYERS[target][1] > rank:
                bad.append(f"{where}: {folder} imports {module} ({target} is a layer above it)")
            # outside the runtime, only its public face and skulens.internal
            if folder != "sdk" and target == "sdk":
                private = [p for p in module.split(".")[1:] if p.startswith("_")]
                private += [n for n in names if module == "skulens" and n.startswith("_") and n != "__version__"]
                if private:
                    bad.append(f"{where}: {folder} imports the runtime's private {module} {names}")
    assert not bad, "\n".join(bad)


def test_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check above is real: an sdk module importing training, and a training module
    reaching into a private runtime module, are both reported."""
    fake = tmp_path / "sdk"
    fake.mkdir()
    (fake / "_bad.py").write_text("from skulens.training.config import TrainConfig\nimport torch\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "x.py").write_text("from skulens._image import decode_image\nfrom .. import _io\n")
    for folder in ("export", "runtime_bench", "cli"):
        (tmp_path / folder).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError) as err:
        test_layers_import_one_way_only()
    msg = str(err.value)
    assert "sdk imports skulens.training.config" in msg
    assert "the runtime imports torch" in msg
    assert "private skulens._image" in msg
    assert "private skulens ('_io',)" in msg


def test_setup_maps_every_layer_folder_into_skulens():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    assert mapping == {pkg: folder for folder, (pkg, _) in LAYERS.items()}
    listed = set(cfg["options"]["packages"].split())
    on_disk = set()
    for folder, (pkg, _) in LAYERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            on_disk.add(".".join([pkg, *init.parent.relative_to(REPO / folder).parts]))
    assert listed == on_disk
    assert cfg["options.entry_points"]["console_scripts"].strip() == "skulens = skulens.cli:main"


@pytest.mark.slow
def test_wheel_installs_skulens_only(tmp_path):
    """A normal (non-editable) build: every file of the wheel lies under skulens/ (or its
    dist-info), and each layer's modules are in it."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source tree
    for name in [*LAYERS, "setup.cfg", "pyproject.toml", "README.md"]:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("skulens-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"skulens"}, tops
    for expected in ("skulens/__init__.py", "skulens/internal.py", "skulens/serve/_app.py",
                     "skulens/training/trainer.py", "skulens/training/gan/models.py", "skulens/export/_pipeline.py",
                     "skulens/bench/_bench.py", "skulens/cli/_main.py"):
        assert expected in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "skulens = skulens.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


_NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "matplotlib", "fastapi"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from skulens.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
sys.exit(code)
"""


def _run_without_torch(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_runtime_commands_work_without_torch(tiny_models, tiny_gen, grocery_subset, grocery_image, tmp_path):
    """``pip install skulens`` has no torch: predict, eval and generate still work, and a
    training command names the extra instead of failing with an ImportError."""
    _, int8, _ = tiny_models
    p = _run_without_torch("predict", int8, grocery_image, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert '"label"' in p.stdout
    p = _run_without_torch("eval", int8, "--data", grocery_subset, "--split", "test", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "top1" in p.stdout
    p = _run_without_torch("generate", tiny_gen[0], "--label", "0", "--n", "2", "--out", tmp_path / "grid.png",
                           cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "grid.png").stat().st_size > 0
    p = _run_without_torch("train", "--data", grocery_subset, "--out", tmp_path / "run", cwd=tmp_path)
    assert p.returncode == 2
    assert "skulens[train]" in p.stderr
