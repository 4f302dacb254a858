"""One workdir, several processes: a lock file per chunk, safe on NFS.

N copies of the same ``deadjax sweep`` command (job-array tasks, a second
terminal, a requeued job starting while the first still runs) share a workdir:
before training a chunk a process takes its lock, a process that finds the
lock held by a live process skips the chunk and trains the next, so nothing is
trained twice and every TensorBoard run has one writer. Short sections that
rewrite shared files (the HParams experiment, the seed aggregates) take an
exclusive lock of their own.

A lock is the file ``DIR/locks/<group>/chunk_<kkkk>.lock`` holding the
holder's host, pid, start time and a heartbeat time, JSON. It is created with
``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS v3 and later,
where ``flock`` may not work), and a thread of the holder rewrites its
heartbeat every :data:`HEARTBEAT_S` seconds (through a temporary file and a
rename). A lock is stale, and the next process takes it over, when its holder
is a process of this host that no longer exists, or when its heartbeat is
older than :data:`STALE_S` (a holder on another host that died or lost the
file system; the hosts' clocks must agree to within that). Taking over
renames the stale file aside first, which only one process can do, so two
processes never both take the same lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

HOST = socket.gethostname()
STALE_S = float(os.environ.get("DEADJAX_LOCK_STALE_S", 300))
HEARTBEAT_S = max(STALE_S / 10, 0.05)


def chunk_lock_path(workdir, group: str, chunk: int) -> Path:
    return Path(workdir) / "locks" / str(group) / f"chunk_{int(chunk):04d}.lock"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (signal 0 reaches it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path) -> dict | None:
    """The holder recorded in a lock file, or None (no file, or unreadable:
    a holder killed while creating it)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(holder: dict | None, path: Path) -> bool:
    """Whether a lock may be taken over (see the module docstring)."""
    now = time.time()
    if holder is None:  # created but never written: judge by the file's age
        try:
            return now - Path(path).stat().st_mtime > STALE_S
        except FileNotFoundError:
            return True
    if holder.get("host") == HOST and not process_alive(int(holder.get("pid", -1))):
        return True
    return now - float(holder.get("heartbeat", 0)) > STALE_S


def describe(holder: dict | None) -> str:
    if holder is None:
        return "another process"
    age = time.time() - float(holder.get("heartbeat", 0))
    return f"{holder.get('host')}:{holder.get('pid')} (heartbeat {age:.0f} s ago)"


class Lock:
    """A lock file (see the module docstring); ``acquire()`` does not wait."""

    def __init__(self, path):
        self.path = Path(path)
        self.holder: dict | None = None   # the other holder, when acquire() fails
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record = {"host": HOST, "pid": os.getpid(), "started": time.time()}

    @property
    def held(self) -> bool:
        return self._thread is not None

    def _content(self) -> bytes:
        return json.dumps(dict(self._record, heartbeat=time.time())).encode()

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if not is_stale(holder, self.path):
                    self.holder = holder
                    return False
                aside = self.path.with_name(
                    f"{self.path.name}.stale-{HOST}-{os.getpid()}-{time.time_ns()}")
                try:
                    os.rename(self.path, aside)   # only one process succeeds
                except FileNotFoundError:
                    continue                      # another took it over first
                aside.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self._content())
                f.flush()
                os.fsync(f.fileno())
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"deadjax-lock-{self.path.name}")
            self._thread.start()
            return True
        self.holder = read_holder(self.path)
        return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self._still_mine():
                return
            tmp = self.path.with_name(f".{self.path.name}.tmp-{HOST}-{os.getpid()}")
            try:
                tmp.write_bytes(self._content())
                os.replace(tmp, self.path)
            except OSError:
                pass  # a full or vanished disk: the sweep itself reports it

    def _still_mine(self) -> bool:
        h = read_holder(self.path)
        return h is not None and h.get("host") == HOST and h.get("pid") == os.getpid() \
            and h.get("started") == self._record["started"]

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._still_mine():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def chunk(workdir, group: str, chunk_index: int, take: bool = True):
    """``with locks.chunk(DIR, g, k) as lock: if lock.held: ...``: the chunk's
    lock, released at the end of the block. ``take=False`` yields it without
    trying (``held`` False): the processes of one multi-process job other
    than process 0, which holds the lock for all of them."""
    lock = Lock(chunk_lock_path(workdir, group, chunk_index))
    if take:
        lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def exclusive(workdir, name: str, timeout_s: float = 120.0, poll_s: float = 0.05):
    """Waits for the workdir-wide lock ``name`` (short sections that rewrite a
    shared file), up to ``timeout_s``; then goes on without it (the section's
    own writes are atomic, so the worst is a duplicate event file)."""
    lock = Lock(Path(workdir) / "locks" / f"{name}.lock")
    deadline = time.time() + timeout_s
    while not lock.acquire() and time.time() < deadline:
        time.sleep(poll_s)
    try:
        yield lock
    finally:
        lock.release()
