"""Slurm: cluster profiles, the sbatch script, submission, job state and requeue.

A profile (TOML in ``slurm/profiles/``) maps a GPU type to partition, GRES, CPUs,
memory and time limits, and holds the job's environment set-up lines, so a run
picks hardware with one word (``--slurm-gpu h100``) on any cluster.

The job attaches to the submitting MLflow run through exported ``MLFLOW_*``
variables, never secrets: those come from the cluster's own environment.
It is requeue-able: Slurm sends SIGUSR1 ``signal_seconds`` before the time limit,
the batch shell forwards it to the Python process, which checkpoints and calls
:func:`requeue_self`; the restarted job resumes from the checkpoint.

Try it against the test cluster (``slurm/testcluster/start.sh``)::

    python -c "from sciqa import slurm; p = slurm.load_profile('local'); \\
      print(slurm.build_job(p, 'h100', ['nvidia-smi'], 'demo', None, '/tmp/logs', {}, '/tmp'))"

Profile lookup, for a name (not a path): ``$SCIQA_SLURM_PROFILE_DIR`` (``os.pathsep``
separated), ``<checkout>/slurm/profiles`` next to this package (editable installs),
then ``./slurm/profiles`` (``mlflow run .`` runs in the checkout).  A path to a
``.toml`` file is used as it is.  No name at all: ``$SCIQA_SLURM_PROFILE``, else ``local``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from sciqa.errors import SciqaError

DEFAULT_PROFILE = "local"
PROFILE_ENV = "SCIQA_SLURM_PROFILE"
PROFILE_DIR_ENV = "SCIQA_SLURM_PROFILE_DIR"
DEFAULT_SIGNAL_SECONDS = 120

# Slurm states after which a job never runs again (a requeued job passes through
# REQUEUED/PENDING instead).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
})

# Env names that look like credentials: they must never be written into a job file
# (it is saved as an MLflow artifact and readable on shared file systems).
_SECRET_KEY = re.compile(r"TOKEN|PASSW|SECRET|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE|USERNAME", re.I)
_URI_USERINFO = re.compile(r"://[^/@\s]+@")  # https://user:pass@host
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_PROFILE_KEYS = {"description", "setup", "python", "signal_seconds", "partitions", "gpus", "models"}
_PARTITION_KEYS = {"gpus_per_node", "cpus_per_gpu", "mem_per_gpu_mb", "time", "max_time"}
_GPU_KEYS = {"partitions", "gres", "memory_gb"}


@dataclass(frozen=True)
class Partition:
    """One partition's per-GPU resources and time limits (one GPU model per partition)."""

    name: str
    gpus_per_node: int
    cpus_per_gpu: int
    mem_per_gpu_mb: int
    time: str
    max_time: str


@dataclass(frozen=True)
class GpuSpec:
    """What a job of ``count`` GPUs of one type asks Slurm for."""

    type: str
    count: int
    partition: str
    gres: str
    cpus: int
    mem: str
    time: str
    max_time: str


@dataclass(frozen=True)
class Profile:
    """A cluster: GPU types -> partitions, set-up lines, GPUs per model."""

    name: str
    path: Path
    description: str
    setup: tuple[str, ...]
    python: str
    signal_seconds: int
    partitions: dict[str, Partition]
    gpu_partitions: dict[str, tuple[str, ...]]
    gpu_gres: dict[str, str]
    models: dict[str, int] = field(default_factory=dict)
    gpu_memory_gb: dict[str, float] = field(default_factory=dict)  # per type, for --slurm-gpu auto

    @property
    def gpu_types(self) -> list[str]:
        return sorted(self.gpu_partitions)

    def gpu(self, gpu_type: str, count: int = 1) -> GpuSpec:
        """Resources for ``count`` GPUs of ``gpu_type``: the first listed partition whose nodes hold them."""
        if gpu_type not in self.gpu_partitions:
            raise SciqaError(f"unknown GPU type {gpu_type!r} for profile {self.name!r}; "
                             f"accepted: {', '.join(self.gpu_types)}")
        if count < 1:
            raise SciqaError(f"GPU count must be at least 1, got {count}")
        names = self.gpu_partitions[gpu_type]
        fits = [self.partitions[n] for n in names if self.partitions[n].gpus_per_node >= count]
        if not fits:
            most = max(self.partitions[n].gpus_per_node for n in names)
            raise SciqaError(f"{count} {gpu_type} GPUs do not fit one node of profile {self.name!r} "
                             f"(partitions {', '.join(names)}); accepted: 1-{most}")
        p = fits[0]
        return GpuSpec(type=gpu_type, count=count, partition=p.name,
                       gres=f"{self.gpu_gres[gpu_type]}:{count}", cpus=p.cpus_per_gpu * count,
                       mem=f"{p.mem_per_gpu_mb * count}M", time=p.time, max_time=p.max_time)

    def gpus_for(self, model: str) -> int:
        """GPUs the profile says ``model`` needs (1 when not listed)."""
        return self.models.get(model, 1)

    def python_executable(self) -> str:
        """Interpreter the job runs ``-m sciqa`` with (``{python}`` = this interpreter)."""
        return self.python.replace("{python}", sys.executable)


