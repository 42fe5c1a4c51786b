"""File helpers shared by every package (torch-free): atomic writes and hashing."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def proc_field(key: str, path: str = "/proc/self/status") -> str | None:
    """The value after ``key:`` in a Linux /proc file of ``key: value [unit]`` lines (first word;
    default this process's status), or None where the file or the key is missing."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == key and rest.split():
                    return rest.split()[0]
    except OSError:
        pass
    return None


def proc_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """A /proc size field given in kB (VmSize, VmHWM, MemAvailable, ...) in bytes, or None."""
    value = proc_field(key, path)
    return int(value) * 1024 if value is not None and value.isdigit() else None


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc)."""
    value = proc_field("Umask")
    if value is not None:
        try:
            return int(value, 8)
        except ValueError:
            pass
    mask = os.umask(0o022)  # elsewhere: set and restore (momentarily process-wide)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` on a temp file beside ``path``, fsync it and rename it over
    ``path``: readers see the old file or the new one, never a half-written one. The file gets
    the permissions of a newly created file, 0666 less the umask (0644 under the usual umask
    022), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
