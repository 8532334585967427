"""The whole KD experiment as one parent run with nested child runs: does KD beat golden training?

    mlflow run . --env-manager local                 # embedded default: tiny models, bundled sample
    sciqa main --variants pkv,peft,lora --epochs 3
    sciqa main --teacher-run RUN_ID --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA

1. teacher outputs: benchmark the teacher on train (or reuse --teacher-run / --teacher-csv);
2. train a golden and a KD adapter per variant; 3. benchmark the base model and score every adapter
on the evaluation split; 4. evaluate them; 5. compare (table + plots on the parent run).
Each child is cached by its parameters, upstream run ids and code version (``sciqa.tracking``):
a re-run redoes only what changed; ``--force`` recomputes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from sciqa.errors import SciqaError
from sciqa.tracking import step_run

VARIANT_STEPS = {"pkv": "train_prefix", "peft": "train_prefix", "lora": "train_lora"}


@dataclass
class MainConfig:
    model: str = field(default="tiny-qwen2-vl", metadata={"help": "student model (tiny name, hub id, folder)"})
    teacher_model: str = field(default="tiny-llava", metadata={"help": "teacher benchmarked on train for KD"})
    teacher_run: str = field(default="", metadata={"help": "use this benchmark run on train as the teacher"})
    teacher_csv: str = field(default="", metadata={"help": "or a teacher CSV (ours, or index,input,answer,explanation)"})
    teacher_answer_mode: str = field(default="choice", metadata={"help": "teacher benchmark: choice (likeliest "
                                     "choice, then explain; tiny teachers need it) or free"})
    dataset: str = field(default="sample", metadata={"help": "sample, a hub dataset id, or a local folder"})
    setting: str = field(default="QTCH", metadata={"help": "prompt setting for teacher, training and scoring"})
    eval_split: str = field(default="validation", metadata={"help": "split the adapters are scored on"})
    variants: str = field(default="pkv,peft", metadata={"help": "comma-separated: pkv, peft, lora"})
    epochs: int = field(default=3, metadata={"help": "training epochs per adapter"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate"})
    train_batch_size: int = field(default=8, metadata={"help": "training micro-batch"})
    prefix_len: int = field(default=50, metadata={"help": "virtual tokens of prefix adapters"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=48, metadata={"help": "generation budget per answer"})
    answer_mode: str = field(default="choice", metadata={"help": "base and adapters on eval_split: choice "
                             "(likeliest choice, then explain; tiny models need it) or free (the study's)"})
    limit: int = field(default=0, metadata={"help": "first N train problems (0 = all)"})
    eval_limit: int = field(default=0, metadata={"help": "first N evaluation problems (0 = all)"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    workdir: str = field(default="sciqa-work", metadata={"help": "local folder for outputs and checkpoints"})
    force: bool = field(default=False, metadata={"help": "recompute every step"})


def variants_of(cfg: MainConfig) -> list[str]:
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANT_STEPS]
    if bad or not names:
        raise SciqaError(f"unknown variant(s) {', '.join(bad) or '(none)'}; accepted: {', '.join(VARIANT_STEPS)}")
    return names


def _child(parent_id: str, name: str, fn, *args):
    """Run one step; a failure tags the parent with the step's name before it propagates."""
    import mlflow

    try:
        return fn(*args, parent_run_id=parent_id)
    except BaseException:
        mlflow.MlflowClient().set_tag(parent_id, "sciqa.failed_step", name)
        raise


def train_configs(cfg: MainConfig, teacher_run: str) -> dict:
    """(variant, kd) -> the training config of that adapter; KD learns from ``teacher_run``/the CSV."""
    from sciqa.steps.train import TrainConfig

    return {(variant, kd): TrainConfig(
        model=cfg.model, dataset=cfg.dataset, setting=cfg.setting, variant=variant, teacher=kd,
        teacher_run=teacher_run if kd else "", teacher_csv=cfg.teacher_csv if kd else "",
        teacher_model=cfg.teacher_model, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.train_batch_size,
        prefix_len=cfg.prefix_len, limit=cfg.limit, val_limit=cfg.eval_limit, seed=cfg.seed, workdir=cfg.workdir,
        force=cfg.force) for variant in variants_of(cfg) for kd in (False, True)}


def main(cfg: MainConfig) -> str:
    """Run (or reuse) every step as a child of one parent run; returns the parent run id."""
    from sciqa.compare import compare
    from sciqa.steps.benchmark import BenchmarkConfig, benchmark, check as check_benchmark
    from sciqa.steps.evaluate import evaluate_run
    from sciqa.steps.score import ScoreConfig, score
    from sciqa.steps.train import check as check_train, train

    gen = dict(dataset=cfg.dataset, setting=cfg.setting, batch_size=cfg.batch_size,
               max_new_tokens=cfg.max_new_tokens, workdir=cfg.workdir, force=cfg.force)
    teacher_bench = BenchmarkConfig(model=cfg.teacher_model, split="train", limit=cfg.limit,
                                    answer_mode=cfg.teacher_answer_mode, **gen)
    base_bench = BenchmarkConfig(model=cfg.model, split=cfg.eval_split, limit=cfg.eval_limit,
                                 answer_mode=cfg.answer_mode, **gen)
    check_benchmark(base_bench)
    if not (cfg.teacher_run or cfg.teacher_csv):
        check_benchmark(teacher_bench)
    for tcfg in train_configs(cfg, cfg.teacher_run).values():  # a bad teacher CSV fails here, not mid-way
        check_train(tcfg)
    params = {k: v for k, v in vars(cfg).items() if k not in ("workdir", "force")}
    with step_run("main", params, {"sciqa.model": cfg.model}, "main", force=True) as parent:
        os.environ.pop("MLFLOW_RUN_ID", None)  # children must not attach to the parent (mlflow#15713)
        pid = parent.run_id
        teacher_run = cfg.teacher_run
        if not (cfg.teacher_run or cfg.teacher_csv):
            teacher_run = _child(pid, "teacher benchmark", benchmark, teacher_bench).run_id
        trained = {}
        for (variant, kd), tcfg in train_configs(cfg, teacher_run).items():
            label = f"train {variant} {'kd' if kd else 'golden'}"
            trained[(variant, kd)] = _child(pid, label, lambda c, parent_run_id: train(
                c, VARIANT_STEPS[c.variant], parent_run_id=parent_run_id), tcfg).run_id
        base = _child(pid, "base benchmark", benchmark, base_bench).run_id
        _child(pid, "evaluate base", lambda r, parent_run_id: evaluate_run(r), base)
        scored = {}
        for (variant, kd), train_id in trained.items():
            scfg = ScoreConfig(adapter_run=train_id, dataset=cfg.dataset, split=cfg.eval_split,
                               setting=cfg.setting, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                               answer_mode=cfg.answer_mode, limit=cfg.eval_limit, workdir=cfg.workdir, force=cfg.force)
            scored[(variant, kd)] = _child(pid, f"score {variant} {'kd' if kd else 'golden'}", score, scfg).run_id
            _child(pid, "evaluate score", lambda r, parent_run_id: evaluate_run(r), scored[(variant, kd)])
        table = compare(base, trained, scored, teacher_run)
    print(table)
    return parent.run_id
