"""Slurm: cluster profiles (GPU type -> partition, GRES, CPUs, memory, time limits; from $SCIQA_SLURM_PROFILE_DIR,
<checkout>/slurm/profiles, ./slurm/profiles), the requeue-able sbatch script, submission and job state."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from simple_slurm import Slurm

from sciqa.config import USERINFO, is_secret_name
from sciqa.errors import SciqaError

PROFILE_ENV = "SCIQA_SLURM_PROFILE"
PROFILE_DIR_ENV = "SCIQA_SLURM_PROFILE_DIR"
# states after which a job never runs again (a requeued job passes through REQUEUED/PENDING instead)
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})


@dataclass(frozen=True)
class Partition:  # one partition's per-GPU resources and time limits (one GPU model per partition)
    gpus_per_node: int
    cpus_per_gpu: int
    mem_per_gpu_mb: int
    time: str
    max_time: str
    name: str = ""


@dataclass(frozen=True)
class GpuType:  # the partitions that have it (tried in order), its GRES name and one GPU's memory
    partitions: tuple[str, ...]
    gres: str
    memory_gb: float | None = None


@dataclass(frozen=True)
class Profile:  # a cluster: GPU types -> partitions, set-up lines, GPUs per model (field names = the TOML keys)
    name: str
    path: Path
    partitions: dict[str, Partition]
    gpus: dict[str, GpuType]
    description: str = ""
    setup: tuple[str, ...] = ()
    python: str = "python"
    signal_seconds: int = 120  # SIGUSR1 this long before the time limit: time to checkpoint
    models: dict[str, int] = field(default_factory=dict)

    def gpu(self, gpu_type: str, count: int = 1) -> Partition:
        """The partition for ``count`` GPUs of ``gpu_type``: the first listed one whose nodes hold them."""
        if gpu_type not in self.gpus:
            raise SciqaError(f"unknown GPU type {gpu_type!r} for profile {self.name!r}; "
                             f"accepted: {', '.join(sorted(self.gpus))}")
        if count < 1:
            raise SciqaError(f"GPU count must be at least 1, got {count}")
        names = self.gpus[gpu_type].partitions
        if not (fits := [self.partitions[n] for n in names if self.partitions[n].gpus_per_node >= count]):
            most = max(self.partitions[n].gpus_per_node for n in names)
            raise SciqaError(f"{count} {gpu_type} GPUs do not fit one node of profile {self.name!r} "
                             f"(partitions {', '.join(names)}); accepted: 1-{most}")
        return fits[0]

    def gpus_for(self, model: str) -> int:  # GPUs a model needs: the profile's [models], else 1
        return self.models.get(model, 1)

    def command(self, args: list[str]) -> list[str]:
        """``[python, -m, sciqa, *args]`` with the profile's interpreter (``{python}``: this one)."""
        return [self.python.replace("{python}", sys.executable), "-m", "sciqa", *args]


def profile_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(PROFILE_DIR_ENV, "").split(os.pathsep) if d]
    unique: dict[Path, Path] = {}
    for d in [*dirs, Path(__file__).resolve().parents[3] / "slurm" / "profiles", Path.cwd() / "slurm" / "profiles"]:
        if d.is_dir():
            unique.setdefault(d.resolve(), d)
    return list(unique.values())


def list_profiles() -> dict[str, Path]:
    """Profile name -> file, the first found per name winning (later dirs are read first, then overwritten)."""
    return {f.stem: f for d in reversed(profile_dirs()) for f in sorted(d.glob("*.toml"))}


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name or path; ``None`` means ``$SCIQA_SLURM_PROFILE`` or ``local``."""
    ref = name_or_path or os.environ.get(PROFILE_ENV) or "local"
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
        return _parse_profile(path, tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SciqaError(f"cannot read Slurm profile {path}: {e}".replace("\n", " ")) from e


def _checked(where: str, got, cls: type, required: set[str]) -> dict:
    """``got`` when it is a table of ``cls``'s fields holding ``required``, else every problem in one line."""
    allowed = {f.name for f in fields(cls)} - {"name", "path"}
    if not isinstance(got, dict):
        raise SciqaError(f"{where}: expected a table with keys {', '.join(sorted(allowed))}")
    if problems := [f"{what} keys {', '.join(keys)}" for what, keys in
                    (("unknown", sorted(set(got) - allowed)), ("missing", sorted(required - set(got)))) if keys]:
        raise SciqaError(f"{where}: {'; '.join(problems)}; accepted: {', '.join(sorted(allowed))}")
    return got


