"""Score a split with a base model plus a trained adapter: the outputs CSV, as ``benchmark`` writes it.

    sciqa score --adapter-run RUN_ID --split validation
    sciqa score --adapter-dir sciqa-work/<key>/adapter --split test --setting QTCH
    mlflow run . -e score --env-manager local -P adapter_run=RUN_ID -P split=validation

The base model is the one the adapter was trained on (``--model`` may name it, and must match).
Resume, CSV and tracking are the benchmark's; the run is tagged ``sciqa.step=score`` and
``sciqa.adapter_run``, and is evaluated inside the same run before it ends (a failed evaluation
fails the run; a re-run resumes and evaluates again).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from sciqa.backends.base import ANSWER_MODES, CHOICE_SCORES
from sciqa.config import DTYPE_CHOICES, check_ranges, identity, operational, option
from sciqa.errors import SciqaError
from sciqa.prompts import SETTINGS
from sciqa.tracking import StepRun, step_run


@dataclass
class ScoreConfig:
    adapter_run: str = option("", "training run whose adapter/ to use")
    adapter_dir: str = option("", "or: a local adapter folder")
    model: str = option("", "base model (default: the adapter's; must match it)")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    split: str = option("validation", "train, validation (val) or test")
    setting: str = option("", "prompt setting ('' = the training run's, else QTCH)", choices=("", *SETTINGS))
    batch_size: int = option(8, "prompts per generate() call", min=1, operational=True)
    max_new_tokens: int = option(256, "generation budget per answer", min=1)
    answer_mode: str = option("free", "free (the study's) or choice: pick the likeliest choice, then explain",
                              choices=ANSWER_MODES)
    choice_score: str = option("sum", "choice mode: a choice's summed log-probability, or its per-token mean "
                                      "(length-normalised)", choices=CHOICE_SCORES)
    limit: int = option(0, "first N problems only (0 = all)", min=0)
    keep_all: bool = option(False, "keep problems without lecture or solution")
    strict_images: bool = option(False, "refuse problems whose image file is missing", operational=True)
    dtype: str = option("auto", "weights dtype (auto: bf16 on CUDA, else float32)", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto (CUDA when present), cpu or cuda[:N]")
    workdir: str = option("sciqa-work", "local folder for outputs (resume state)", operational=True)
    force: bool = option(False, "recompute even if a finished run matches", operational=True)


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

    from sciqa import tracking
    from sciqa.adapters import CONFIG_FILE, WEIGHTS_FILE, parse_adapter_config

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
    from sciqa.metrics import check_prerequisites
    from sciqa.steps.generation import check_inputs, problem_inputs

    check_ranges(cfg)
    check_prerequisites()
    if bool(cfg.adapter_run) == bool(cfg.adapter_dir):
        raise SciqaError("give exactly one of --adapter-run or --adapter-dir")
    check_inputs(cfg.dtype, cfg.workdir)
    if cfg.adapter_run:
        from sciqa import tracking

        tracking.connect()
        acfg, tags = _adapter_config_of_run(cfg.adapter_run)
    else:
        acfg, tags = read_adapter_config(cfg.adapter_dir), {}
    base = acfg["base_model"]
    if cfg.model and cfg.model != base:
        raise SciqaError(f"the adapter was trained on '{base}', not '{cfg.model}'; drop --model or pass --model {base}")
    check_variant(acfg["variant"], models.resolve(base)[1])
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    return Adapter(acfg, base, cfg.setting or tags.get("sciqa.setting") or "QTCH", tags), inputs


def adapter_folder(cfg: ScoreConfig, workdir: Path) -> Path:
    """The adapter files: a local folder, or the training run's ``adapter/`` downloaded once
    (into a temp folder, then moved into place: a failed download leaves no half folder)."""
    from sciqa.tracking import fetch_artifact

    if cfg.adapter_dir:
        return Path(cfg.adapter_dir).expanduser().resolve()
    dest = workdir / "adapters" / cfg.adapter_run / "adapter"
    if not dest.is_dir() and not fetch_artifact([cfg.adapter_run], "adapter", dest):
        raise SciqaError(f"run '{cfg.adapter_run}': its adapter/ artifact cannot be downloaded")
    return dest


def score(cfg: ScoreConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate with the adapter (resuming by id) and evaluate, in one run."""
    from sciqa import tracking
    from sciqa.backends.hf import HFBackend
    from sciqa.steps.evaluate import evaluate_run
    from sciqa.steps.generation import check_workdir, generate_outputs

    adapter, inputs = check(cfg)
    tracking.setup()
    folder = adapter_folder(cfg, check_workdir(cfg.workdir))
    split, variant = inputs.problems[0].split, adapter.config["variant"]
    params = {**identity(cfg, ignore=("adapter_dir", *(("choice_score",) if cfg.answer_mode == "free" else ()))), "model": adapter.base_model, "setting": adapter.setting,
              "split": split, "variant": variant, "data_digest": inputs.digest,
              "adapter_digest": tracking.folder_digest(folder)}
    tags = {"sciqa.model": adapter.base_model, "sciqa.variant": variant, "sciqa.split": split,
            "sciqa.setting": adapter.setting, "sciqa.backend": "hf", "sciqa.adapter_run": cfg.adapter_run,
            "sciqa.teacher": adapter.run_tags.get("sciqa.teacher", "")}
    name = f"score-{variant}-{adapter.base_model.split('/')[-1]}-{split}-{adapter.setting}"
    settings = {**operational(cfg), "adapter_dir": cfg.adapter_dir}
    with step_run("score", params, tags, name, cfg.force, parent_run_id, settings) as run:
        if run.reused:
            print(f"score: reusing finished run {run.run_id}")
            return run
        gen_cfg = SimpleNamespace(model=adapter.base_model, revision="", dtype=cfg.dtype, device=cfg.device,
                                  max_new_tokens=cfg.max_new_tokens, answer_mode=cfg.answer_mode,
                                  choice_score=cfg.choice_score)
        generate_outputs(run, cfg.workdir, inputs, adapter.setting,
                         lambda: HFBackend.from_config(gen_cfg, adapter=str(folder)), cfg.batch_size,
                         {"model": adapter.base_model, "adapter": cfg.adapter_run or str(folder)})
        evaluate_run(run.run_id, dataset=cfg.dataset)
    return run