# ---------------------------------------------------------------- profiles

def profile_dirs() -> list[Path]:
    """Directories searched for ``NAME.toml``, in order (see the module docstring)."""
    dirs = [Path(d) for d in os.environ.get(PROFILE_DIR_ENV, "").split(os.pathsep) if d]
    dirs.append(Path(__file__).resolve().parents[3] / "slurm" / "profiles")
    dirs.append(Path.cwd() / "slurm" / "profiles")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def list_profiles() -> dict[str, Path]:
    """Profile name -> file, the first found per name winning."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name or path; ``None`` means ``$SCIQA_SLURM_PROFILE`` or ``local``."""
    ref = name_or_path or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if ref.endswith(".toml") or os.sep in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise SciqaError(f"Slurm profile file not found: {path}")
    else:
        found = list_profiles()
        if ref not in found:
            where = ", ".join(str(d) for d in profile_dirs()) or "none found"
            raise SciqaError(f"unknown Slurm profile {ref!r}; accepted: {', '.join(sorted(found)) or '(none)'} "
                             f"or a .toml path (searched: {where}; add dirs with ${PROFILE_DIR_ENV})")
        path = found[ref]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SciqaError(f"cannot read Slurm profile {path}: {e}".replace("\n", " ")) from e
    return _parse_profile(path.stem, path, data)


def _check_keys(where: str, got: dict, allowed: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(got, dict):
        raise SciqaError(f"{where}: expected a table with keys {', '.join(sorted(allowed))}")
    unknown = sorted(set(got) - allowed)
    missing = sorted(required - set(got))
    if unknown or missing:
        parts = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + \
                ([f"missing keys {', '.join(missing)}"] if missing else [])
        raise SciqaError(f"{where}: {'; '.join(parts)}; accepted: {', '.join(sorted(allowed))}")


def _parse_profile(name: str, path: Path, data: dict) -> Profile:
    """Validate the TOML and list every problem's fix in one line."""
    where = f"Slurm profile {path}"
    _check_keys(where, data, _PROFILE_KEYS, {"partitions", "gpus"})
    partitions: dict[str, Partition] = {}
    for pname, p in data["partitions"].items():
        _check_keys(f"{where} [partitions.{pname}]", p, _PARTITION_KEYS, _PARTITION_KEYS)
        for t in ("time", "max_time"):
            parse_time(p[t])
        partitions[pname] = Partition(pname, int(p["gpus_per_node"]), int(p["cpus_per_gpu"]),
                                      int(p["mem_per_gpu_mb"]), p["time"], p["max_time"])
    gpu_partitions: dict[str, tuple[str, ...]] = {}
    gpu_gres: dict[str, str] = {}
    gpu_memory: dict[str, float] = {}
    for gtype, g in data["gpus"].items():
        _check_keys(f"{where} [gpus.{gtype}]", g, _GPU_KEYS, {"partitions"})
        names = tuple(g["partitions"])
        bad = [n for n in names if n not in partitions]
        if bad or not names:
            raise SciqaError(f"{where} [gpus.{gtype}]: unknown partitions {', '.join(bad) or '(empty)'}; "
                             f"accepted: {', '.join(sorted(partitions))}")
        gpu_partitions[gtype] = names
        gpu_gres[gtype] = g.get("gres", f"gpu:{gtype}")
        if "memory_gb" in g:
            if not isinstance(g["memory_gb"], (int, float)) or g["memory_gb"] <= 0:
                raise SciqaError(f"{where} [gpus.{gtype}]: memory_gb must be a positive number, got {g['memory_gb']!r}")
            gpu_memory[gtype] = float(g["memory_gb"])
    return Profile(name=name, path=path, description=data.get("description", ""),
                   setup=tuple(data.get("setup", ())), python=data.get("python", "python"),
                   signal_seconds=int(data.get("signal_seconds", DEFAULT_SIGNAL_SECONDS)),
                   partitions=partitions, gpu_partitions=gpu_partitions, gpu_gres=gpu_gres,
                   models={str(k): int(v) for k, v in data.get("models", {}).items()}, gpu_memory_gb=gpu_memory)


def describe_profile(profile: Profile) -> str:
    """A table of GPU types and their resources, for ``sciqa slurm profiles``."""
    head = ("GPU", "GPU memory", "GPUs", "partition", "gres (1 GPU)", "cpus/GPU", "mem/GPU", "time", "max time")
    rows = []
    for gtype in profile.gpu_types:
        memory = profile.gpu_memory_gb.get(gtype)
        for pname in profile.gpu_partitions[gtype]:
            p = profile.partitions[pname]
            rows.append((gtype, f"{memory:g} GB" if memory else "?", f"1-{p.gpus_per_node}", pname,
                         f"{profile.gpu_gres[gtype]}:1", str(p.cpus_per_gpu), f"{p.mem_per_gpu_mb}M", p.time,
                         p.max_time))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"{profile.name}: {profile.description}".rstrip(": "), f"  file: {profile.path}",
             "  " + fmt.format(*head).rstrip()]
    lines += ["  " + fmt.format(*r).rstrip() for r in rows]
    lines.append("  setup: " + ("; ".join(profile.setup) or "(none)"))
    lines.append(f"  python: {profile.python}   SIGUSR1 {profile.signal_seconds} s before the time limit")
    if profile.models:
        lines.append("  GPUs per model: " + ", ".join(f"{m}={n}" for m, n in sorted(profile.models.items())))
    return "\n".join(lines)


