"""Train an adapter on golden or teacher (KD) targets: config -> data -> model -> loop -> log."""
import sys
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path

import mlflow
import torch

from sciqa import models
from sciqa.adapters import VARIANTS, attach, variants_of_step
from sciqa.config import as_param, check_ranges, identity, operational
from sciqa.data import load_problems, problems_digest
from sciqa.data.prompts import build_prompt, target_json
from sciqa.errors import SciqaError
from sciqa.files import digest
from sciqa.steps import STEP_FIELDS, TEACHER_FIELDS, TrainConfig
from sciqa.steps.benchmark import BenchmarkConfig, benchmark, check_workdir, problem_inputs
from sciqa.steps.report import plot_losses
from sciqa.tracking import runs
from sciqa.tracking.artifacts import fetch_artifact, log_problems
from sciqa.tracking.runs import StepRun, phase, step_run
from sciqa.train import teacher as teach
from sciqa.train.collate import Example, fit_to_length
from sciqa.train.loop import LoopConfig, checkpoint_key, newest_checkpoint
from sciqa.train.loop import train as run_loop
from sciqa.train.teacher import Targets


def params_of_config(cfg: TrainConfig) -> dict:
    """The parameters that define the adapter: not the other command's options nor unused teacher options."""
    other = [f for step, names in STEP_FIELDS.items() if step != VARIANTS[cfg.variant].step for f in names
             if f != "variant"]
    unused = TEACHER_FIELDS if not cfg.teacher and cfg.golden_on == "all" else ()
    return identity(cfg, ignore=(*other, *unused))


@dataclass
class TrainInputs:
    workdir: Path
    train: list
    val: list
    all_train: list
    teacher_rows: list | None  # from a CSV or a finished run; None: benchmark the teacher first
    data_digest: str
    images_missing: int


def check(cfg: TrainConfig, step: str | None = None) -> TrainInputs:
    """Every input error before any run starts (reads, never writes): also the Slurm submit check."""
    step = step or VARIANTS[cfg.variant].step
    if cfg.variant not in variants_of_step(step):  # the registry says which command trains which variant
        where = f" ({cfg.variant}: {VARIANTS[cfg.variant].step.replace('_', '-')})" if cfg.variant in VARIANTS else ""
        raise SciqaError(f"unknown {step.removeprefix('train_')} variant '{cfg.variant}'; accepted: "
                         f"{', '.join(variants_of_step(step))}{where}")
    check_ranges(cfg)
    if cfg.gradient_checkpointing and step == "train_prefix":
        raise SciqaError("prefix adapters do not work with gradient checkpointing (the recompute sees the prefix "
                         "twice, peft#869); drop --gradient-checkpointing or use train-lora")
    if cfg.teacher_run and cfg.teacher_csv:
        raise SciqaError("give either --teacher-run or --teacher-csv, not both")
    if (cfg.teacher_run or cfg.teacher_csv) and not (cfg.teacher or cfg.golden_on == "same"):
        raise SciqaError("--teacher-run/--teacher-csv need --teacher true (or --golden-on same)")
    workdir = check_workdir(cfg.workdir)
    models.resolve(cfg.model)
    train = problem_inputs(cfg.dataset, "train", False, cfg.limit, cfg.strict_images)
    val = problem_inputs(cfg.dataset, "validation", False, cfg.val_limit, cfg.strict_images)
    all_train = load_problems(cfg.dataset, "train", keep_all=True)
    rows = None
    if cfg.teacher or cfg.golden_on == "same":
        if cfg.teacher_csv:
            rows = teach.from_csv(cfg.teacher_csv, all_train)
            teach.kd_targets(rows, train.problems, cfg.kd_filter, f"csv {cfg.teacher_csv}")  # any usable row?
        elif cfg.teacher_run:
            runs.connect()
            teach.run_train_csv(cfg.teacher_run, cfg.setting)  # finished, with train outputs: else one line
        else:
            models.resolve(cfg.teacher_model)
    return TrainInputs(workdir, train.problems, val.problems, all_train, rows, digest(train.digest, val.digest),
                       train.images_missing + val.images_missing)


check_prefix = partial(check, step="train_prefix")


def check_lora(cfg: TrainConfig) -> TrainInputs:
    return check(replace(cfg, variant=variants_of_step("train_lora")[0]), "train_lora")


def teacher_benchmark_config(cfg: TrainConfig) -> BenchmarkConfig:
    """The train-split benchmark KD learns from without a run/CSV: one config for ``main`` and a standalone KD."""
    same = ("dataset", "setting", "limit", "dtype", "device", "workdir", "strict_images")
    return BenchmarkConfig(model=cfg.teacher_model, split="train", answer_mode=cfg.teacher_answer_mode,
                           max_new_tokens=cfg.teacher_max_new_tokens, **{k: getattr(cfg, k) for k in same})


