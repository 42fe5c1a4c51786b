"""Catalogue-scale batch classification (issue #17): ``skulens classify-batch`` / ``run_batch``
on real Grocery photos with the tiny exported model, in-process and on a real local Ray cluster:
the rows equal ``ImageClassifier.classify`` image by image, bad images become error rows, and a
run killed with SIGKILL resumes without duplicates or gaps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="batch classification needs pyarrow: pip install 'skulens[batch]'")
import pyarrow.parquet as pq  # noqa: E402

from skulens import ClassifierOptions, ImageClassifier, MissingExtraError  # noqa: E402
from skulens.batch import BatchConfig, BatchError, run_batch  # noqa: E402
from skulens.cli import main  # noqa: E402

# Ray's own deprecation notices (raised inside ray.data when it copies its DataContext)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

N_PHOTOS = 120
BAD = ("missing", "corrupt", "truncated", "empty")


@pytest.fixture(scope="module")
def photos(grocery_root) -> list[str]:
    """N_PHOTOS real test photos spread over the classes (every k-th of the sorted list)."""
    allp = sorted(str(p) for p in (grocery_root / "test").rglob("*.jpg"))
    step = max(1, len(allp) // N_PHOTOS)
    return allp[::step][:N_PHOTOS]


@pytest.fixture(scope="module")
def manifest(photos, tmp_path_factory) -> tuple[Path, dict]:
    """A text manifest of the photos with four bad entries spread among them:
    (manifest, {bad kind: path})."""
    d = tmp_path_factory.mktemp("batch_inputs")
    good = Path(photos[0]).read_bytes()
    bad = {"missing": str(d / "no_such_photo.jpg"), "corrupt": str(d / "corrupt.jpg"),
           "truncated": str(d / "truncated.jpg"), "empty": str(d / "empty.jpg")}
    Path(bad["corrupt"]).write_bytes(os.urandom(3000))
    Path(bad["truncated"]).write_bytes(good[: len(good) // 2])
    Path(bad["empty"]).write_bytes(b"")
    lines = list(photos)
    for i, kind in enumerate(BAD):
        lines.insert(7 + 29 * i, bad[kind])
    path = d / "manifest.txt"
    path.write_text("# catalogue photos\n" + "\n".join(lines) + "\n")
    return path, bad


@pytest.fixture(scope="module")
def reference(tiny_models, manifest):
    """What ImageClassifier.classify says of every manifest entry: path -> result or None (bad)."""
    _, int8, _ = tiny_models
    paths = [line for line in manifest[0].read_text().splitlines() if line and not line.startswith("#")]
    out = {}
    with ImageClassifier.from_path(int8, ClassifierOptions(num_threads=1)) as clf:
        for p in paths:
            try:
                out[p] = clf.classify(p)
            except Exception:  # noqa: BLE001 - the SDK's ImageError; the batch job must give an error row
                out[p] = None
    return paths, out


def _rows(out) -> list[dict]:
    return pq.read_table(out).sort_by("index").to_pylist()


def _check_against_classify(rows, reference, bad):
    paths, expected = reference
    assert [r["index"] for r in rows] == list(range(len(paths)))  # no duplicates, no gaps, input order
    assert [r["path"] for r in rows] == paths
    for r in rows:
        res = expected[r["path"]]
        if res is None:
            assert r["error"] and r["path"] in r["error"], r
            assert r["label"] is None and r["labels"] == [] and r["unknown"] is None and r["coarse_label"] is None
            continue
        assert r["error"] is None
        assert r["labels"] == [c.label for c in res.categories]
        assert r["scores"] == [c.score for c in res.categories]  # identical, not close
        assert r["indices"] == [c.index for c in res.categories]
        assert (r["label"], r["score"], r["unknown"]) == (res.top.label, res.top.score, res.unknown)
        assert (r["coarse_label"], r["coarse_score"]) == (res.coarse.label, res.coarse.score)
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == set(bad.values())
    assert "no such image file" in errors[bad["missing"]]
    assert "empty file" in errors[bad["empty"]]
    assert "truncated JPEG" in errors[bad["truncated"]]


@pytest.fixture(scope="module")
def in_process_out(tiny_models, manifest, tmp_path_factory, reference):
    """The manifest through ``skulens classify-batch`` in this process (2 worker threads, shards
    of 25): (output folder, JSON summary)."""
    _, int8, _ = tiny_models
    out = tmp_path_factory.mktemp("batch_out") / "inproc"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["-q", "classify-batch", str(int8), "--input", str(manifest[0]), "--output", str(out),
                     "--shard-size", "25", "--batch-size", "8", "--workers", "2", "--no-progress", "--json"])
    assert code == 0
    return out, json.loads(buf.getvalue())


def test_in_process_rows_equal_classify_and_bad_images_are_error_rows(in_process_out, reference, manifest):
    out, summary = in_process_out
    rows = _rows(out)
    _check_against_classify(rows, reference, manifest[1])
    n = len(reference[0])
    parts = [f"part-{s:06d}.parquet" for s in range((n + 24) // 25)]
    assert sorted(p.name for p in out.glob("part-*.parquet")) == parts
    assert summary["total"] == summary["processed"] == n and summary["skipped"] == 0
    assert summary["errors"] == len(BAD) and len(summary["error_examples"]) == len(BAD)
    assert sum(summary["labels"].values()) == n - len(BAD)
    assert summary["startup_seconds"] >= 0 and summary["steady_images_per_s"] > 0
    assert json.loads((out / "_summary.json").read_text())["total"] == n
    assert json.loads((out / "_job.json").read_text())["input"]["count"] == n


def test_embeddings_and_parquet_bytes_input(tiny_models, photos, tmp_path):
    """A Parquet file of encoded images (a null and a corrupt value among them), with embeddings:
    the rows equal classify/embed of the same bytes."""
    _, int8, _ = tiny_models
    blobs = [Path(p).read_bytes() for p in photos[:20]]
    blobs[3], blobs[11] = None, b"\xff\xd8\xff\xe0 not a jpeg"
    names = [f"listing-{i}" for i in range(len(blobs))]
    src = tmp_path / "listings.parquet"
    pq.write_table(pa.table({"listing": names, "photo": pa.array(blobs, pa.binary())}), src, row_group_size=6)
    summary = run_batch(BatchConfig(model=str(int8), input=str(src), output=str(tmp_path / "out"), shard_size=7,
                                    path_column="listing", embeddings=True, threads=2, progress=False))
    assert (summary.total, summary.errors) == (20, 2)
    rows = _rows(tmp_path / "out")
    assert [r["path"] for r in rows] == names
    with ImageClassifier.from_path(int8, ClassifierOptions(num_threads=1)) as clf:
        for i, (r, blob) in enumerate(zip(rows, blobs)):
            if i in (3, 11):
                assert r["error"] and r["embedding"] is None and r["labels"] == []
                continue
            res = clf.classify(blob)
            assert r["labels"] == [c.label for c in res.categories] and r["scores"] == [c.score for c in res.categories]
            assert r["embedding"] == pytest.approx(clf.embed(blob).tolist(), abs=1e-6)


def test_rerun_with_other_settings_or_input_is_refused(tiny_models, manifest, in_process_out, tmp_path):
    _, int8, _ = tiny_models
    out = in_process_out[0]
    with pytest.raises(BatchError, match="top_k"):
        run_batch(BatchConfig(model=str(int8), input=str(manifest[0]), output=str(out), shard_size=25, top_k=3,
                              progress=False))
    other = tmp_path / "other.txt"
    other.write_text("\n".join(manifest[0].read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(BatchError, match="input.count"):
        run_batch(BatchConfig(model=str(int8), input=str(other), output=str(out), shard_size=25, progress=False))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="not a classify-batch output"):
        run_batch(BatchConfig(model=str(int8), input=str(manifest[0]), output=str(stray), progress=False))


def test_a_second_job_on_the_same_output_is_refused(tiny_models, manifest, in_process_out):
    fcntl = pytest.importorskip("fcntl")
    out = in_process_out[0]
    with open(out / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BatchError, match="another classify-batch job"):
            run_batch(BatchConfig(model=str(tiny_models[1]), input=str(manifest[0]), output=str(out),
                                  shard_size=25, progress=False))


def test_missing_parts_are_redone_exactly(tiny_models, manifest, in_process_out, reference, tmp_path):
    """Parts deleted (and a killed writer's temp file left) -> a re-run redoes just those shards."""
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(in_process_out[0], out)
    for s in (1, 4):
        (out / f"part-{s:06d}.parquet").unlink()
    (out / ".part-000001.parquet.abc123.tmp").write_bytes(b"half a part")
    summary = run_batch(BatchConfig(model=str(tiny_models[1]), input=str(manifest[0]), output=str(out),
                                    shard_size=25, progress=False))
    redone = 25 + (len(reference[0]) - 100)  # shard 1, and shard 4: the last, short one
    assert summary.processed == redone and summary.skipped == len(reference[0]) - redone
    assert _rows(out) == _rows(in_process_out[0])
    assert not list(out.glob(".part-*.tmp"))


# -- Ray: a real local cluster -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray mode needs ray[data]: pip install 'skulens[ray]'")
    pytest.importorskip("ray.data", reason="the Ray mode needs ray[data]: pip install 'skulens[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_rows_equal_in_process_and_classify(ray_cluster, tiny_models, manifest, in_process_out, reference,
                                                tmp_path):
    out = tmp_path / "ray"
    summary = run_batch(BatchConfig(model=str(tiny_models[1]), input=str(manifest[0]), output=str(out), ray="auto",
                                    workers=2, shard_size=25, batch_size=8, progress=False))
    assert (summary.mode, summary.workers, summary.threads) == ("ray", 2, 1)
    assert summary.startup_seconds > 0 and summary.steady_images_per_s > 0  # actors start before their first shard
    rows = _rows(out)
    assert rows == _rows(in_process_out[0])  # row for row, error messages included
    _check_against_classify(rows, reference, manifest[1])


def test_steady_state_counts_from_the_last_worker_starting():
    """Start-up ends at the first shard; the steady rate counts only shards started once every
    worker has begun (a slow-starting worker's lead-in is not averaged in)."""
    from skulens.batch._job import steady_state

    shards = [{"n": 100, "worker": "a", "started": 11.0, "finished": 12.0},   # before b is up: left out
              {"n": 100, "worker": "a", "started": 12.0, "finished": 13.0},   # running when b starts: left out
              {"n": 100, "worker": "b", "started": 12.5, "finished": 14.0},
              {"n": 100, "worker": "a", "started": 13.0, "finished": 14.5}]
    startup, rate = steady_state(shards, clock=10.0)
    assert startup == 1.0
    assert rate == pytest.approx(200 / (14.5 - 12.5))
    assert steady_state([], clock=10.0) == (0.0, 0.0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs os.sched_setaffinity (Linux)")
def test_bench_reads_ray_scaling_against_the_machines_own():
    """The benchmark's one-CPU reference really runs on one CPU, and Ray's scale-out is read as a
    fraction of the machine's own 1 -> all-cores scaling."""
    from skulens.bench._session import pin_to
    from skulens.bench.batch_bench import _ratios

    code = "import os; print(len(os.sched_getaffinity(0)))"
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=pin_to(1),
                            check=True)
    assert pinned.stdout.strip() == "1"
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=pin_to(None),
                          check=True)
    assert free.stdout.strip() == str(len(os.sched_getaffinity(0)))
    runs = {"inproc": {"images_per_s": 1300.0}, "inproc1c": {"images_per_s": 740.0},
            "ray1": {"images_per_s": 1100.0}, "ray2": {"images_per_s": 1200.0}, "ray1t1": {"images_per_s": 700.0}}
    r = _ratios(runs)
    assert r["hardware_scaling"] == round(1300 / 740, 3) and r["ray2_over_ray1t1"] == round(1200 / 700, 3)
    assert r["ray_scaling_efficiency"] == round(round(1200 / 700, 3) / round(1300 / 740, 3), 3)
    assert _ratios({k: v for k, v in runs.items() if k != "inproc1c"})["ray_scaling_efficiency"] is None


