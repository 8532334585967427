"""One writer per run (MLflow has no compare-and-set): a lock file per step key here, owner/heartbeat tags elsewhere."""
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psutil
from filelock import FileLock, Timeout

from sciqa.files import cache_root, digest
from sciqa.slurm import current_job_id

OWNER_TAG = "sciqa.owner"  # host|pid|Slurm job
HEARTBEAT_TAG = "sciqa.heartbeat"
HEARTBEAT_SECONDS = 60.0
POLL_SECONDS = float(os.environ.get("SCIQA_LOCK_POLL_SECONDS", "5"))


def live_owner(tags: dict[str, str], status: str) -> str | None:
    """The live process other than this one that writes the run, else None (dead, silent, or an earlier us)."""
    owner = tags.get(OWNER_TAG, "")
    if status != "RUNNING" or owner.count("|") != 2:
        return None
    host, pid, job = owner.split("|")
    try:
        age = time.time() - float(tags.get(HEARTBEAT_TAG, "0"))
    except ValueError:
        age = float("inf")
    if age > 3 * HEARTBEAT_SECONDS or (job and job == (current_job_id() or "")):
        return None  # silent too long, or an earlier incarnation of this very Slurm job
    if host == socket.gethostname() and (int(pid) == os.getpid() or not psutil.pid_exists(int(pid))):
        return None
    return f"pid {pid} on {host}" + (f" (Slurm job {job})" if job else "")


def wait_for_owner(client, run_id: str) -> None:
    """Block while another live process writes ``run_id`` (it resumes once that one ends)."""
    said = False
    while (owner := live_owner((run := client.get_run(run_id)).data.tags, run.info.status)) is not None:
        if not said:
            print(f"sciqa: run {run_id} is in progress ({owner}); waiting for it to end", file=sys.stderr, flush=True)
            said = True
        time.sleep(POLL_SECONDS)


@contextmanager
def key_lock(scope: str, key: str) -> Iterator[Callable[[str], None]]:
    """Hold the machine-wide lock of one step key; yields ``note(run_id)``, which tells waiters what it works on."""
    name = cache_root() / "locks" / digest(scope, key)
    lock, holder = FileLock(name.with_suffix(".lock")), name.with_suffix(".holder")  # FileLock makes the folder
    try:
        held = lock.acquire(timeout=0)
    except Timeout:
        what = holder.read_text().strip() if holder.exists() else "the same step"
        print(f"sciqa: {what} with the same parameters is in progress here; waiting for it to end",
              file=sys.stderr, flush=True)
        held = lock.acquire()
    with held:  # released on the way out
        holder.write_text(f"run (starting) (pid {os.getpid()})")
        yield lambda run_id: holder.write_text(f"run {run_id} (pid {os.getpid()})")


def heartbeat(client, run_id: str) -> Callable[[], None]:
    """Refresh the run's owner/heartbeat tags every minute while the step works; returns what stops it."""
    stop = threading.Event()

    def beat() -> None:
        client.set_tag(run_id, OWNER_TAG, f"{socket.gethostname()}|{os.getpid()}|{current_job_id() or ''}")
        client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))

    def loop() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with suppress(Exception):  # a missed beat only makes the run look idle sooner
                beat()

    def end() -> None:
        stop.set()
        thread.join(timeout=5)

    beat()
    thread = threading.Thread(target=loop, daemon=True, name="sciqa-heartbeat")
    thread.start()
    return end
