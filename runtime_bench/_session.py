"""The processes of one benchmarked command, found through its session (a command started with
``start_new_session``: it and everything it started, Ray's agents and actors included), read
from ``/proc``: what they are, their CPU seconds, and ending what is left of them; and pinning a
command to fewer CPUs. Linux only, as the benchmarks that use it."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (a driver started with start_new_session: it and what it started)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[3]) == sid:
                    pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def session_procs(sid: int) -> list[tuple[int, str]]:
    out = []
    for pid in session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            out.append((pid, stat[stat.index("(") + 1:stat.rindex(")")]))
        except OSError:
            pass
    return out


def end_session(sid: int) -> int:
    """SIGKILL what is left of a driver's session (a killed driver's Ray agents): by pid, only
    processes of that session, which this benchmark started."""
    left = [p for p in session_pids(sid) if p != os.getpid()]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(sid: int, seen: dict) -> None:
    """Record into ``seen`` {pid: (name, cpu seconds)} the CPU time (user + system) of every
    process of session ``sid`` now (a process's last sample stands for its total)."""
    for pid in session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seen[pid] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / _TICK)


def pin_to(cpus: int | None):
    """A ``preexec_fn`` that restricts the child to the first ``cpus`` CPUs this process may use
    (None: no restriction). Linux only: elsewhere the pinned configurations cannot run."""
    if cpus is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("pinning a run to fewer CPUs needs os.sched_setaffinity (Linux); drop inproc1c "
                           "from --configs")
    allowed = sorted(os.sched_getaffinity(0))[:cpus]
    return lambda: os.sched_setaffinity(0, allowed)
