"""Score a split with a base model plus a trained adapter: the outputs CSV, as ``benchmark`` writes it.

    sciqa score --adapter-run RUN_ID --split validation
    sciqa score --adapter-dir sciqa-work/<key>/adapter --split test --setting QTCH
    mlflow run . -e score --env-manager local -P adapter_run=RUN_ID -P split=validation

The base model is the one the adapter was trained on (``--model`` may name it, and must match).
Resume, CSV and tracking are the benchmark's; the run is tagged ``sciqa.step=score`` and
``sciqa.adapter_run``, and is evaluated afterwards when the evaluate step is installed.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from sciqa.backends.base import check_answer_mode
from sciqa.errors import SciqaError
from sciqa.tracking import StepRun, step_run


@dataclass
class ScoreConfig:
    adapter_run: str = field(default="", metadata={"help": "training run whose adapter/ to use"})
    adapter_dir: str = field(default="", metadata={"help": "or: a local adapter folder"})
    model: str = field(default="", metadata={"help": "base model (default: the adapter's; must match it)"})
    dataset: str = field(default="sample", metadata={"help": "sample, a hub dataset id, or a local folder"})
    split: str = field(default="validation", metadata={"help": "train, validation (val) or test"})
    setting: str = field(default="", metadata={"help": "prompt setting (default: the training run's, else QTCH)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget per answer"})
    answer_mode: str = field(default="free", metadata={"help": "free (the study's) or choice: pick the likeliest "
                                                               "choice, then explain"})
    limit: int = field(default=0, metadata={"help": "first N problems only (0 = all)"})
    keep_all: bool = field(default=False, metadata={"help": "keep problems without lecture or solution"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA + bf16 when present), cpu or cuda"})
    workdir: str = field(default="sciqa-work", metadata={"help": "local folder for outputs (resume state)"})
    force: bool = field(default=False, metadata={"help": "recompute even if a finished run matches"})


OPERATIONAL = ("workdir", "force", "batch_size")  # as benchmark: how outputs are made, not which


def identity(cfg: ScoreConfig) -> dict:
    return {k: v for k, v in vars(cfg).items() if k not in OPERATIONAL}


def fetch_adapter(run_id: str, workdir: Path) -> tuple[Path, dict]:
    """The training run's ``adapter/`` folder (downloaded once) and the run's tags."""
    import mlflow

    try:
        run = mlflow.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown ids come as several exception types
        raise SciqaError(f"adapter run '{run_id}' cannot be read ({type(exc).__name__}); pass a training run id") from None
    dest = workdir / "adapters" / run_id
    if not (dest / "adapter" / "adapter_config.json").exists():
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(dest))
        except Exception:  # noqa: BLE001
            raise SciqaError(f"run '{run_id}' has no adapter/ artifact (is it a finished train-prefix or "
                             "train-lora run?)") from None
    return dest / "adapter", run.data.tags


def _check_options(cfg: ScoreConfig) -> None:
    """The checks that need no adapter: shared by ``check`` (Slurm submission) and ``score``."""
    from sciqa.models.base import check_dtype

    if bool(cfg.adapter_run) == bool(cfg.adapter_dir):
        raise SciqaError("give exactly one of --adapter-run or --adapter-dir")
    check_dtype(cfg.dtype)
    check_answer_mode(cfg.answer_mode)


def _check_adapter(acfg: dict, model: str) -> str:
    """The adapter fits the requested base model and that model's family; returns the base model."""
    from sciqa import models
    from sciqa.adapters import check_variant

    base = acfg["base_model"]
    if model and model != base:
        raise SciqaError(f"the adapter was trained on '{base}', not '{model}'; drop --model or pass --model {base}")
    check_variant(acfg["variant"], models.resolve(base)[1])
    return base


def _problems(cfg: ScoreConfig):
    from sciqa.data import load_problems

    problems = load_problems(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit or None)
    if not problems:
        raise SciqaError(f"no problems in split '{cfg.split}' of '{cfg.dataset}' after filtering")
    return problems


def check(cfg: ScoreConfig) -> None:
    """Every input error, with no side effects (no run, no files): for Slurm submission."""
    import json

    import mlflow

    from sciqa.adapters import read_adapter_config
    from sciqa.prompts import check_setting

    _check_options(cfg)
    if cfg.adapter_run:
        try:
            acfg = json.loads(mlflow.artifacts.load_text(f"runs:/{cfg.adapter_run}/adapter/adapter_config.json"))
        except Exception:  # noqa: BLE001
            raise SciqaError(f"run '{cfg.adapter_run}' has no adapter/ artifact (is it a finished train-prefix "
                             "or train-lora run?)") from None
    else:
        acfg = read_adapter_config(cfg.adapter_dir)
    _check_adapter(acfg, cfg.model)
    if cfg.setting:
        check_setting(cfg.setting)
    _problems(cfg)


def score(cfg: ScoreConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate with the adapter (resuming by id) inside one MLflow run."""
    from sciqa.adapters import read_adapter_config
    from sciqa.backends.hf import HFBackend
    from sciqa.prompts import check_setting
    from sciqa.steps.generation import check_workdir, generate_outputs

    _check_options(cfg)
    workdir = check_workdir(cfg.workdir)
    tags_of_run: dict = {}
    if cfg.adapter_run:
        folder, tags_of_run = fetch_adapter(cfg.adapter_run, workdir)
    else:
        folder = Path(cfg.adapter_dir).expanduser().resolve()
    acfg = read_adapter_config(folder)
    base = _check_adapter(acfg, cfg.model)
    setting = check_setting(cfg.setting or tags_of_run.get("sciqa.setting") or "QTCH")
    problems = _problems(cfg)
    gen_cfg = SimpleNamespace(model=base, revision="", dtype=cfg.dtype, device=cfg.device,
                              max_new_tokens=cfg.max_new_tokens, answer_mode=cfg.answer_mode)
    adapter_ref = cfg.adapter_run or str(folder)
    params = {**identity(cfg), "model": base, "setting": setting}
    tags = {"sciqa.model": base, "sciqa.variant": acfg["variant"], "sciqa.split": problems[0].split,
            "sciqa.setting": setting, "sciqa.backend": "hf", "sciqa.adapter_run": cfg.adapter_run,
            "sciqa.teacher": tags_of_run.get("sciqa.teacher", "")}
    name = f"score-{acfg['variant']}-{base.split('/')[-1]}-{problems[0].split}-{setting}"
    settings = {k: getattr(cfg, k) for k in OPERATIONAL if k != "force"}
    with step_run("score", params, tags, name, cfg.force, parent_run_id, settings) as run:
        if run.reused:
            print(f"score: reusing finished run {run.run_id}")
            return run
        generate_outputs(run, workdir, problems, setting, lambda: HFBackend.from_config(gen_cfg, adapter=str(folder)),
                         cfg.batch_size, {"model": base, "adapter": adapter_ref})
    if importlib.util.find_spec("sciqa.steps.evaluate") is not None:
        from sciqa.steps.evaluate import evaluate_run

        evaluate_run(run.run_id)
    return run
