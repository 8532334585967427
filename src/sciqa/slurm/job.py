"""Job control for every long loop (generation, training, inside ``main`` too), in one place.

The CLI installs :func:`watch` for the whole command: SIGUSR1 (Slurm: time limit near) and SIGTERM
(preemption, ``scontrol requeue``, ``scancel``, a plain ``kill``) set one process-wide flag. Loops
call :func:`check` at safe points (between generation batches, at optimizer-step boundaries); once
the flag is set it saves what the loop has (the CSV as an artifact, a checkpoint), requeues the
Slurm job on SIGUSR1 and raises :class:`Stopped` (exit code :data:`EXIT_STOPPED`), which
:func:`sciqa.tracking.runs.step_run` records as SCHEDULED (requeued) or KILLED. The restarted job — or
the same command run again — resumes from what was saved.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by a signal at a safe point, state saved
LOG_ENV = "SCIQA_SLURM_LOG"  # exported into a Slurm job: its log file, %j = job id
_STOP = threading.Event()
_SIGNAL: dict[str, str] = {}


class Stopped(SystemExit):
    """A stop signal ended a step at a safe point, its state saved; the process exits 75.

    ``requeued``: the job put itself back in the queue (SIGUSR1); on SIGTERM Slurm decides
    (``scontrol requeue`` and preemption with --requeue bring it back, scancel does not)."""

    def __init__(self, signal_name: str, requeued: bool, what: str):
        super().__init__(EXIT_STOPPED)
        self.signal, self.requeued, self.what = signal_name, requeued, what


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


@contextmanager
def watch() -> Iterator[None]:
    """Route SIGUSR1/SIGTERM to the stop flag while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        request_stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        yield
    except Stopped:
        raise  # handlers stay: the TERM that follows a requeue must not cut the run's clean-up short
    except BaseException:
        _restore(old)
        raise
    else:
        _restore(old)


def _restore(old: dict) -> None:
    for sig, previous in old.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def requested() -> bool:
    return _STOP.is_set()


def request_stop(name: str = "SIGTERM") -> None:
    """Ask every long loop to stop at its next safe point, as a signal would (tests, notebooks)."""
    _SIGNAL["name"] = name
    _STOP.set()


def reset() -> None:
    """Forget a stop request (a notebook or test process that goes on after a Stopped)."""
    _SIGNAL.pop("name", None)
    _STOP.clear()


def signal_name() -> str:
    """The signal that asked to stop (SIGTERM when none was recorded)."""
    return _SIGNAL.get("name", "SIGTERM")


def check(what: Callable[[], str], save: Callable[[], None] | None = None) -> None:
    """At a safe point: nothing, or (a stop was requested) save, requeue on SIGUSR1, raise Stopped."""
    if not _STOP.is_set():
        return
    from sciqa import slurm
    from sciqa.errors import SciqaError

    name = signal_name()
    if save is not None:
        try:
            save()
        except Exception as exc:  # noqa: BLE001 - still stop: the local state may be enough
            print(f"sciqa: warning: could not save before stopping: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
    requeued = False
    if name == "SIGUSR1" and in_slurm_job():
        try:
            slurm.requeue_self()
            requeued = True
        except SciqaError as exc:
            print(f"sciqa: cannot requeue: {exc}", file=sys.stderr, flush=True)
    where = f"job {slurm.current_job_id()}" if in_slurm_job() else "sciqa"
    then = "requeued itself; the restarted job resumes" if requeued else \
        "the job resumes here if Slurm requeues it" if in_slurm_job() else "run the same command again to resume"
    done = what()
    print(f"sciqa: {where} stopped by {name} after {done}; {then}", file=sys.stderr, flush=True)
    raise Stopped(name, requeued, done)


def job_log_path() -> Path | None:
    """This job's log file (``$SCIQA_SLURM_LOG`` with %j = the job id), when it exists."""
    pattern, job = os.environ.get(LOG_ENV), os.environ.get("SLURM_JOB_ID")
    if not pattern or not job:
        return None
    path = Path(pattern.replace("%j", job))
    return path if path.is_file() else None