def _parse_profile(path: Path, data: dict) -> Profile:
    where = f"Slurm profile {path}"
    _checked(where, data, Profile, {"partitions", "gpus"})
    partitions = {}
    for name, p in data["partitions"].items():
        p = _checked(f"{where} [partitions.{name}]", p, Partition, {f.name for f in fields(Partition)} - {"name"})
        for key in ("time", "max_time"):
            parse_time(p[key])
        partitions[name] = Partition(int(p["gpus_per_node"]), int(p["cpus_per_gpu"]), int(p["mem_per_gpu_mb"]),
                                     p["time"], p["max_time"], name)
    gpus = {}
    for gtype, g in data["gpus"].items():
        g = _checked(f"{where} [gpus.{gtype}]", g, GpuType, {"partitions"})
        names, memory = tuple(g["partitions"]), g.get("memory_gb")
        bad = [n for n in names if n not in partitions]
        if bad or not names:
            raise SciqaError(f"{where} [gpus.{gtype}]: unknown partitions {', '.join(bad) or '(empty)'}; "
                             f"accepted: {', '.join(sorted(partitions))}")
        if memory is not None and (not isinstance(memory, (int, float)) or memory <= 0):
            raise SciqaError(f"{where} [gpus.{gtype}]: memory_gb must be a positive number, got {memory!r}")
        gpus[gtype] = GpuType(names, g.get("gres", f"gpu:{gtype}"), None if memory is None else float(memory))
    return Profile(**{**data, "name": path.stem, "path": path, "partitions": partitions, "gpus": gpus,
                      "setup": tuple(data.get("setup", ())), "models": {str(k): int(v) for k, v in
                                                                           data.get("models", {}).items()}})


def describe_profile(profile: Profile) -> str:  # for `sciqa slurm profiles`
    rows = [("GPU", "GPU memory", "GPUs", "partition", "gres (1 GPU)", "cpus/GPU", "mem/GPU", "time", "max time")]
    rows += [(t, f"{g.memory_gb:g} GB" if g.memory_gb else "?", f"1-{p.gpus_per_node}", p.name, f"{g.gres}:1",
              str(p.cpus_per_gpu), f"{p.mem_per_gpu_mb}M", p.time, p.max_time)
             for t, g in sorted(profile.gpus.items()) for p in (profile.partitions[n] for n in g.partitions)]
    fmt = "  ".join(f"{{:<{max(len(r[i]) for r in rows)}}}" for i in range(len(rows[0])))
    return "\n".join([f"{profile.name}: {profile.description}".rstrip(": "), f"  file: {profile.path}",
                      *("  " + fmt.format(*r).rstrip() for r in rows),
                      "  setup: " + ("; ".join(profile.setup) or "(none)"),
                      f"  python: {profile.python}   SIGUSR1 {profile.signal_seconds} s before the time limit",
                      *(["  GPUs per model: " + ", ".join(f"{m}={n}" for m, n in sorted(profile.models.items()))]
                        if profile.models else [])])


