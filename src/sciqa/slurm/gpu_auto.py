"""``--slurm-gpu auto``: the GPU type whose memory holds the step, the idlest one now.

The profile gives each type its memory (``[gpus.v100] memory_gb = 32``); :mod:`sciqa.slurm.memory`
estimates the step's peak from the model's config. Types whose memory holds the estimate with
``MARGIN`` to spare (for a model the profile spreads over N GPUs: N x memory) are the candidates;
of these the one with the most idle GPUs right now (``sinfo``: GRES minus GRES in use, on nodes
that take jobs) wins, the smallest on a tie (keep big GPUs for big jobs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sciqa.errors import SciqaError

MARGIN = 0.9  # use at most 90 % of a GPU's memory: fragmentation, estimate error
_GRES = re.compile(r"(?P<name>gpu)(?::(?P<type>[^:,(]+))?:(?P<count>\d+)")
_DOWN = ("down", "drain", "fail", "maint", "inval", "unk", "futr", "power")


@dataclass(frozen=True)
class Choice:
    gpu: str
    estimate_gb: float
    candidates: dict[str, int]  # type that fits -> its idle GPUs now

    def tags(self) -> dict[str, str]:
        return {"sciqa.gpu_estimate_gb": f"{self.estimate_gb:.3f}",
                "sciqa.gpu_candidates": ",".join(f"{t}:{n}" for t, n in self.candidates.items()),
                "sciqa.slurm_gpu": self.gpu, "sciqa.slurm_gpu_choice": "auto"}


def _counts(gres: str, gpu_type: str | None) -> int:
    """GPUs of ``gpu_type`` (any type for None) in a GRES string such as ``gpu:h100:4(S:0),gpu:a100:2``."""
    total = 0
    for m in _GRES.finditer(gres):
        if gpu_type is None or m.group("type") == gpu_type:
            total += int(m.group("count"))
    return total


def idle_gpus(profile) -> dict[str, int]:
    """Idle GPUs per type of the profile, from one ``sinfo`` call (a node counted once per type)."""
    from sciqa import slurm

    res = slurm._run(["sinfo", "-h", "-N", "-O", "NodeList:300,Partition:300,Gres:500,GresUsed:500,StateCompact:60"],
                     "reading idle GPUs")
    if res.returncode != 0:
        raise SciqaError(f"sinfo failed (exit {res.returncode}): {' '.join(res.stderr.split())}")
    nodes: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        node, partition, gres, used, state = parts[:5]
        entry = nodes.setdefault(node, {"partitions": set(), "gres": gres, "used": used, "state": state})
        entry["partitions"].add(partition.rstrip("*"))
    idle = {}
    for gpu_type in profile.gpu_types:
        wanted = set(profile.gpu_partitions[gpu_type])
        typed = profile.gpu_gres[gpu_type].split(":")[1] if ":" in profile.gpu_gres[gpu_type] else None
        idle[gpu_type] = sum(max(0, _counts(n["gres"], typed) - _counts(n["used"], typed))
                             for n in nodes.values()
                             if n["partitions"] & wanted and not n["state"].lower().startswith(_DOWN))
    return idle


def choose(profile, estimate_gb: float, gpus: int = 1, idle: dict[str, int] | None = None) -> Choice:
    """The type for a job of ``estimate_gb`` on ``gpus`` GPUs, or one line naming the largest GPU."""
    sized = profile.gpu_memory_gb
    if not sized:
        raise SciqaError(f"--slurm-gpu auto needs each GPU type's memory in profile {profile.name!r} "
                         f"({profile.path}): add e.g. `memory_gb = 80` under [gpus.TYPE]")
    fits = sorted((t for t, gb in sized.items() if gb * gpus * MARGIN >= estimate_gb), key=lambda t: (sized[t], t))
    if not fits:
        largest = max(sized, key=sized.get)
        raise SciqaError(f"no GPU type fits: the step needs about {estimate_gb:.1f} GB, the largest GPU is "
                         f"{largest} with {sized[largest]:g} GB x {gpus} (at most {MARGIN:.0%} used); lower "
                         "--batch-size, use bf16, or list the model under [models] with more GPUs")
    idle = idle_gpus(profile) if idle is None else idle
    candidates = {t: idle.get(t, 0) for t in fits}
    best = max(fits, key=lambda t: (candidates[t], -sized[t]))  # most idle, then the smallest
    return Choice(best, estimate_gb, candidates)


def _model(step: str, cfg) -> str:
    """The base model a step loads (a score's comes from its adapter when --model is not given)."""
    if step == "score" and not cfg.model:
        from sciqa.steps.score import check

        return check(cfg)[0].base_model
    return cfg.model


def place(step: str, cfg, profile, gpu: str, idle: dict[str, int] | None = None,
          label: str = "") -> tuple[str, int, dict[str, str]]:
    """(GPU type, GPUs, tags) for a step's job: ``gpu`` as given, or ``auto``: estimated, printed, chosen."""
    import dataclasses

    from sciqa.slurm import memory

    if gpu == "auto" and step == "main":
        raise SciqaError("--slurm-gpu auto estimates one step's memory; for main give a GPU type")
    model = _model(step, cfg)
    count = profile.gpus_for(model)
    if gpu != "auto":
        profile.gpu(gpu, count)  # unknown type / too many GPUs: the accepted values
        return gpu, count, {"sciqa.slurm_gpu": gpu}
    est = memory.estimate(step, dataclasses.replace(cfg, model=model), "cuda")
    choice = choose(profile, est.total_gb, count, idle)
    print(f"sciqa: {label or step}: estimated peak {est.describe()}; fits "
          f"{', '.join(f'{t} ({n} idle)' for t, n in choice.candidates.items())}; chose {choice.gpu}")
    return choice.gpu, count, choice.tags()
