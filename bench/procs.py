"""Child processes of the benchmark: start, track, measure (RSS over the process tree), and always clean up.

Every process the bench starts goes through :class:`Procs`, in its own
session (process group), so stopping a system stops everything it spawned
(uvicorn/LiteLLM workers, nats-server). Memory is read from ``/proc``: the sum
of ``VmRSS`` (and of PSS from ``smaps_rollup``, which does not count pages
shared between forked workers twice) over each root and all its descendants.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat times are in these
from typing import IO


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        rest = data[data.rindex(b")") + 2:].split()
        out.setdefault(int(rest[1]), []).append(int(entry.name))
    return out


def tree(roots: list[int]) -> list[int]:
    """The roots that are alive and all their descendants."""
    children = _children_map()
    seen: list[int] = []
    stack = [r for r in roots if Path(f"/proc/{r}").exists()]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, ()))
    return seen


def _status_kb(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Memory:
    """Memory of a process tree, in MiB."""

    rss_mb: float
    pss_mb: float
    processes: int


def memory(roots: list[int]) -> Memory:
    pids = tree(roots)
    rss = sum(_status_kb(p, b"VmRSS:") for p in pids)
    pss = sum(_pss_kb(p) for p in pids)
    return Memory(rss / 1024, pss / 1024, len(pids))


class MemorySampler:
    """Samples a process tree's memory in a background thread and keeps the peak."""

    def __init__(self, roots: list[int], interval_s: float = 0.5) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.peak = Memory(0.0, 0.0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            m = memory(self.roots)
            if m.rss_mb > self.peak.rss_mb:
                self.peak = m
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Proc:
    """One started child (the root of its own process group)."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Registry of everything the bench started; ``stop_all`` is safe to call repeatedly and from handlers."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    extra: list[object] = field(default_factory=list)  # objects with .stop() (e.g. NatsServer)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, start_new_session=True)
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace_s: float = 8.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever of it (and its descendants) is left."""
        pids = tree([proc.pid])
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        for pid in pids:  # descendants that left the group (e.g. setsid'd workers)
            if pid != proc.pid and Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            proc.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc.log_file is not None:
            proc.log_file.close()
            proc.log_file = None
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        for obj in reversed(list(self.extra)):
            try:
                obj.stop()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.extra.clear()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def wait_until(pred, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``pred()`` until it is true or the time is up (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval_s)
    return False


def raise_nofile(target: int = 65536) -> int:
    """Raise the open-files limit (inherited by every child) as far as the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(target, hard) if hard != resource.RLIM_INFINITY else target
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
        return want
    return soft


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def stat_ticks(stat: Path) -> int:
    """User + system CPU ticks from a ``/proc/<pid>/stat`` (or ``/proc/<pid>/task/<tid>/stat``); 0 when gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def cpu_ticks(pids: list[int]) -> int:
    """CPU time (user + system, every thread) the processes ``pids`` have used so far, in clock ticks."""
    return sum(stat_ticks(Path(f"/proc/{pid}/stat")) for pid in pids)


def quiesce(roots: list[int], timeout_s: float = 60.0, idle_share: float = 0.05, window_s: float = 0.5) -> float:
    """Wait until the process trees of ``roots`` use less than ``idle_share`` of one core over ``window_s``.

    A system still draining what the last step left (audit batches, queued jobs) would otherwise tax the next
    measurement. Returns the seconds waited (``timeout_s`` when it never went quiet).
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        pids = tree(roots)
        before = cpu_ticks(pids)
        time.sleep(window_s)
        if (cpu_ticks(pids) - before) / CLOCK_TICKS / window_s < idle_share:
            break
    return round(time.monotonic() - start, 2)


def cpu_busy(interval_s: float = 1.0) -> float:
    """Fraction of the machine's CPU busy over ``interval_s`` (0..1), e.g. other work competing with the bench."""
    t0, i0 = _cpu_times()
    time.sleep(interval_s)
    t1, i1 = _cpu_times()
    return 0.0 if t1 == t0 else 1.0 - (i1 - i0) / (t1 - t0)


def start_run(prefix: str) -> tuple[Path, Procs, int]:
    """A bench run's temp dir and process registry, every child stopped on exit, Ctrl-C, SIGTERM or SIGHUP.

    Returns (workdir, procs, open-files limit): the limit is raised for every child to inherit.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Procs(workdir / "logs")
    atexit.register(procs.stop_all)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Ctrl-C must always stop the run, even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return workdir, procs, raise_nofile(65536)
