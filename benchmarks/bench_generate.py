"""Rows/s of batched generation vs the original research's per-row loop, side by side in one run;
with ``--backend``, the batched HF backend against another backend on the same problems.

    python benchmarks/bench_generate.py                      # tiny-qwen2-vl, 48 problems, batch 16
    python benchmarks/bench_generate.py --model tiny-llava --rows 32 --batch-size 8
    python benchmarks/bench_generate.py --backend openai --model tiny-llava    # starts `transformers serve`
    python benchmarks/bench_generate.py --backend openai --model tiny-llava --api-base http://127.0.0.1:8000/v1
    python benchmarks/bench_generate.py --backend vllm --model Qwen/Qwen2-VL-2B-Instruct --rows 64   # CUDA + vLLM

``--backend openai`` without ``--api-base`` serves the model's local folder with ``transformers serve``
(the tiny LLaVA works on CPU; Qwen2-VL's processor needs torchvision there) and sends requests with
``--concurrency`` in flight. Agreement = share of rows whose cleaned output is identical.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import click

from sciqa import models
from sciqa.backends.hf import HFBackend
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt
from sciqa.steps import BenchmarkConfig


def rows_per_second(backend, problems, prompts, batch_size: int) -> tuple[float, list]:
    start, gens = time.perf_counter(), []
    for i in range(0, len(problems), batch_size):
        gens += backend.generate(problems[i: i + batch_size], prompts[i: i + batch_size])
    return len(problems) / (time.perf_counter() - start), gens


def serve(path: str):
    """``transformers serve`` on 127.0.0.1 for a local model folder: (process, base URL)."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", path, "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(600):
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc, f"http://127.0.0.1:{port}/v1"
        except requests.RequestException:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    raise SystemExit(f"transformers serve did not start for {path} (Qwen2-VL needs torchvision: try tiny-llava)")


def other_backend(backend: str, model: str, max_new_tokens: int, api_base: str, concurrency: int):
    """(backend, cleanup) for --backend openai|vllm."""
    if backend == "openai":
        from sciqa.backends.openai import OpenAIBackend

        proc, name = None, model
        if not api_base:
            name = str(models.resolve(model)[0])  # transformers serve knows its model by folder
            proc, api_base = serve(name)
        key_env = "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else ""
        b = OpenAIBackend(BenchmarkConfig(model=name, backend="openai", api_base=api_base, api_key_env=key_env,
                                          max_new_tokens=max_new_tokens, concurrency=concurrency))
        return b, (lambda: os.killpg(proc.pid, signal.SIGTERM)) if proc else (lambda: None)
    from sciqa.backends.vllm import VLLMBackend

    cfg = BenchmarkConfig(model=model, backend="vllm", max_new_tokens=max_new_tokens, gpu_memory_utilization=0.6)
    return VLLMBackend.from_config(cfg), lambda: None


@click.command()
@click.option("--model", default="tiny-qwen2-vl")
@click.option("--dataset", default="sample", help="sample, a hub id or a local folder")
@click.option("--rows", default=48, help="problems from the validation split")
@click.option("--batch-size", default=16)
@click.option("--max-new-tokens", default=128, help="answers of ~100 tokens: JSON answer + explanation")
@click.option("--setting", default="QTCH")
@click.option("--backend", type=click.Choice(["loop", "openai", "vllm"]), default="loop",
              help="loop: batched HF vs a per-row HF loop; openai|vllm: batched HF vs that backend")
@click.option("--api-base", default="", help="openai: an OpenAI-compatible API (default: start transformers serve)")
@click.option("--concurrency", default=8, help="openai: requests in flight")
def bench(model: str, dataset: str, rows: int, batch_size: int, max_new_tokens: int, setting: str, backend: str,
          api_base: str, concurrency: int) -> None:
    problems = load_problems(dataset, "validation", limit=rows)
    prompts = [build_prompt(p, setting) for p in problems]
    hf = HFBackend(models.load(model), max_new_tokens=max_new_tokens)
    rows_per_second(hf, problems[:2], prompts[:2], 2)  # warm-up
    print(f"model={model} rows={len(problems)} max_new_tokens={max_new_tokens}")
    if backend == "loop":
        loop, _ = rows_per_second(hf, problems, prompts, 1)
        batched, _ = rows_per_second(hf, problems, prompts, batch_size)
        print(f"per-row loop (batch 1): {loop:8.2f} rows/s")
        print(f"batched (batch {batch_size}):   {batched:8.2f} rows/s")
        print(f"ratio: {batched / loop:.1f}x")
        return
    batched, hf_gens = rows_per_second(hf, problems, prompts, batch_size)
    del hf
    if backend == "vllm":
        import torch

        torch.cuda.empty_cache()
    other, cleanup = other_backend(backend, model, max_new_tokens, api_base, concurrency)
    try:
        rows_per_second(other, problems[:2], prompts[:2], 2)  # warm-up
        speed, gens = rows_per_second(other, problems, prompts, batch_size)
    finally:
        cleanup()
    agree = sum(a.raw_output == b.raw_output for a, b in zip(hf_gens, gens)) / len(gens)
    print(f"hf batched (batch {batch_size}): {batched:8.2f} rows/s")
    extra = f", concurrency {concurrency}" if backend == "openai" else ""
    print(f"{backend} (batch {batch_size}{extra}): {speed:8.2f} rows/s")
    print(f"ratio {backend}/hf: {speed / batched:.2f}x; identical outputs: {agree:.0%}")


if __name__ == "__main__":
    bench()
