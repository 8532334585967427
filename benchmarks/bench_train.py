"""Training-step cost of each adapter variant against a plain forward+backward of the base model.

Three loops over the same examples and batch size, each in its own process:

- ``base``: the floor. The base model alone (no adapter, its weights trainable), batches collated
  before the clock starts, then per step forward, token-mean loss, backward. No optimizer step.
- ``bare``: the loop one writes first: collate the batch (``sciqa.train.collate.collate``, the processor
  over its prompts and images), forward through the adapter, token-mean loss, backward, AdamW step.
- ``sciqa``: ``sciqa.train.loop.train``, which processes every example once per run and cuts each
  epoch's batches from those tensors, and adds the scheduler, gradient clipping, exact token-mean
  over accumulation windows, the progress bar, step metrics and the epoch checkpoint.

The ratios to ``base`` say what an adapter and sciqa's loop cost beyond the model itself. Runs
alternate and the fastest of ``--repeats`` counts (background load on a shared machine only ever
slows a run down). Ratios are given for wall time and for CPU time: with ``--threads 1`` (the
default; a tiny model gains nothing from more) CPU time is the work done, whatever else the machine
runs, while two threads on a busy machine spin and wait for each other. Each run has its own
process, so peak memory (max RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) is its own.

    python benchmarks/bench_train.py [--model tiny-qwen2-vl] [--examples 16] [--batch-size 4] [--device cpu]
    python benchmarks/bench_train.py --profile pkv   # pyinstrument profile of the sciqa loop
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(variant: str, args):
    """The model (adapted unless ``variant`` is ``base``) and the training examples."""
    import torch

    from sciqa import models
    from sciqa.adapters import attach
    from sciqa.data import load_problems
    from sciqa.data.prompts import build_prompt, target_json
    from sciqa.train.collate import Example

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = models.load(args.model, dtype=args.dtype, device=args.device)
    torch.manual_seed(0)
    adapted = lm.model if variant == "base" else attach(lm, variant, {"prefix_len": args.prefix_len})
    probs = load_problems("sample", "train", limit=args.examples)
    examples = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution)) for p in probs]
    return lm, adapted, examples


def _step(lm, model, batch: dict) -> None:
    """Forward, token-mean loss on the supervised tokens, backward."""
    from sciqa.train.collate import token_loss_sum

    batch = dict(batch)
    labels = batch.pop("labels")
    lm.family.reset_state(lm.model)
    loss, n = token_loss_sum(model(**{k: v.to(lm.device) for k, v in batch.items()}).logits, labels)
    (loss / n).backward()


def _loop(mode: str, lm, model, examples, args) -> None:
    """One timed run of ``mode`` over ``args.epochs`` epochs."""
    import torch

    from sciqa.train.collate import collate
    from sciqa.train.loop import LoopConfig, train

    size = args.batch_size
    if mode == "base":
        collated = [collate(lm, examples[i: i + size]) for i in range(0, len(examples), size)]
        model.train()
        for _ in range(args.epochs):
            for batch in collated:
                _step(lm, model, batch)
                model.zero_grad(set_to_none=True)
    elif mode == "bare":
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for _ in range(args.epochs):
            for i in range(0, len(examples), size):
                _step(lm, model, collate(lm, examples[i: i + size]))
                opt.step()
                opt.zero_grad(set_to_none=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            train(model, lm, args.model, examples, [], LoopConfig(epochs=args.epochs, lr=1e-3, batch_size=size,
                  log_every=1), Path(tmp), log_metrics=lambda m, s: None, log_checkpoint=lambda p: None)


def one(variant: str, mode: str, args) -> dict:
    """Time one (variant, mode) run after a warm-up step (first-call costs are not per-step costs)."""
    import torch

    from sciqa.train.collate import collate

    lm, model, examples = _setup("base" if mode == "base" else variant, args)
    _step(lm, model, collate(lm, examples[: args.batch_size]))
    model.zero_grad(set_to_none=True)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps = args.epochs * -(-len(examples) // args.batch_size)
    t0, cpu0 = time.perf_counter(), time.process_time()
    _loop(mode, lm, model, examples, args)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if lm.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "mode": mode, "step_s": seconds / steps, "cpu_s": cpu / steps, "peak_mib": peak,
            "steps": steps}


def profile(variant: str, args) -> None:
    """pyinstrument's call tree of the sciqa loop for ``variant`` (``pip install pyinstrument``)."""
    from pyinstrument import Profiler

    from sciqa.train.collate import collate

    lm, model, examples = _setup(variant, args)
    _step(lm, model, collate(lm, examples[: args.batch_size]))
    profiler = Profiler(interval=0.001)
    profiler.start()
    _loop("sciqa", lm, model, examples, args)
    profiler.stop()
    print(profiler.output_text(unicode=False, show_all=False))


def _run(variant: str, mode: str, passthrough: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *passthrough, "--one", variant, mode],
                         capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        sys.exit(f"{variant}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def _fastest(rows: list[dict], variant: str, mode: str, key: str) -> float:
    return min(r[key] for r in rows if r["variant"] == variant and r["mode"] == mode)


def _peak(rows: list[dict], variant: str, mode: str) -> float:
    return max(r["peak_mib"] for r in rows if r["variant"] == variant and r["mode"] == mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-qwen2-vl")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--prefix-len", type=int, default=50)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", default="pkv,peft,lora")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per (variant, loop); the fastest counts")
    ap.add_argument("--profile", metavar="VARIANT", help="print a pyinstrument profile of the sciqa loop instead")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args)))
        return
    if args.profile:
        profile(args.profile, args)
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the runs' own thread pools too
    variants = args.variants.split(",")
    rows = []
    for _ in range(args.repeats):  # alternate, so background load hits every loop alike
        rows.append(_run("base", "base", sys.argv[1:]))
        rows += [_run(variant, mode, sys.argv[1:]) for variant in variants for mode in ("bare", "sciqa")]
    print(f"{args.model}, {args.examples} examples x {args.epochs} epochs, batch {args.batch_size}, "
          f"prefix {args.prefix_len}, {args.threads or 'default'} thread(s); fastest of {args.repeats}")
    for key, what in (("step_s", "wall"), ("cpu_s", "CPU")):
        base = _fastest(rows, "base", "base", key)
        print(f"{what} s/step: base forward+backward {base:.4f} (peak {_peak(rows, 'base', 'base'):.0f} MiB)")
        print(f"  {'variant':8} {'bare':>8} {'sciqa':>8} {'bare/base':>10} {'sciqa/base':>11} {'sciqa/bare':>11}"
              f" {'bare MiB':>9} {'sciqa MiB':>10}")
        for variant in variants:
            bare, ours = _fastest(rows, variant, "bare", key), _fastest(rows, variant, "sciqa", key)
            print(f"  {variant:8} {bare:8.4f} {ours:8.4f} {bare / base:10.2f} {ours / base:11.2f} {ours / bare:11.2f}"
                  f" {_peak(rows, variant, 'bare'):9.0f} {_peak(rows, variant, 'sciqa'):10.0f}")


if __name__ == "__main__":
    main()
