"""Train an adapter on golden or teacher (KD) targets: config -> data -> model -> loop -> log."""
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from sciqa import models
from sciqa.adapters import VARIANTS, AdapterOptions, attach, option_fields, save_adapter, variants_of_step
from sciqa.backends import ANSWER_MODES
from sciqa.config import DTYPE_CHOICES, as_param, check_ranges, identity, operational, option
from sciqa.data import load_problems, problems_digest
from sciqa.data.prompts import SETTINGS, build_prompt, target_json
from sciqa.errors import SciqaError
from sciqa.files import digest
from sciqa.steps.benchmark import BenchmarkConfig, benchmark
from sciqa.steps.generation import check_workdir, problem_inputs
from sciqa.tracking import runs
from sciqa.tracking.artifacts import fetch_artifact, log_problems
from sciqa.tracking.runs import StepRun, phase, step_run
from sciqa.train import teacher as teach
from sciqa.train.teacher import KD_FILTERS, Targets

GOLDEN_ON = ("all", "same")  # golden on every train problem, or on exactly the problems KD trains on


@dataclass
class TrainConfig(AdapterOptions):  # + every adapter variant's options (adapters.VARIANTS)
    model: str = option("tiny-qwen2-vl", "student: tiny model name, hub id or local folder")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    setting: str = option("QTCH", "prompt setting", choices=tuple(SETTINGS))
    variant: str = option("pkv", "the adapter variant (lora: train-lora)", choices=tuple(VARIANTS))
    teacher: bool = option(False, "train on teacher outputs (KD) instead of golden")
    teacher_run: str = option("", "a finished benchmark run on the train split to learn from")
    teacher_csv: str = option("", "teacher CSV: ours, or index,input,answer,explanation")
    teacher_model: str = option("tiny-llava", "teacher without a run/CSV: its train-split benchmark (reused or run)")
    teacher_answer_mode: str = option("choice", "the teacher benchmark's answer mode", choices=ANSWER_MODES)
    teacher_max_new_tokens: int = option(512, "the teacher benchmark's budget (rows cut at it are dropped)", min=1)
    kd_filter: str = option("all", "KD on all usable teacher rows, or only those whose answer is correct",
                            choices=KD_FILTERS)
    golden_on: str = option("all", "golden training on all train problems, or on exactly those KD trains on (same)",
                            choices=GOLDEN_ON)
    epochs: int = option(3, "training epochs", min=1)
    lr: float = option(5e-3, "peak learning rate (AdamW, linear decay)", above=0)
    warmup_ratio: float = option(0.1, "fraction of steps of linear warm-up", min=0, max=0.99)
    batch_size: int = option(4, "examples per micro-batch", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    max_length: int = option(2048, "max tokens per example: targets cut, longer prompts dropped (0 = no limit)", min=0)
    seed: int = option(0, "random seed (init, batch order)")
    limit: int = option(0, "first N train problems only (0 = all)", min=0)
    val_limit: int = option(0, "first N validation problems only (0 = all)", min=0)
    log_every: int = option(10, "log train_loss_step every N optimizer steps (0 = never)", min=0, operational=True)
    gradient_checkpointing: bool = option(False, "LoRA only (prefix refuses it)")
    dtype: str = option("auto", "auto (bf16 on GPU), float32 or bfloat16", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto, cpu or cuda[:N]")
    strict_images: bool = option(False, "refuse problems whose image file is missing", operational=True)
    register: bool = option(False, "register the adapter as sciqa-<model>-<variant>-<kd|golden>", operational=True)
    workdir: str = option("", "local folder for checkpoints and adapters; '' = $SCIQA_CACHE/work", operational=True)
    force: bool = option(False, "retrain even if a finished run matches", operational=True)


# The options only one training command takes (the other command's --help does not list them).
STEP_FIELDS = {"train_prefix": ("variant", *option_fields("train_prefix")),
               "train_lora": (*option_fields("train_lora"), "gradient_checkpointing")}
TEACHER_FIELDS = ("teacher_run", "teacher_csv", "teacher_model", "teacher_answer_mode", "teacher_max_new_tokens",
                  "kd_filter")


def step_of(cfg: TrainConfig) -> str:
    return VARIANTS[cfg.variant].step


def params_of_config(cfg: TrainConfig) -> dict:
    """The parameters that define the adapter: not the other command's options nor unused teacher options."""
    other = [f for step, fields in STEP_FIELDS.items() if step != step_of(cfg) for f in fields if f != "variant"]
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
    step = step or step_of(cfg)
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


def check_prefix(cfg: TrainConfig) -> None:
    check(cfg, "train_prefix")


def check_lora(cfg: TrainConfig) -> None:
    check(replace(cfg, variant=variants_of_step("train_lora")[0]), "train_lora")


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
    """Golden or KD targets (a teacher benchmark nests under ``parent_run_id``); ``golden_on=same``: golden on
    exactly KD's problems (equal ``train_ids_digest``)."""
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
    step = step or step_of(cfg)
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
    import mlflow

    from sciqa.adapters.mlflow_model import registered_name

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
    import mlflow
    import torch

    from sciqa.train.collate import Example, fit_to_length

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
    import mlflow
    import torch

    from sciqa.train.loop import LoopConfig
    from sciqa.train.loop import train as run_loop

    shared = {f.name: getattr(cfg, f.name) for f in fields(LoopConfig) if f.name != "bf16"}
    loop = LoopConfig(**shared, bf16=lm.model.dtype == torch.bfloat16)
    return run_loop(adapted, lm, cfg.model, examples, val, loop, run_dir,
                    log_metrics=lambda m, s: mlflow.log_metrics(m, step=s),
                    log_checkpoint=lambda p: mlflow.log_artifacts(str(p), f"checkpoints/{p.name}"),
                    resume_from=_resume_point(run, run_dir))


def _resume_point(run: StepRun, run_dir: Path) -> Path | None:
    """This run's newest checkpoint (or that of the unfinished run it continues): local, else downloaded."""
    import mlflow

    from sciqa.train.loop import checkpoint_key, newest_checkpoint

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
    import mlflow

    from sciqa.adapters.mlflow_model import log_adapter_model, registered_name
    from sciqa.steps.report import plot_losses

    have = {m.step for m in mlflow.MlflowClient().get_metric_history(run.run_id, "train_loss")}
    for h in history:
        if h["epoch"] not in have:
            mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
    folder = save_adapter(adapted, cfg.model, run_dir / "adapter")
    mlflow.log_artifacts(str(folder), "adapter")
    log_adapter_model(folder, cfg.model, cfg.variant, registered_name(cfg.model, cfg.variant, cfg.teacher)
                      if cfg.register else "")
    curves = {"train": "train_loss", "validation (golden targets)": "val_loss_golden"}
    panels = {"": {label: [(h["epoch"], h[key]) for h in history] for label, key in curves.items()}}
    mlflow.log_artifact(str(plot_losses(panels, run_dir / "plots" / "loss.png")), "plots")
