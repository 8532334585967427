"""The whole experiment as one parent run with nested child runs (``mlflow run .``).

    sciqa main                      # embedded default: tiny models on the bundled sample
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from sciqa.errors import SciqaError
from sciqa.prompts import check_setting
from sciqa.steps.benchmark import BenchmarkConfig, benchmark
from sciqa.tracking import step_run


@dataclass
class MainConfig:
    model: str = field(default="tiny-qwen2-vl", metadata={"help": "student model (tiny name, hub id, folder)"})
    dataset: str = field(default="sample", metadata={"help": "sample, a hub dataset id, or a local folder"})
    split: str = field(default="validation", metadata={"help": "evaluation split"})
    settings: str = field(default="QTCH,QTCHL,QTCHLS,QTCHS", metadata={"help": "comma-separated settings"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=48, metadata={"help": "generation budget per answer"})
    limit: int = field(default=0, metadata={"help": "first N problems per split (0 = all)"})
    workdir: str = field(default="sciqa-work", metadata={"help": "local folder for outputs and checkpoints"})
    force: bool = field(default=False, metadata={"help": "recompute every step"})


def settings_of(cfg: MainConfig) -> list[str]:
    settings = [check_setting(s.strip()) for s in cfg.settings.split(",") if s.strip()]
    if not settings:
        raise SciqaError("no settings given; accepted: QTCH, QTCHL, QTCHLS, QTCHS (comma-separated)")
    return settings


def main(cfg: MainConfig) -> str:
    """Benchmark the model on the split in every setting, each a nested child run."""
    settings = settings_of(cfg)
    children = [BenchmarkConfig(model=cfg.model, dataset=cfg.dataset, split=cfg.split, setting=s,
                                batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, limit=cfg.limit,
                                workdir=cfg.workdir, force=cfg.force) for s in settings]
    params = {k: v for k, v in vars(cfg).items() if k not in ("workdir", "force")}
    with step_run("main", params, {"sciqa.model": cfg.model}, "main", force=True) as parent:
        os.environ.pop("MLFLOW_RUN_ID", None)  # children must not attach to the parent (mlflow#15713)
        runs = [benchmark(c, parent_run_id=parent.run_id) for c in children]
        for s, r in zip(settings, runs):
            print(f"  {s}: run {r.run_id}")
    return parent.run_id