def _teacher_rows(cfg: TrainConfig, inputs: TrainInputs, parent_run_id: str | None) -> tuple[list, str, str]:
    """(rows, source, run id): a CSV's rows, a finished run's, or the teacher benchmark's (run or reused)."""
    if cfg.teacher_csv:
        return inputs.teacher_rows, f"csv {cfg.teacher_csv}", ""
    run_id = cfg.teacher_run
    if not run_id:
        print(f"train: the teacher is the train-split benchmark of '{cfg.teacher_model}' (reused when it exists)")
        run_id = benchmark(teacher_benchmark_config(cfg), parent_run_id=parent_run_id).run_id
    return teach.from_run(run_id, cfg.setting, inputs.all_train, inputs.workdir), f"run {run_id}", run_id


def targets_of(cfg: TrainConfig, inputs: TrainInputs, parent_run_id: str | None = None) -> Targets:
    """Golden or KD targets (a teacher benchmark nests under ``parent_run_id``); or golden on KD's problems."""
    if not cfg.teacher and cfg.golden_on == "all":
        return teach.golden(inputs.train)
    rows, source, run_id = _teacher_rows(cfg, inputs, parent_run_id)
    kd = teach.kd_targets(rows, inputs.train, cfg.kd_filter, source, run_id)
    if kd.warning:
        print(kd.warning, file=sys.stderr, flush=True)
    kd.counts["duplicate_ids"] = rows.duplicate_ids  # rows of an id given twice: the last was used
    if cfg.teacher:
        return kd
    same = [p for p in inputs.train if p.id in kd.by_id]
    return replace(teach.golden(same), source=f"golden on KD's problems ({source}, kd_filter={cfg.kd_filter})",
                   teacher_run=run_id, counts=kd.counts)


def train(cfg: TrainConfig, step: str | None = None, parent_run_id: str | None = None,
          attach: str | None = None) -> StepRun:
    """Config, data, model, loop, log: inside one MLflow run (reused when finished, resumed when not)."""
    step = step or VARIANTS[cfg.variant].step
    inputs = check(cfg, step)
    runs.setup()
    targets = targets_of(cfg, inputs, attach or parent_run_id)
    params = {**params_of_config(cfg), "data_digest": inputs.data_digest, "targets_digest": targets.digest,
              "model_digest": models.fingerprint(cfg.model)}
    tags = {"sciqa.model": cfg.model, "sciqa.variant": cfg.variant, "sciqa.teacher": as_param(cfg.teacher),
            "sciqa.setting": cfg.setting, "sciqa.split": "train"}
    if targets.teacher_run:
        tags["sciqa.teacher_run"] = targets.teacher_run
    name = f"{step}-{cfg.variant}-{'kd' if cfg.teacher else 'golden'}-{cfg.model.split('/')[-1]}"
    with step_run(step, params, tags, name, cfg.force, parent_run_id, operational(cfg), attach=attach) as run:
        if run.reused:
            print(f"{step}: reusing finished run {run.run_id}")
            if cfg.register:
                _register_reused(run.run_id, cfg)
            return run
        run_dir = run.state_dir(inputs.workdir)
        with phase("load"):
            _log_inputs(cfg, inputs, targets)
            lm, adapted, examples, val = _model(cfg, run, inputs, targets)
        with phase("train"):
            history = _loop(cfg, run, run_dir, lm, adapted, examples, val)
        with phase("log"):
            _log_adapter(cfg, run, adapted, history, run_dir)
        print(f"{step}: final train_loss {history[-1]['train_loss']:.4f} "
              f"val_loss_golden {history[-1]['val_loss_golden']:.4f}")
    return run


def _register_reused(run_id: str, cfg: TrainConfig) -> None:
    """``--register true`` on a reused run: register the adapter model it logged, once."""
    from sciqa.adapters.mlflow_model import registered_name  # lazy: defining its PythonModel prints an MLflow hint

    name = registered_name(cfg.model, cfg.variant, cfg.teacher)
    if mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    if logged:
        version = mlflow.register_model(f"models:/{logged[0].model_id}", name)
        print(f"train: registered {name} version {version.version} (run {run_id})")