def parse_time(value: str) -> int:
    """Seconds in a Slurm time (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    if not (m := re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())):
        raise SciqaError(f"bad Slurm time {value!r}; accepted: MINUTES, H:M:S, D-H:M:S")
    days, a, b, c = (None if x is None else int(x) for x in m.groups())
    if days is not None:
        return ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    return (a * 60 + b) * 60 + c if c is not None else a * 60 + (b or 0)


def check_env_exports(*exports: dict[str, str]) -> None:
    """Refuse names that look like credentials and values that carry one (the job file is an artifact)."""
    for key, value in (item for e in exports for item in e.items()):
        if not (key.isidentifier() and key.isascii()):
            raise SciqaError(f"bad environment variable name {key!r} for the job")
        if is_secret_name(key) or USERINFO.search(str(value)):
            raise SciqaError(f"refusing to write {key} into the job file: it looks like a secret; set it in the "
                             "cluster's environment (sbatch exports it) or source a file in the profile's setup")


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


def _exports(exports: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(str(v))}" for k, v in exports.items()]


def build_job(profile: Profile, gpu: str, command: list[str], job_name: str, time: str | None,
              log_dir: str | Path, env_exports: dict[str, str], workdir: str | Path, *,
              gpus: int = 1, signal_seconds: int | None = None, tasks: list[tuple[dict[str, str], list[str]]] = (),
              max_running: int = 0, dependency: str = "") -> str:
    """The sbatch script; ``tasks``: a job array whose task i exports ``tasks[i][0]`` and runs ``tasks[i][1]``."""
    part = profile.gpu(gpu, gpus)
    time = time or part.time
    signal_seconds = profile.signal_seconds if signal_seconds is None else signal_seconds
    if (seconds := parse_time(time)) > parse_time(part.max_time):
        raise SciqaError(f"time {time} exceeds the {part.max_time} limit of partition {part.name}; "
                         f"accepted: at most {part.max_time}")
    if not 0 < signal_seconds < seconds:
        raise SciqaError(f"time {time} leaves no room to checkpoint {signal_seconds} s before the limit; "
                         f"accepted: a time longer than {signal_seconds} s or a smaller signal_seconds")
    check_env_exports(env_exports, *(t[0] for t in tasks))
    workdir = os.path.abspath(Path(workdir).expanduser())  # abspath: keep the user's symlinked paths
    log_dir = Path(os.path.abspath(Path(log_dir).expanduser()))
    extra = {"array": f"0-{len(tasks) - 1}" + (f"%{max_running}" if max_running else "")} if tasks else {}
    job = Slurm(job_name=re.sub(r"\s+", "_", job_name.strip()) or "sciqa", partition=part.name,
                gres=f"{profile.gpus[gpu].gres}:{gpus}", cpus_per_task=part.cpus_per_gpu * gpus,
                mem=f"{part.mem_per_gpu_mb * gpus}M", time=time, output=str(log_dir / "%j.out"),
                open_mode="append", requeue=True, signal=f"B:USR1@{signal_seconds}", chdir=workdir,
                **extra, **({"dependency": dependency} if dependency else {}))  # a fresh Slurm per job: cmds pile up
    job.set_shell("/bin/bash")
    lines = [f"# sciqa job: profile {profile.name}, {gpus} x {gpu}",
             'echo "sciqa: job $SLURM_JOB_ID start (restart ${SLURM_RESTART_COUNT:-0}) on '
             '$(hostname) partition $SLURM_JOB_PARTITION GPUs ${CUDA_VISIBLE_DEVICES:-none}"']
    if profile.setup:
        lines += ["# environment set-up from the profile", *(s.replace("{workdir}", workdir) for s in profile.setup)]
    if env_exports:
        lines += ["# attach to the submitting MLflow run (credentials come from the cluster environment)",
                  *_exports(env_exports)]
    lines.append("export PYTHONUNBUFFERED=1  # log lines reach %j.out as they happen")
    if tasks:
        lines += ["# job array: each task runs its own command (a grid cell) in its own MLflow run",
                  'case "$SLURM_ARRAY_TASK_ID" in',
                  *(f"  {i}) {''.join(e + '; ' for e in _exports(exports))}cmd=({shlex.join(cmd)}) ;;"
                    for i, (exports, cmd) in enumerate(tasks)),
                  '  *) echo "sciqa: no task $SLURM_ARRAY_TASK_ID in this array"; exit 2 ;;', "esac"]
    for line in [*lines, _RUN_BLOCK.format(command='"${cmd[@]}"' if tasks else shlex.join(command))]:
        job.add_cmd(line)
    text = job.script(convert=False)  # convert=False: `$` reaches bash as is (True is for a here-doc)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"  # no padding after `--requeue`


def run(cmd: list[str], what: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """A Slurm client command, or one line saying it is missing, hangs or (``check``) fails."""
    if (exe := shutil.which(cmd[0])) is None:
        raise SciqaError(f"{cmd[0]} not found on PATH: {what} needs the Slurm client tools "
                         "(run on the cluster's login node, or drop --slurm-gpu to run here)")
    try:
        res = subprocess.run([exe, *cmd[1:]], input=stdin, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SciqaError(f"{' '.join(cmd)} did not answer within 60 s: is slurmctld up?") from None
    if check and res.returncode != 0:
        raise SciqaError(f"{' '.join(cmd)} failed (exit {res.returncode}): {one_line(res)}")
    return res


def one_line(res: subprocess.CompletedProcess) -> str:
    return " ".join((res.stderr or res.stdout).split()) or "no output"


def submit(script_text: str, job_file: Path) -> int:
    """Write the job file, create its log and work dirs, ``sbatch --parsable`` it; the job id."""
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(script_text)
    for key in ("output", "chdir"):  # sbatch does not create them; a missing log dir loses the job silently
        if m := re.search(rf"^#SBATCH --{key}\s+(.+)$", script_text, re.M):
            target = Path(m.group(1).strip())
            (target.parent if key == "output" else target).mkdir(parents=True, exist_ok=True)
    out = run(["sbatch", "--parsable", str(job_file)], "submitting", check=True).stdout.strip()
    try:
        return int(out.splitlines()[-1].split(";")[0])  # "ID" or "ID;cluster"
    except (IndexError, ValueError):
        raise SciqaError(f"sbatch {job_file}: unexpected output {' '.join(out.split())!r}") from None


def job_info(job_id: int | str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Partition, Restarts, ...); empty once forgotten."""
    res = run(["scontrol", "-o", "show", "job", str(job_id)], "reading the job state")
    return dict(tok.split("=", 1) for tok in res.stdout.split() if "=" in tok) if res.returncode == 0 else {}


