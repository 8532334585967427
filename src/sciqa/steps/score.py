"""Score a split with a base model plus a trained adapter: ``benchmark``'s outputs CSV and evaluation.

    sciqa score --adapter-run RUN_ID --split validation
    sciqa score --adapter-dir path/to/adapter --split test --setting QTCH
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from sciqa import files, models
from sciqa.adapters import CONFIG_FILE, WEIGHTS_FILE, check_variant, parse_adapter_config, read_adapter_config
from sciqa.backends import backend_class, check_adapter
from sciqa.config import check_ranges, option
from sciqa.data.prompts import SETTINGS
from sciqa.errors import SciqaError
from sciqa.eval.metrics import check_prerequisites
from sciqa.steps.generation import (
    GenerationConfig,
    check_inputs,
    check_workdir,
    generation_identity,
    generation_run,
    problem_inputs,
)
from sciqa.tracking import runs as tracking
from sciqa.tracking.artifacts import fetch_artifact
from sciqa.tracking.runs import StepRun


@dataclass
class ScoreConfig(GenerationConfig):
    """Generation with a trained adapter applied; the base model and setting default to the adapter's."""

    model: str = option("", "base model (default: the adapter's; must match it)")
    setting: str = option("", "prompt setting ('' = the training run's, else QTCH)", choices=("", *SETTINGS))
    adapter: str = option("", "a registered adapter: models:/NAME/VERSION or models:/NAME@ALIAS")
    adapter_run: str = option("", "or: the training run whose adapter/ to use")
    adapter_dir: str = option("", "or: a local adapter folder")


@dataclass(frozen=True)
class Adapter:
    """The adapter to score: its config, the training run's tags, and where its files are."""

    config: dict
    base_model: str
    setting: str
    run_tags: dict


def _adapter_config_of_run(run_id: str) -> tuple[dict, dict]:
    """The training run's adapter config and tags, read without writing anything."""
    import mlflow

    run = tracking.get_run(run_id, "adapter run")
    names = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="adapter")}
    if not {CONFIG_FILE, WEIGHTS_FILE} <= names:
        raise SciqaError(f"run '{run_id}' has no complete adapter/ artifact (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                         "is it a finished train-prefix or train-lora run?)")
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/adapter/{CONFIG_FILE}")
    return parse_adapter_config(text, f"run {run_id}: adapter/{CONFIG_FILE}"), run.data.tags


def check(cfg: ScoreConfig):
    """Every input error, with no side effects (no run, no files): the adapter and the problems."""
    check_ranges(cfg)
    check_prerequisites()
    if sum(map(bool, (cfg.adapter, cfg.adapter_run, cfg.adapter_dir))) != 1:
        raise SciqaError("give exactly one of --adapter models:/NAME/VERSION, --adapter-run or --adapter-dir")
    check_inputs(cfg.dtype, cfg.workdir)
    if cfg.adapter or cfg.adapter_run:
        tracking.connect()
        acfg, tags = _adapter_config_of_run(adapter_run_of(cfg))
    else:
        acfg, tags = read_adapter_config(cfg.adapter_dir), {}
    base = acfg["base_model"]
    if cfg.model and cfg.model != base:
        raise SciqaError(f"the adapter was trained on '{base}', not '{cfg.model}'; drop --model or pass --model {base}")
    check_variant(acfg["variant"])
    models.resolve(base)
    check_adapter(cfg.backend, acfg["variant"])
    setting = cfg.setting or tags.get("sciqa.setting") or "QTCH"
    backend_class(cfg.backend).check(replace(cfg, model=base, setting=setting))
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    return Adapter(acfg, base, setting, tags), inputs


def adapter_run_of(cfg: ScoreConfig) -> str:
    """The training run of ``--adapter-run``, or the one behind a registered ``--adapter`` model."""
    with warnings.catch_warnings(record=True):  # defining its PythonModel makes MLflow print a 2-line hint
        from sciqa.adapters.mlflow_model import run_of_model  # imports mlflow: not at ``sciqa --help``

    return run_of_model(cfg.adapter) if cfg.adapter else cfg.adapter_run


def adapter_folder(cfg: ScoreConfig, workdir: Path) -> Path:
    """The adapter files: a local folder, or the training run's ``adapter/`` downloaded once."""
    if cfg.adapter_dir:
        return Path(cfg.adapter_dir).expanduser().resolve()
    run_id = adapter_run_of(cfg)
    dest = workdir / "adapters" / run_id / "adapter"
    if not dest.is_dir() and not fetch_artifact([run_id], "adapter", dest):
        raise SciqaError(f"run '{run_id}': its adapter/ artifact cannot be downloaded")
    return dest


def score(cfg: ScoreConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate with the adapter (resuming by id) and evaluate, in one run."""
    adapter, inputs = check(cfg)
    tracking.setup()
    folder = adapter_folder(cfg, check_workdir(cfg.workdir))
    split, variant, base = inputs.problems[0].split, adapter.config["variant"], adapter.base_model
    where = ("adapter", "adapter_run", "adapter_dir")  # where the adapter came from: its digest is what counts
    params = {**generation_identity(cfg, ignore=where), "model": base, "setting": adapter.setting,
              "split": split, "variant": variant, "data_digest": inputs.digest,
              "adapter_digest": files.folder_digest(folder)}
    tags = {"sciqa.model": base, "sciqa.variant": variant, "sciqa.split": split,
            "sciqa.setting": adapter.setting, "sciqa.backend": cfg.backend, "sciqa.adapter_run": adapter_run_of(cfg),
            "sciqa.teacher": adapter.run_tags.get("sciqa.teacher", "")}
    name = f"score-{variant}-{base.split('/')[-1]}-{split}-{adapter.setting}"
    gen_cfg = replace(cfg, model=base, setting=adapter.setting)
    return generation_run("score", gen_cfg, inputs, (params, tags, name, {k: getattr(cfg, k) for k in where}),
                          lambda: backend_class(cfg.backend).from_config(gen_cfg, adapter=str(folder)),
                          {"model": base, "adapter": cfg.adapter or cfg.adapter_run or str(folder)}, parent_run_id)
