"""Score a split with a base model plus a trained adapter: ``benchmark``'s outputs CSV and evaluation."""
import warnings
from dataclasses import replace
from pathlib import Path

import mlflow

from sciqa import files, models
from sciqa.adapters import CONFIG_FILE, WEIGHTS_FILE, check_variant, parse_adapter_config, read_adapter_config
from sciqa.backends import backend_class, check_adapter
from sciqa.config import check_ranges
from sciqa.errors import SciqaError
from sciqa.eval.metrics import check_prerequisites
from sciqa.steps import ScoreConfig
from sciqa.steps import benchmark as bench
from sciqa.tracking import runs as tracking
from sciqa.tracking.artifacts import fetch_artifact
from sciqa.tracking.runs import StepRun


def _adapter_config_of_run(run_id: str) -> tuple[dict, dict]:
    """The training run's adapter config and tags, read without writing anything."""
    run = tracking.get_run(run_id, "adapter run")
    names = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="adapter")}
    if not {CONFIG_FILE, WEIGHTS_FILE} <= names:
        raise SciqaError(f"run '{run_id}' has no complete adapter/ artifact (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                         "is it a finished train-prefix or train-lora run?)")
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/adapter/{CONFIG_FILE}")
    return parse_adapter_config(text, f"run {run_id}: adapter/{CONFIG_FILE}"), run.data.tags


def check(cfg: ScoreConfig) -> tuple[ScoreConfig, str, dict, bench.Inputs]:
    """Every input error, with no side effects: (cfg on the adapter's model and setting, variant, tags, problems)."""
    check_ranges(cfg)
    check_prerequisites()
    if sum(map(bool, (cfg.adapter, cfg.adapter_run, cfg.adapter_dir))) != 1:
        raise SciqaError("give exactly one of --adapter models:/NAME/VERSION, --adapter-run or --adapter-dir")
    bench.check_workdir(cfg.workdir)
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
    gen_cfg = replace(cfg, model=base, setting=cfg.setting or tags.get("sciqa.setting") or "QTCH")
    backend_class(cfg.backend).check(gen_cfg)
    inputs = bench.problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    return gen_cfg, acfg["variant"], tags, inputs


def adapter_run_of(cfg: ScoreConfig) -> str:
    """The training run of ``--adapter-run``, or the one behind a registered ``--adapter`` model."""
    with warnings.catch_warnings(record=True):  # defining its PythonModel makes MLflow print a 2-line hint
        from sciqa.adapters.mlflow_model import run_of_model

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


def score(cfg: ScoreConfig, parent_run_id: str | None = None, attach: str | None = None) -> StepRun:
    """Validate everything, then generate with the adapter (resuming by id) and evaluate, in one run."""
    gen_cfg, variant, run_tags, inputs = check(cfg)
    tracking.setup()
    folder = adapter_folder(cfg, bench.check_workdir(cfg.workdir))
    where = ("adapter", "adapter_run", "adapter_dir")  # where the adapter came from: its digest is what counts
    params = {**bench.generation_identity(gen_cfg, ignore=where), "variant": variant,
              "adapter_digest": files.folder_digest(folder)}
    tags = {"sciqa.variant": variant, "sciqa.adapter_run": adapter_run_of(cfg),
            "sciqa.teacher": run_tags.get("sciqa.teacher", "")}
    run_info = (params, tags, f"score-{variant}-", {k: getattr(cfg, k) for k in where})
    return bench.generation_run("score", gen_cfg, inputs, run_info, parent_run_id, attach, str(folder),
                                cfg.adapter or cfg.adapter_run or str(folder))