# ---------------------------------------------------------------- the script

def parse_time(value: str) -> int:
    """Seconds in a Slurm time (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise SciqaError(f"bad Slurm time {value!r}; accepted: MINUTES, H:M:S, D-H:M:S")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if c is not None:  # H:M:S
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


def check_env_exports(env_exports: dict[str, str]) -> None:
    """Refuse names that look like credentials and values with one inside a URI."""
    for key, value in env_exports.items():
        if not _ENV_NAME.match(key):
            raise SciqaError(f"bad environment variable name {key!r} for the job")
        if _SECRET_KEY.search(key) or _URI_USERINFO.search(str(value)):
            raise SciqaError(f"refusing to write {key} into the job file: it looks like a secret; "
                             "set it in the cluster's environment (sbatch exports it) or source a "
                             "private file in the profile's setup lines")


def mlflow_exports(run_id: str, tracking_uri: str, experiment_id: str) -> dict[str, str]:
    """The three variables ``mlflow run`` sets, so the job logs into the submitting run."""
    return {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_EXPERIMENT_ID": experiment_id}


def sciqa_command(profile: Profile, args: list[str]) -> list[str]:
    """``[python, -m, sciqa, *args]`` with the profile's interpreter."""
    return [profile.python_executable(), "-m", "sciqa", *args]


_RUN_BLOCK = """\
# Run the command in the background: bash runs a trap only between commands, so a
# foreground command would delay it to the end.  USR1 (time limit near) and TERM
# (preemption, scancel, requeue) are forwarded to it; the command checkpoints and,
# on USR1, requeues the job itself (sciqa.slurm.requeue_self).
forward() {{
  echo "sciqa: job $SLURM_JOB_ID got SIG$1, forwarding to pid $child"
  kill -s "$1" "$child" 2>/dev/null
}}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
{command} &
child=$!
# wait returns early when a trap fires: wait again until the command has exited
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
echo "sciqa: job $SLURM_JOB_ID command exited with status $status"
exit "$status"
"""


def _task_block(tasks: list[tuple[dict[str, str], list[str]]]) -> str:
    """A job array's per-task exports and command, chosen by ``SLURM_ARRAY_TASK_ID``."""
    lines = ["# job array: each task runs its own command (a grid cell) in its own MLflow run",
             'case "$SLURM_ARRAY_TASK_ID" in']
    for i, (exports, command) in enumerate(tasks):
        sets = "; ".join(f"export {k}={shlex.quote(str(v))}" for k, v in exports.items())
        lines.append(f"  {i}) {sets + '; ' if sets else ''}cmd=({shlex.join(command)}) ;;")
    lines += ['  *) echo "sciqa: no task $SLURM_ARRAY_TASK_ID in this array"; exit 2 ;;', "esac"]
    return "\n".join(lines)


