"""One writer per run: two identical invocations never write into the same run at once.

Two layers, because MLflow has no compare-and-set:
- a file lock per (tracking store, experiment, step key) in sciqa's cache folder serialises the
  "look up, then resume or create" decision and the work itself on one machine (two terminals,
  ``main`` beside a benchmark): the second invocation waits, says for which run, then finds the
  first one's run FINISHED and reuses it;
- owner and heartbeat tags on the run (``sciqa.owner`` = host|pid|Slurm job, refreshed every
  minute) tell an invocation on another node that a live process still writes the run.
  A dead owner (kill -9, a lost node, the previous incarnation of a requeued job) does not block.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_TAG = "sciqa.owner"
HEARTBEAT_TAG = "sciqa.heartbeat"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 3 * HEARTBEAT_SECONDS
POLL_SECONDS = float(os.environ.get("SCIQA_LOCK_POLL_SECONDS", "5"))


def _job_id() -> str:
    from sciqa.slurm import current_job_id

    return current_job_id() or ""


def me() -> str:
    return f"{socket.gethostname()}|{os.getpid()}|{_job_id()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_owner(tags: dict[str, str], status: str) -> str | None:
    """A description of the live process other than this one that writes the run, else None."""
    owner = tags.get(OWNER_TAG, "")
    if status != "RUNNING" or owner.count("|") != 2:
        return None
    host, pid, job = owner.split("|")
    try:
        age = time.time() - float(tags.get(HEARTBEAT_TAG, "0"))
    except ValueError:
        age = float("inf")
    if age > STALE_SECONDS or (job and job == _job_id()):
        return None  # silent too long, or an earlier incarnation of this very Slurm job
    if host == socket.gethostname() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
        return None
    return f"pid {pid} on {host}" + (f" (Slurm job {job})" if job else "")


def wait_for_owner(client, run_id: str) -> None:
    """Block while another live process writes ``run_id`` (it resumes once that one ends)."""
    said = False
    while True:
        run = client.get_run(run_id)
        owner = live_owner(run.data.tags, run.info.status)
        if owner is None:
            return
        if not said:
            print(f"sciqa: run {run_id} is in progress ({owner}); waiting for it to end", file=sys.stderr,
                  flush=True)
            said = True
        time.sleep(POLL_SECONDS)


class _Holder:
    """What the lock holder tells a waiting invocation: which run it works on."""

    def __init__(self, path: Path):
        self.path = path

    def note(self, run_id: str) -> None:
        self.path.write_text(f"run {run_id} (pid {os.getpid()})")


@contextmanager
def key_lock(scope: str, key: str) -> Iterator[_Holder]:
    """Hold the machine-wide lock of one step key for the duration of the block."""
    from filelock import FileLock, Timeout

    from sciqa.files import cache_root

    folder = cache_root() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(f"{scope}|{key}".encode()).hexdigest()[:24]
    lock, holder = FileLock(str(folder / f"{name}.lock")), _Holder(folder / f"{name}.holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        what = holder.path.read_text().strip() if holder.path.exists() else "the same step"
        print(f"sciqa: {what} with the same parameters is in progress here; waiting for it to end",
              file=sys.stderr, flush=True)
        lock.acquire()
    try:
        holder.note("(starting)")
        yield holder
    finally:
        lock.release()


class Heartbeat:
    """Refresh the run's owner/heartbeat tags every minute while the step works."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sciqa-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        self.client.set_tag(self.run_id, OWNER_TAG, me())
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a missed beat only makes the run look idle sooner
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
