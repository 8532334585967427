"""Rows/s of batched generation vs the original research's per-row loop, side by side in one run.

    python benchmarks/bench_generate.py                      # tiny-qwen2-vl, 48 problems, batch 16
    python benchmarks/bench_generate.py --model tiny-llava --rows 32 --batch-size 8
"""
from __future__ import annotations

import time

import click

from sciqa import models
from sciqa.backends.hf import HFBackend
from sciqa.data import load_problems
from sciqa.prompts import build_prompt


def rows_per_second(backend, problems, prompts, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(problems), batch_size):
        backend.generate(problems[i: i + batch_size], prompts[i: i + batch_size])
    return len(problems) / (time.perf_counter() - start)


@click.command()
@click.option("--model", default="tiny-qwen2-vl")
@click.option("--rows", default=48, help="problems from the sample's validation split")
@click.option("--batch-size", default=16)
@click.option("--max-new-tokens", default=32)
@click.option("--setting", default="QTCH")
def bench(model: str, rows: int, batch_size: int, max_new_tokens: int, setting: str) -> None:
    backend = HFBackend(models.load(model), max_new_tokens=max_new_tokens)
    problems = load_problems("sample", "validation", limit=rows)
    prompts = [build_prompt(p, setting) for p in problems]
    rows_per_second(backend, problems[:2], prompts[:2], 2)  # warm-up
    loop = rows_per_second(backend, problems, prompts, 1)
    batched = rows_per_second(backend, problems, prompts, batch_size)
    print(f"model={model} rows={rows} max_new_tokens={max_new_tokens}")
    print(f"per-row loop (batch 1): {loop:8.2f} rows/s")
    print(f"batched (batch {batch_size}):   {batched:8.2f} rows/s")
    print(f"ratio: {batched / loop:.1f}x")


if __name__ == "__main__":
    bench()