def build_job(profile: Profile, gpu: str, command: list[str], job_name: str, time: str | None,
              log_dir: str | Path, env_exports: dict[str, str], workdir: str | Path, *,
              gpus: int = 1, signal_seconds: int | None = None, tasks: list[tuple[dict[str, str], list[str]]] = (),
              max_running: int = 0, dependency: str = "") -> str:
    """Render the sbatch script: resources from the profile, MLflow exports, signal forwarding.

    ``time`` None takes the partition's default; the log ``<log_dir>/%j.out`` holds stdout
    and stderr and is appended to when the job is requeued (an array task's %j is its own id).
    ``tasks``: a job array (``--array=0-N%max_running``), task i exporting ``tasks[i][0]`` and
    running ``tasks[i][1]`` instead of ``command``; ``dependency``: sbatch's, e.g. ``afterany:12``.
    """
    from simple_slurm import Slurm  # a fresh object per job: commands accumulate on reuse

    spec = profile.gpu(gpu, gpus)
    time = time or spec.time
    seconds = parse_time(time)
    if seconds > parse_time(spec.max_time):
        raise SciqaError(f"time {time} exceeds the {spec.max_time} limit of partition {spec.partition}; "
                         f"accepted: at most {spec.max_time}")
    signal_seconds = profile.signal_seconds if signal_seconds is None else signal_seconds
    if not 0 < signal_seconds < seconds:
        raise SciqaError(f"time {time} leaves no room to checkpoint {signal_seconds} s before the limit; "
                         f"accepted: a time longer than {signal_seconds} s or a smaller signal_seconds")
    check_env_exports(env_exports)
    for exports, _ in tasks:
        check_env_exports(exports)
    if not command and not tasks:
        raise SciqaError("empty command for the Slurm job")
    workdir = os.path.abspath(Path(workdir).expanduser())  # abspath: keep the user's symlinked paths
    log_dir = Path(os.path.abspath(Path(log_dir).expanduser()))
    job_name = re.sub(r"\s+", "_", job_name.strip()) or "sciqa"

    job = Slurm(job_name=job_name, partition=spec.partition, gres=spec.gres,
                cpus_per_task=spec.cpus, mem=spec.mem, time=time,
                output=str(log_dir / "%j.out"), open_mode="append", requeue=True,
                signal=f"B:USR1@{signal_seconds}", chdir=workdir,
                **({"array": f"0-{len(tasks) - 1}" + (f"%{max_running}" if max_running else "")} if tasks else {}),
                **({"dependency": dependency} if dependency else {}))
    job.set_shell("/bin/bash")
    job.add_cmd(f"# sciqa job: profile {profile.name}, {spec.count} x {spec.type}")
    job.add_cmd('echo "sciqa: job $SLURM_JOB_ID start (restart ${SLURM_RESTART_COUNT:-0}) on '
                '$(hostname) partition $SLURM_JOB_PARTITION GPUs ${CUDA_VISIBLE_DEVICES:-none}"')
    if profile.setup:
        job.add_cmd("# environment set-up from the profile")
        for line in profile.setup:
            job.add_cmd(line.replace("{workdir}", workdir))
    if env_exports:
        job.add_cmd("# attach to the submitting MLflow run (credentials come from the cluster environment)")
        for key, value in env_exports.items():
            job.add_cmd(f"export {key}={shlex.quote(str(value))}")
    job.add_cmd("export PYTHONUNBUFFERED=1  # log lines reach %j.out as they happen")
    if tasks:
        job.add_cmd(_task_block(tasks))
    job.add_cmd(_RUN_BLOCK.format(command='"${cmd[@]}"' if tasks else shlex.join(command)))
    # convert=False: `$` must reach bash as is (convert=True is for simple-slurm's here-doc)
    text = job.script(convert=False)
    # simple-slurm pads flags without a value (`--requeue` + blanks): strip trailing blanks
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


# ---------------------------------------------------------------- submission and state