def _part_count(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0


def test_sigkilled_run_resumes_on_ray_without_duplicates_or_gaps(ray_cluster, tiny_models, manifest, reference,
                                                                 in_process_out, tmp_path):
    """A CLI run (this process's interpreter, in-process mode, one image a model call) is SIGKILLed
    once some of its parts exist; the re-run on Ray finishes exactly the missing shards."""
    lines = manifest[0].read_text().splitlines()[1:] * 3  # 372 items: long enough to be killed mid-run
    big = tmp_path / "big.txt"
    big.write_text("\n".join(lines) + "\n")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "skulens.cli", "-q", "classify-batch", str(tiny_models[1]), "--input", str(big),
           "--output", str(out), "--shard-size", "12", "--batch-size", "1", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _part_count(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    shards = (len(lines) + 11) // 12
    done_before = _part_count(out)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert 3 <= done_before < shards, f"the run was not interrupted mid-way ({done_before}/{shards} parts)"
    summary = run_batch(BatchConfig(model=str(tiny_models[1]), input=str(big), output=str(out), ray="auto",
                                    workers=2, shard_size=12, progress=False))
    assert summary.skipped == 12 * done_before and summary.total == len(lines)
    rows = _rows(out)
    assert [r["index"] for r in rows] == list(range(len(lines)))
    first = _rows(in_process_out[0])
    n = len(first)
    for r in rows:  # the same photo gives the same row wherever it sits in the input
        assert {k: v for k, v in r.items() if k != "index"} == {k: v for k, v in first[r["index"] % n].items()
                                                                if k != "index"}


# -- extras -----------------------------------------------------------------------------------------
_BLOCK = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from skulens import MissingExtraError
from skulens.batch import BatchConfig  # the config never needs the extras
try:
    from skulens.batch import run_batch
    run_batch(BatchConfig(model=sys.argv[2], input=sys.argv[3], output=sys.argv[4], ray="local", progress=False))
except MissingExtraError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("blocked,extra", [("pyarrow,ray", "skulens[batch]"), ("ray", "skulens[ray]")])
def test_missing_extra_is_named(blocked, extra, tiny_models, manifest, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", _BLOCK, blocked, str(tiny_models[1]), str(manifest[0]),
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert extra in p.stdout
    assert issubclass(MissingExtraError, ImportError)