def job_state(job_id: int | str) -> str:
    """Job state: squeue (queued/running), then scontrol (recently ended), then sacct; else UNKNOWN."""
    res = run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], "reading the job state")
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout.split()[0]
    if state := job_info(job_id).get("JobState"):
        return state
    if shutil.which("sacct"):  # no accounting on the test cluster: sacct prints an error there
        res = run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], "reading the job state")
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return "UNKNOWN"


def wait_for_job(job_id: int | str, timeout: float = 3600, poll: float = 2.0) -> str:
    """Poll until the job reaches a terminal state; that state.  UNKNOWN 3 times in a row ends it too."""
    deadline, unknown = _time.monotonic() + timeout, 0
    while True:
        state = job_state(job_id)
        unknown = unknown + 1 if state == "UNKNOWN" else 0
        if state in TERMINAL_STATES or unknown >= 3:
            return state
        if _time.monotonic() >= deadline:
            raise SciqaError(f"Slurm job {job_id} still {state} after {timeout:.0f} s; "
                             f"check it with `squeue -j {job_id}`")
        _time.sleep(poll)


def current_job_id() -> str | None:
    """This job's id for scontrol: ``ARRAYID_TASKID`` in an array job (plain SLURM_JOB_ID is one task's)."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_id}_{task_id}" if array_id and task_id else os.environ.get("SLURM_JOB_ID")


def allocated_gpus() -> int:
    """GPUs Slurm gave this job (``SLURM_GPUS_ON_NODE``, else the count in ``SLURM_JOB_GPUS``), 0 if none."""
    on_node, ids = os.environ.get("SLURM_GPUS_ON_NODE", ""), os.environ.get("SLURM_JOB_GPUS", "").split(",")
    return int(on_node) if on_node.isdigit() else len([g for g in ids if g.strip()])


def restart_count() -> int:  # how often Slurm has restarted this job (0 on the first run or outside Slurm)
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0


def requeue_self() -> None:  # after a checkpoint; Slurm then sends TERM to the job
    if not (job_id := current_job_id()):
        raise SciqaError("requeue_self() works only inside a Slurm job (SLURM_JOB_ID is not set)")
    if shutil.which("scontrol") is None:
        raise SciqaError(f"scontrol not found on PATH inside job {job_id}: cannot requeue it; add the "
                         "Slurm client tools to the job (profile setup lines or container binds)")
    run(["scontrol", "requeue", job_id], "requeueing", check=True)