def _log_inputs(cfg: TrainConfig, inputs: TrainInputs, targets: Targets) -> None:
    """The problems trained on, validated on and (KD) the teacher rows, as the run's dataset inputs."""
    used = [p for p in inputs.train if p.id in targets.by_id]
    log_problems(used, cfg.dataset, problems_digest(used), "train", cfg.setting)
    log_problems(inputs.val, cfg.dataset, problems_digest(inputs.val), "validation", cfg.setting)
    if targets.teacher_run or cfg.teacher_csv:
        where = str((inputs.workdir / "teacher" / targets.teacher_run) if targets.teacher_run  # its downloaded CSV
                    else Path(cfg.teacher_csv).expanduser().resolve())
        log_problems(used, "teacher", targets.digest, "teacher", cfg.setting, source=where)


def _model(cfg: TrainConfig, run: StepRun, inputs: TrainInputs, targets: Targets):
    """The model with a fresh adapter (its weights depend on the seed only), and the examples that fit."""
    examples = [Example(p, build_prompt(p, cfg.setting), targets.by_id[p.id])
                for p in inputs.train if p.id in targets.by_id]
    val = [Example(p, build_prompt(p, cfg.setting), target_json(p.answer_text, p.solution)) for p in inputs.val]
    lm = models.load(cfg.model, None, cfg.dtype, cfg.device)
    examples, fit = fit_to_length(lm, examples, cfg.max_length, "train")
    val, val_fit = fit_to_length(lm, val, cfg.max_length, "validation")
    torch.manual_seed(cfg.seed)
    adapted = attach(lm, cfg.variant, cfg)
    if cfg.gradient_checkpointing:
        adapted.enable_gradient_checkpointing()
    if "trainable_params" not in mlflow.get_run(run.run_id).data.params:  # not again on resume
        mlflow.log_params({"trainable_params": adapted.n_trainable(), "train_examples": len(examples),
                           "val_examples": len(val), "target_source": targets.source,
                           "train_ids_digest": targets.ids_digest})
    mlflow.log_metrics({**targets.counts, "train_examples": len(examples), "images_missing": inputs.images_missing,
                        **fit, **{f"val_{k}": v for k, v in val_fit.items()}})
    return lm, adapted, examples, val


def _loop(cfg: TrainConfig, run: StepRun, run_dir: Path, lm, adapted, examples: list, val: list) -> list[dict]:
    """The training loop, resumed from the newest checkpoint; metrics and checkpoints logged as it goes."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(LoopConfig) if f.name != "bf16"}
    loop = LoopConfig(**shared, bf16=lm.model.dtype == torch.bfloat16)
    return run_loop(adapted, lm, cfg.model, examples, val, loop, run_dir,
                    log_metrics=lambda m, s: mlflow.log_metrics(m, step=s),
                    log_checkpoint=lambda p: mlflow.log_artifacts(str(p), f"checkpoints/{p.name}"),
                    resume_from=_resume_point(run, run_dir))


def _resume_point(run: StepRun, run_dir: Path) -> Path | None:
    """This run's newest checkpoint (or that of the unfinished run it continues): local, else downloaded."""
    if local := newest_checkpoint(run_dir / "checkpoints"):
        return local
    for run_id in run.seeds:
        try:
            names = [Path(a.path).name for a in mlflow.artifacts.list_artifacts(run_id=run_id,
                                                                                artifact_path="checkpoints")]
        except Exception:  # noqa: BLE001 - a run without artifacts yet
            names = []
        newest = max((n for n in names if checkpoint_key(n)), key=checkpoint_key, default=None)
        if newest and fetch_artifact([run_id], f"checkpoints/{newest}", run_dir / "checkpoints" / newest):
            print(f"train: downloaded checkpoint {newest} from run {run_id}")
            return run_dir / "checkpoints" / newest
    return None


def _log_adapter(cfg: TrainConfig, run: StepRun, adapted, history: list[dict], run_dir: Path) -> None:
    """The adapter (files, MLflow model), the loss plot, and epochs run before a resume (so the curve is whole)."""
    from sciqa.adapters.mlflow_model import log_adapter_model, registered_name

    have = {m.step for m in mlflow.MlflowClient().get_metric_history(run.run_id, "train_loss")}
    for h in history:
        if h["epoch"] not in have:
            mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
    folder = adapted.save(run_dir / "adapter", cfg.model)
    mlflow.log_artifacts(str(folder), "adapter")
    log_adapter_model(folder, cfg.model, cfg.variant, registered_name(cfg.model, cfg.variant, cfg.teacher)
                      if cfg.register else "")
    curves = {"train": "train_loss", "validation (golden targets)": "val_loss_golden"}
    panels = {"": {label: [(h["epoch"], h[key]) for h in history] for label, key in curves.items()}}
    mlflow.log_artifact(str(plot_losses(panels, run_dir / "plots" / "loss.png")), "plots")
