"""Score a split with a base model plus a trained adapter: the outputs CSV, as ``benchmark`` writes it.

    sciqa score --adapter-run RUN_ID --split validation
    sciqa score --adapter-dir path/to/adapter --split test --setting QTCH
    mlflow run . -e score --env-manager local -P adapter_run=RUN_ID -P split=validation

The base model is the one the adapter was trained on (``--model`` may name it, and must match).
Resume, CSV and tracking are the benchmark's; the run is tagged ``sciqa.step=score`` and
``sciqa.adapter_run``, and is evaluated inside the same run before it ends (a failed evaluation
fails the run; a re-run resumes and evaluates again).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sciqa import files
from sciqa.config import check_ranges, operational, option
from sciqa.data.prompts import SETTINGS
from sciqa.errors import SciqaError
from sciqa.steps.generation import GenerationConfig
from sciqa.tracking.runs import StepRun, step_run


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

    from sciqa.adapters import CONFIG_FILE, WEIGHTS_FILE, parse_adapter_config
    from sciqa.tracking import runs as tracking

    run = tracking.get_run(run_id, "adapter run")
    names = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="adapter")}
    if not {CONFIG_FILE, WEIGHTS_FILE} <= names:
        raise SciqaError(f"run '{run_id}' has no complete adapter/ artifact (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                         "is it a finished train-prefix or train-lora run?)")
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/adapter/{CONFIG_FILE}")
    return parse_adapter_config(text, f"run {run_id}: adapter/{CONFIG_FILE}"), run.data.tags


def check(cfg: ScoreConfig):
    """Every input error, with no side effects (no run, no files): the adapter and the problems."""
    from sciqa import models
    from sciqa.adapters import check_variant, read_adapter_config
    from sciqa.backends import backend_class, check_adapter
    from sciqa.backends.base import check_answer_mode
    from sciqa.eval.metrics import check_prerequisites
    from sciqa.steps.generation import check_inputs, problem_inputs

    check_ranges(cfg)
    check_prerequisites()
    check_answer_mode(cfg.answer_mode, cfg.backend)
    if sum(map(bool, (cfg.adapter, cfg.adapter_run, cfg.adapter_dir))) != 1:
        raise SciqaError("give exactly one of --adapter models:/NAME/VERSION, --adapter-run or --adapter-dir")
    check_inputs(cfg.dtype, cfg.workdir)
    if cfg.adapter or cfg.adapter_run:
        from sciqa.tracking import runs as tracking

        tracking.connect()
        acfg, tags = _adapter_config_of_run(adapter_run_of(cfg))
    else:
        acfg, tags = read_adapter_config(cfg.adapter_dir), {}
    base = acfg["base_model"]
    if cfg.model and cfg.model != base:
        raise SciqaError(f"the adapter was trained on '{base}', not '{cfg.model}'; drop --model or pass --model {base}")
    check_variant(acfg["variant"], models.resolve(base)[1])
    check_adapter(cfg.backend, acfg["variant"])
    setting = cfg.setting or tags.get("sciqa.setting") or "QTCH"
    backend_class(cfg.backend).check(replace(cfg, model=base, setting=setting))
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    return Adapter(acfg, base, setting, tags), inputs


def adapter_run_of(cfg: ScoreConfig) -> str:
    """The training run of ``--adapter-run``, or the one behind a registered ``--adapter`` model."""
    import warnings

    with warnings.catch_warnings(record=True):  # defining its PythonModel makes MLflow print a 2-line hint
        from sciqa.adapters.mlflow_model import run_of_model

    return run_of_model(cfg.adapter) if cfg.adapter else cfg.adapter_run


def adapter_folder(cfg: ScoreConfig, workdir: Path) -> Path:
    """The adapter files: a local folder, or the training run's ``adapter/`` downloaded once
    (into a temp folder, then moved into place: a failed download leaves no half folder)."""
    from sciqa.tracking.runs import fetch_artifact

    if cfg.adapter_dir:
        return Path(cfg.adapter_dir).expanduser().resolve()
    run_id = adapter_run_of(cfg)
    dest = workdir / "adapters" / run_id / "adapter"
    if not dest.is_dir() and not fetch_artifact([run_id], "adapter", dest):
        raise SciqaError(f"run '{run_id}': its adapter/ artifact cannot be downloaded")
    return dest


def score(cfg: ScoreConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate with the adapter (resuming by id) and evaluate, in one run."""
    from sciqa.backends import backend_class
    from sciqa.steps.evaluate import evaluate_run
    from sciqa.steps.generation import check_workdir, generate_outputs, generation_identity
    from sciqa.tracking import runs as tracking

    adapter, inputs = check(cfg)
    tracking.setup()
    folder = adapter_folder(cfg, check_workdir(cfg.workdir))
    split, variant = inputs.problems[0].split, adapter.config["variant"]
    where = ("adapter", "adapter_run", "adapter_dir")  # where the adapter came from: its digest is what counts
    params = {**generation_identity(cfg, ignore=where), "model": adapter.base_model, "setting": adapter.setting,
              "split": split, "variant": variant, "data_digest": inputs.digest,
              "adapter_digest": files.folder_digest(folder)}
    tags = {"sciqa.model": adapter.base_model, "sciqa.variant": variant, "sciqa.split": split,
            "sciqa.setting": adapter.setting, "sciqa.backend": cfg.backend, "sciqa.adapter_run": adapter_run_of(cfg),
            "sciqa.teacher": adapter.run_tags.get("sciqa.teacher", "")}
    name = f"score-{variant}-{adapter.base_model.split('/')[-1]}-{split}-{adapter.setting}"
    settings = {**operational(cfg), **{k: getattr(cfg, k) for k in where}}
    with step_run("score", params, tags, name, cfg.force, parent_run_id, settings) as run:
        if run.reused:
            print(f"score: reusing finished run {run.run_id}")
            return run
        tracking.log_problems(inputs.problems, cfg.dataset, inputs.digest, "eval", adapter.setting)
        gen_cfg = replace(cfg, model=adapter.base_model, setting=adapter.setting)
        generate_outputs(run, cfg.workdir, inputs, adapter.setting,
                         lambda: backend_class(cfg.backend).from_config(gen_cfg, adapter=str(folder)), cfg.batch_size,
                         {"model": adapter.base_model, "adapter": cfg.adapter or cfg.adapter_run or str(folder)})
        evaluate_run(run.run_id, dataset=cfg.dataset)
    return run