def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise SciqaError(f"{cmd[0]} not found: {what} needs the Slurm client tools on PATH "
                         "(run on the cluster's login node, or drop --slurm-gpu to run here)")
    try:
        return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SciqaError(f"{' '.join(cmd)} did not answer within 60 s: is slurmctld up?") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def submit(script_text: str, job_file: Path) -> int:
    """Write the job file, create its log and work dirs, ``sbatch --parsable`` it; the job id."""
    job_file = Path(job_file)
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(script_text)
    for key in ("output", "chdir"):  # sbatch does not create them; a missing log dir loses the job silently
        m = re.search(rf"^#SBATCH --{key}\s+(.+)$", script_text, re.M)
        if m:
            target = Path(m.group(1).strip())
            (target.parent if key == "output" else target).mkdir(parents=True, exist_ok=True)
    res = _run(["sbatch", "--parsable", str(job_file)], "submitting")
    out = res.stdout.strip()
    if res.returncode != 0 or not out:
        raise SciqaError(f"sbatch {job_file} failed (exit {res.returncode}): "
                         f"{_one_line(res.stderr or res.stdout) or 'no output'}")
    try:
        return int(out.splitlines()[-1].split(";")[0])  # "ID" or "ID;cluster"
    except ValueError:
        raise SciqaError(f"sbatch {job_file}: unexpected output {_one_line(out)!r}") from None


def job_info(job_id: int | str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Partition, Restarts, ...); empty once forgotten."""
    res = _run(["scontrol", "-o", "show", "job", str(job_id)], "reading the job state")
    if res.returncode != 0:
        return {}
    return dict(tok.split("=", 1) for tok in res.stdout.split() if "=" in tok)


def job_state(job_id: int | str) -> str:
    """Job state: squeue (queued/running), then scontrol (recently ended), then sacct; else UNKNOWN."""
    res = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], "reading the job state")
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout.split()[0]
    state = job_info(job_id).get("JobState")
    if state:
        return state
    if shutil.which("sacct"):  # no accounting on the test cluster: sacct prints an error there
        res = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], "reading the job state")
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return "UNKNOWN"


def wait_for_job(job_id: int | str, timeout: float = 3600, poll: float = 2.0) -> str:
    """Poll until the job reaches a terminal state; that state.  UNKNOWN 3 times in a row ends it too."""
    deadline = _time.monotonic() + timeout
    unknown = 0
    state = "UNKNOWN"
    while True:
        state = job_state(job_id)
        unknown = unknown + 1 if state == "UNKNOWN" else 0
        if state in TERMINAL_STATES or unknown >= 3:
            return state
        if _time.monotonic() >= deadline:
            raise SciqaError(f"Slurm job {job_id} still {state} after {timeout:.0f} s; "
                             f"check it with `squeue -j {job_id}`")
        _time.sleep(poll)


# ---------------------------------------------------------------- inside the job

def current_job_id() -> str | None:
    """This job's id for scontrol: ``ARRAYID_TASKID`` in an array job (plain SLURM_JOB_ID is one task's)."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return os.environ.get("SLURM_JOB_ID")


def allocated_gpus() -> int:
    """GPUs Slurm gave this job (``SLURM_GPUS_ON_NODE``, else the count in ``SLURM_JOB_GPUS``), 0 if none."""
    on_node = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if on_node.isdigit():
        return int(on_node)
    ids = [g for g in os.environ.get("SLURM_JOB_GPUS", "").split(",") if g.strip()]
    return len(ids)


def restart_count() -> int:
    """How often Slurm has restarted this job (0 on the first run or outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def requeue_self() -> None:
    """Put this job back in the queue (after a checkpoint); Slurm then sends TERM to the job.

    Needs ``scontrol`` inside the job: containers often lack it (see PITFALLS 4).
    """
    job_id = current_job_id()
    if not job_id:
        raise SciqaError("requeue_self() works only inside a Slurm job (SLURM_JOB_ID is not set)")
    if shutil.which("scontrol") is None:
        raise SciqaError(f"scontrol not found on PATH inside job {job_id}: cannot requeue it; add the "
                         "Slurm client tools to the job (profile setup lines or container binds)")
    res = _run(["scontrol", "requeue", job_id], "requeueing")
    if res.returncode != 0:
        raise SciqaError(f"scontrol requeue {job_id} failed (exit {res.returncode}): "
                         f"{_one_line(res.stderr or res.stdout)}")
