"""Training-step cost of each adapter variant: sciqa's loop vs a bare loop over the same batches.

The bare loop is the least a training step can do: collate the batch, forward, token-mean loss,
backward, AdamW step. sciqa's loop (``sciqa.training.train``) adds the scheduler, gradient
clipping, exact token-mean over accumulation windows, the progress bar, step metrics and the
epoch checkpoint. Runs alternate and the fastest of ``--repeats`` counts (background
load on a shared machine only ever slows a run down). Each (variant, loop) runs in its own process so peak memory (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) is its own. Target: sciqa/bare <= 1.15.

    python benchmarks/bench_train.py [--model tiny-qwen2-vl] [--examples 16] [--batch-size 4] [--device cpu]
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


def one(variant: str, mode: str, args) -> dict:
    import torch

    from sciqa import models
    from sciqa.adapters import attach
    from sciqa.collate import Example, collate, token_loss_sum
    from sciqa.data import load_problems
    from sciqa.prompts import build_prompt, target_json
    from sciqa.training import LoopConfig, train

    lm = models.load(args.model, dtype=args.dtype, device=args.device)
    torch.manual_seed(0)
    adapted = attach(lm, variant, {"prefix_len": args.prefix_len})
    probs = load_problems("sample", "train", limit=args.examples)
    examples = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution)) for p in probs]
    warm = collate(lm, examples[: args.batch_size])  # warm-up: first-call costs are not per-step costs
    labels = warm.pop("labels")
    token_loss_sum(adapted(**{k: v.to(lm.device) for k, v in warm.items()}).logits, labels)[0].backward()
    adapted.zero_grad(set_to_none=True)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps = args.epochs * -(-len(examples) // args.batch_size)
    t0 = time.perf_counter()
    if mode == "bare":
        opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-3)
        adapted.train()
        for epoch in range(args.epochs):
            for i in range(0, len(examples), args.batch_size):
                batch = collate(lm, examples[i: i + args.batch_size])
                labels = batch.pop("labels")
                lm.family.reset_state(lm.model)
                loss, n = token_loss_sum(adapted(**{k: v.to(lm.device) for k, v in batch.items()}).logits, labels)
                (loss / n).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            train(adapted, lm, args.model, examples, [], LoopConfig(epochs=args.epochs, lr=1e-3,
                  batch_size=args.batch_size, log_every=1), Path(tmp), log_metrics=lambda m, s: None,
                  log_checkpoint=lambda p: None)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if lm.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "mode": mode, "step_s": seconds / steps, "peak_mib": peak, "steps": steps}


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
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per (variant, loop); the fastest counts")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args)))
        return
    passthrough = [a for a in sys.argv[1:]]
    rows = []
    for variant in args.variants.split(","):
        for mode in ("bare", "sciqa") * args.repeats:  # alternate, so background load hits both alike
            out = subprocess.run([sys.executable, __file__, *passthrough, "--one", variant, mode],
                                 capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                sys.exit(f"{variant}/{mode} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
    print(f"{args.model}, {args.examples} examples x {args.epochs} epochs, batch {args.batch_size}, "
          f"prefix {args.prefix_len}")
    print(f"{'variant':8} {'bare s/step':>12} {'sciqa s/step':>13} {'ratio':>6} {'bare peak MiB':>14} {'sciqa peak MiB':>15}")
    for variant in args.variants.split(","):
        bare, ours = [min((r for r in rows if r["variant"] == variant and r["mode"] == m), key=lambda r: r["step_s"])
                      for m in ("bare", "sciqa")]
        ratio = ours["step_s"] / bare["step_s"]
        print(f"{variant:8} {bare['step_s']:12.4f} {ours['step_s']:13.4f} {ratio:6.2f} {bare['peak_mib']:14.0f} "
              f"{ours['peak_mib']:15.0f}{'' if ratio <= 1.15 else '  (over the 1.15x target)'}")


if __name__ == "__main__":
    main()
