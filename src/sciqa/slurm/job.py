"""Stop signals for every long loop: SIGUSR1 (Slurm: time limit near) and SIGTERM set one flag; loops
call :func:`check` at safe points, which saves, requeues on SIGUSR1 and raises :class:`Stopped` (exit 75)."""
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sciqa import slurm
from sciqa.errors import SciqaError

LOG_ENV = "SCIQA_SLURM_LOG"  # exported into a Slurm job: its log file, %j = job id
_SIGNAL: dict[str, str] = {}  # "name": the stop signal received, when one was


class Stopped(SystemExit):
    """Exit 75 (EX_TEMPFAIL): a stop signal ended a step at a safe point; ``requeued``: the job is back in the queue."""

    def __init__(self, signal_name: str, requeued: bool, what: str):
        super().__init__(75)
        self.signal, self.requeued, self.what = signal_name, requeued, what


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


@contextmanager
def watch() -> Iterator[None]:
    """Route SIGUSR1/SIGTERM to the stop flag while the block runs (main thread only)."""
    signals = (signal.SIGUSR1, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old = {s: signal.signal(s, lambda signum, _frame: request_stop(signal.Signals(signum).name)) for s in signals}
    try:
        yield
    except Stopped:
        old.clear()  # handlers stay: the TERM that follows a requeue must not cut the run's clean-up short
        raise
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def requested() -> bool:
    return "name" in _SIGNAL


def request_stop(name: str = "SIGTERM") -> None:
    """Ask every long loop to stop at its next safe point, as a signal would (tests, notebooks)."""
    _SIGNAL["name"] = name


def reset() -> None:
    """Forget a stop request (a process that goes on after a Stopped)."""
    _SIGNAL.pop("name", None)


def signal_name() -> str:
    return _SIGNAL.get("name", "SIGTERM")


def check(what: Callable[[], str], save: Callable[[], None] | None = None) -> None:
    """At a safe point: nothing, or (a stop was requested) save, requeue on SIGUSR1, raise Stopped."""
    if not requested():
        return
    name, requeued, in_job = signal_name(), False, in_slurm_job()
    if save is not None:
        try:
            save()
        except Exception as exc:  # noqa: BLE001 - still stop: the local state may be enough
            print(f"sciqa: warning: could not save before stopping: {type(exc).__name__}: {exc}", file=sys.stderr)
    if name == "SIGUSR1" and in_job:
        try:
            slurm.requeue_self()
            requeued = True
        except SciqaError as exc:
            print(f"sciqa: cannot requeue: {exc}", file=sys.stderr)
    then = "requeued itself; the restarted job resumes" if requeued else \
        "the job resumes here if Slurm requeues it" if in_job else "run the same command again to resume"
    done = what()
    who = f"job {slurm.current_job_id()}" if in_job else "sciqa"
    print(f"sciqa: {who} stopped by {name} after {done}; {then}", file=sys.stderr)
    raise Stopped(name, requeued, done)


def job_log_path() -> Path | None:
    """This job's log file (``$SCIQA_SLURM_LOG`` with %j = the job id), when it exists."""
    pattern, job = os.environ.get(LOG_ENV), os.environ.get("SLURM_JOB_ID")
    path = Path(pattern.replace("%j", job)) if pattern and job else None
    return path if path is not None and path.is_file() else None
