"""Train an adapter (prefix: ``pkv`` or ``peft``; or ``lora``) on golden or teacher (KD) targets.

    sciqa train-prefix --variant pkv --teacher true          # KD from the newest tiny-llava train benchmark
    sciqa train-prefix --variant peft --teacher false --epochs 3
    sciqa train-lora --teacher true --teacher-run RUN_ID
    mlflow run . -e train_prefix --env-manager local -P teacher=true

Validation loss is always on golden targets of the validation split, so KD and golden runs are
compared on the same yardstick. Re-running the same parameters (or ``MLFLOW_RUN_ID``) resumes
from the newest checkpoint; SIGUSR1/SIGTERM save one and exit with code 75 (requeue).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sciqa.errors import SciqaError
from sciqa.tracking import StepRun, step_run


@dataclass
class TrainConfig:
    model: str = field(default="tiny-qwen2-vl", metadata={"help": "student: tiny model name, hub id or local folder"})
    dataset: str = field(default="sample", metadata={"help": "sample, a hub dataset id, or a local folder"})
    setting: str = field(default="QTCH", metadata={"help": "prompt setting: QTCH, QTCHL, QTCHLS or QTCHS"})
    variant: str = field(default="pkv", metadata={"help": "adapter: pkv, peft (prefix) or lora"})
    teacher: bool = field(default=False, metadata={"help": "train on teacher outputs (KD) instead of golden"})
    teacher_run: str = field(default="", metadata={"help": "benchmark run on the train split to learn from"})
    teacher_csv: str = field(default="", metadata={"help": "teacher CSV: ours, or index,input,answer,explanation"})
    teacher_model: str = field(default="tiny-llava", metadata={"help": "teacher when no run/CSV is given: newest "
                                                                        "train benchmark of it (run if missing)"})
    teacher_answer_mode: str = field(default="choice", metadata={"help": "when the teacher must be benchmarked "
                                                                         "first: free or choice (likeliest choice, "
                                                                         "then explain)"})
    epochs: int = field(default=3, metadata={"help": "training epochs"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate (AdamW, linear decay)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    batch_size: int = field(default=4, metadata={"help": "examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    prefix_len: int = field(default=50, metadata={"help": "virtual tokens of a prefix adapter"})
    prefix_projection: bool = field(default=True, metadata={"help": "MLP reparameterisation of a PEFT prefix "
                                                                    "(pkv always has one)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default="q_proj,v_proj", metadata={"help": "LoRA target modules (language model)"})
    max_length: int = field(default=1024, metadata={"help": "max tokens per example (the target is cut)"})
    seed: int = field(default=0, metadata={"help": "random seed (init, batch order)"})
    limit: int = field(default=0, metadata={"help": "first N train problems only (0 = all)"})
    val_limit: int = field(default=0, metadata={"help": "first N validation problems only (0 = all)"})
    log_every: int = field(default=10, metadata={"help": "log train_loss_step every N optimizer steps"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "LoRA only (prefix refuses it)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU), float32 or bfloat16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    workdir: str = field(default="sciqa-work", metadata={"help": "local folder for checkpoints and adapters"})
    force: bool = field(default=False, metadata={"help": "retrain even if a finished run matches"})


OPERATIONAL = ("workdir", "force", "log_every")  # how a run is done, not what it computes


def identity(cfg: TrainConfig) -> dict:
    """The parameters that define the adapter: what the cache key and resume compare."""
    ignore = set(OPERATIONAL)
    if cfg.variant == "lora":
        ignore |= {"prefix_len", "prefix_projection"}
    else:
        ignore |= {"lora_r", "lora_alpha", "lora_targets"}
    if not cfg.teacher:
        ignore |= {"teacher_run", "teacher_csv", "teacher_model", "teacher_answer_mode"}
    return {k: v for k, v in vars(cfg).items() if k not in ignore}


def adapter_options(cfg: TrainConfig) -> dict:
    if cfg.variant == "lora":
        return {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets}
    return {"prefix_len": cfg.prefix_len, "prefix_projection": cfg.prefix_projection}


def check(cfg: TrainConfig, step: str | None = None) -> None:
    """Every input error, with no side effects (no run, no download): for Slurm submission."""
    _validate(cfg, step or ("train_lora" if cfg.variant == "lora" else "train_prefix"), fetch=False)


def check_prefix(cfg: TrainConfig) -> None:
    check(cfg, "train_prefix")


def check_lora(cfg: TrainConfig) -> None:
    from dataclasses import replace

    check(replace(cfg, variant="lora"), "train_lora")


def _validate(cfg: TrainConfig, step: str, fetch: bool = True):
    """Everything a user can get wrong, before any run starts; returns what the run needs."""
    from sciqa import models, teacher as teach
    from sciqa.adapters import check_variant
    from sciqa.data import load_problems
    from sciqa.models.base import check_dtype
    from sciqa.prompts import check_setting
    from sciqa.steps.generation import check_workdir

    check_setting(cfg.setting)
    check_variant(cfg.variant)
    if (step == "train_lora") != (cfg.variant == "lora"):
        raise SciqaError(f"variant '{cfg.variant}' belongs to "
                         f"{'train-lora' if cfg.variant == 'lora' else 'train-prefix'}, not {step.replace('_', '-')}")
    check_dtype(cfg.dtype)
    for name in ("epochs", "batch_size", "grad_accum", "prefix_len", "lora_r"):
        if getattr(cfg, name) < 1:
            raise SciqaError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.gradient_checkpointing and cfg.variant != "lora":
        raise SciqaError("prefix adapters do not work with gradient checkpointing (the recompute sees the prefix "
                         "twice, peft#869); drop --gradient-checkpointing or use train-lora")
    if cfg.teacher_run and cfg.teacher_csv:
        raise SciqaError("give either --teacher-run or --teacher-csv, not both")
    if (cfg.teacher_run or cfg.teacher_csv) and not cfg.teacher:
        raise SciqaError("--teacher-run/--teacher-csv need --teacher true")
    _, fam = models.resolve(cfg.model)
    check_variant(cfg.variant, fam)
    workdir = check_workdir(cfg.workdir) if fetch else Path(cfg.workdir)
    all_train = load_problems(cfg.dataset, "train", keep_all=True)
    train = load_problems(cfg.dataset, "train", False, cfg.limit or None)
    val = load_problems(cfg.dataset, "validation", False, cfg.val_limit or None)
    if not train or not val:
        raise SciqaError(f"dataset '{cfg.dataset}' has no train or validation problems after filtering")
    source = None  # (kind, value) resolved before the run; a missing teacher benchmark runs inside it
    if cfg.teacher:
        if cfg.teacher_csv:
            source = ("csv", teach.from_csv(cfg.teacher_csv, all_train))
        elif cfg.teacher_run:
            teach.run_train_csv(cfg.teacher_run, cfg.setting)
            source = ("run", cfg.teacher_run, teach.from_run(cfg.teacher_run, cfg.setting, all_train, workdir)
                      if fetch else None)
        else:
            models.resolve(cfg.teacher_model)
            found = teach.latest_teacher_run(cfg.teacher_model)
            source = ("run", found, teach.from_run(found, cfg.setting, all_train, workdir)
                      if fetch else None) if found else ("bench",)
    if fetch and source and source[0] in ("csv", "run"):  # a teacher with no usable row: before any run
        by_id, skipped = source[-1]
        teach.finish(by_id, skipped, train, source[0])
    return workdir, all_train, train, val, source


def _targets(cfg: TrainConfig, source, all_train, train, workdir: Path, run: StepRun):
    from sciqa import teacher as teach

    if not cfg.teacher:
        return teach.golden(train)
    if source[0] == "csv":
        by_id, skipped = source[1]
        return teach.finish(by_id, skipped, train, f"csv {cfg.teacher_csv}")
    if source[0] == "bench":
        from sciqa.steps.benchmark import BenchmarkConfig, benchmark

        print(f"train: no finished train-split benchmark of teacher '{cfg.teacher_model}' in this experiment; "
              "benchmarking it now (nested run)")
        bench = benchmark(BenchmarkConfig(model=cfg.teacher_model, dataset=cfg.dataset, split="train",
                                          setting=cfg.setting, limit=cfg.limit, dtype=cfg.dtype, device=cfg.device,
                                          answer_mode=cfg.teacher_answer_mode,
                                          workdir=str(workdir)), parent_run_id=run.run_id)
        source = ("run", bench.run_id, teach.from_run(bench.run_id, cfg.setting, all_train, workdir))
    by_id, skipped = source[2]
    return teach.finish(by_id, skipped, train, f"run {source[1]}", source[1])


def _resume_point(run: StepRun, run_dir: Path) -> Path | None:
    """This run's newest checkpoint: local, else downloaded from its artifacts (another node).

    Only the run's own checkpoints count: a ``--force`` rerun of the same key starts afresh, and
    the local folder (shared by the key) is wiped when it belongs to another run."""
    import shutil

    import mlflow

    from sciqa.training import checkpoint_key, newest_checkpoint

    owner = run_dir / "run_id"
    if owner.exists() and owner.read_text().strip() != run.run_id:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "adapter", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    owner.write_text(run.run_id)
    local = newest_checkpoint(run_dir / "checkpoints")
    if local is not None:
        return local
    try:
        names = [Path(a.path).name for a in mlflow.artifacts.list_artifacts(run_id=run.run_id,
                                                                            artifact_path="checkpoints")]
    except Exception:  # noqa: BLE001 - a run without artifacts yet
        names = []
    keyed = sorted((checkpoint_key(n), n) for n in names if checkpoint_key(n))
    if not keyed:
        return None
    name = keyed[-1][1]
    dest = run_dir / "checkpoints"
    dest.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path=f"checkpoints/{name}", dst_path=str(dest))
    print(f"train: downloaded checkpoint {name} from run {run.run_id}")
    return dest / name


def train(cfg: TrainConfig, step: str = "train_prefix", parent_run_id: str | None = None, stop=None) -> StepRun:
    """Validate, then train inside one MLflow run (reused when finished, resumed when not)."""
    workdir, all_train, train_set, val_set, source = _validate(cfg, step)
    tags = {"sciqa.model": cfg.model, "sciqa.variant": cfg.variant, "sciqa.teacher": str(cfg.teacher).lower(),
            "sciqa.setting": cfg.setting}
    if source and source[0] == "run":
        tags["sciqa.teacher_run"] = source[1]
    kind = "kd" if cfg.teacher else "golden"
    name = f"{step}-{cfg.variant}-{kind}-{cfg.model.split('/')[-1]}"
    settings = {k: getattr(cfg, k) for k in OPERATIONAL if k != "force"}
    with step_run(step, identity(cfg), tags, name, cfg.force, parent_run_id, settings) as run:
        if run.reused:
            print(f"{step}: reusing finished run {run.run_id}")
            return run
        _train_in_run(cfg, step, run, workdir, all_train, train_set, val_set, source, stop)
    return run


def _train_in_run(cfg, step, run, workdir, all_train, train_set, val_set, source, stop) -> None:
    import mlflow
    import torch

    from sciqa import models
    from sciqa.adapters import attach, save_adapter
    from sciqa.collate import Example
    from sciqa.prompts import build_prompt, target_json
    from sciqa.training import LoopConfig, plot_losses, train as run_loop

    targets = _targets(cfg, source, all_train, train_set, workdir, run)
    if targets.teacher_run:
        mlflow.set_tag("sciqa.teacher_run", targets.teacher_run)
    examples = [Example(p, build_prompt(p, cfg.setting), targets.by_id[p.id]) for p in train_set
                if p.id in targets.by_id]
    val = [Example(p, build_prompt(p, cfg.setting), target_json(p.answer_text, p.solution)) for p in val_set]
    lm = models.load(cfg.model, None, cfg.dtype, cfg.device)
    torch.manual_seed(cfg.seed)  # the adapter's initial weights depend on the seed only
    adapted = attach(lm, cfg.variant, adapter_options(cfg))
    if cfg.gradient_checkpointing:
        adapted.enable_gradient_checkpointing()
    if "trainable_params" not in mlflow.get_run(run.run_id).data.params:  # not again on resume
        mlflow.log_params({"trainable_params": adapted.n_trainable(), "train_examples": len(examples),
                           "val_examples": len(val), "target_source": targets.source})
    mlflow.log_metrics({"teacher_skipped_unparsed": targets.skipped_unparsed,
                        "teacher_missing": targets.skipped_missing, "train_examples": len(examples)})
    run_dir = workdir / run.key
    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                      warmup_ratio=cfg.warmup_ratio, max_length=cfg.max_length, seed=cfg.seed,
                      log_every=cfg.log_every, bf16=lm.model.dtype == torch.bfloat16)
    history = run_loop(adapted, lm, cfg.model, examples, val, loop, run_dir,
                       log_metrics=lambda m, s: mlflow.log_metrics(m, step=s),
                       log_checkpoint=lambda p: mlflow.log_artifacts(str(p), f"checkpoints/{p.name}"),
                       resume_from=_resume_point(run, run_dir), stop=stop)
    folder = save_adapter(adapted, cfg.model, run_dir / "adapter")
    mlflow.log_artifacts(str(folder), "adapter")
    mlflow.log_artifact(str(plot_losses(history, run_dir / "plots" / "loss.png")), "plots")
    print(f"{step}: final train_loss {history[-1]['train_loss']:.4f} val_loss {history[-1]['val_loss']:.4f}")
