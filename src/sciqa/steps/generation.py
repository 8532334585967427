"""The generation loop shared by ``benchmark`` and ``score``: resume by id, batches, CSV, metrics."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from sciqa.backends.base import Backend
from sciqa.data.problems import Problem
from sciqa.errors import SciqaError
from sciqa.outputs import OutputsCSV, read_outputs
from sciqa.prompts import build_prompt
from sciqa.submit import stop_step, stop_watch
from sciqa.tracking import StepRun, fetch_artifact

CSV_LOG_SECONDS = 300  # log the partial CSV this often (a signal-free crash loses at most this much)


def check_workdir(workdir: str) -> Path:
    """The local folder for outputs: created and checked writable before any run starts."""
    path = Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SciqaError(f"output folder '{workdir}' is not writable ({exc.strerror}); pass --workdir") from None
    return path


def csv_name(split: str, setting: str) -> str:
    return f"{split}_{setting}.csv"


def generate_outputs(run: StepRun, workdir: Path, problems: list[Problem], setting: str,
                     make_backend: Callable[[], Backend], batch_size: int, meta: dict[str, str]) -> Path:
    """Generate for every problem not yet in the run's CSV; log the CSV and throughput metrics.

    The CSV lives under ``workdir/<key>/``; when it is missing locally (another machine, a
    Slurm node) it is seeded from an earlier run with the same key, so no id is generated twice.
    """
    import mlflow

    from sciqa.parsing import parse_output

    name = csv_name(problems[0].split, setting)
    path = workdir / run.key / name
    if not path.exists():
        fetch_artifact([run.run_id, *run.earlier], f"outputs/{name}", path)
    out = OutputsCSV(path)
    todo = [p for p in problems if p.id not in out.done]
    started, generated = time.perf_counter(), 0

    def save_csv() -> None:  # the resume state, for a restart on another node
        if path.exists():
            mlflow.log_artifact(str(path), "outputs")

    if todo:
        # Slurm stop signals (time limit near, preemption, requeue): finish the batch in flight,
        # log the CSV, exit 75 (sciqa.submit.stop_step); the restarted job resumes by id
        with stop_watch() as stop:
            backend = make_backend()
            saved = time.monotonic()
            bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="row", desc=setting)
            for i in range(0, len(todo), batch_size):
                if stop.is_set():
                    bar.close()
                    stop_step(stop, f"{len(out.done)}/{len(problems)} rows of {name}", save_csv)
                if time.monotonic() - saved > CSV_LOG_SECONDS:  # a node that dies loses at most this
                    save_csv()
                    saved = time.monotonic()
                batch = todo[i: i + batch_size]
                prompts = [build_prompt(p, setting) for p in batch]
                t0 = time.perf_counter()
                gens = backend.generate(batch, prompts)
                per_row = (time.perf_counter() - t0) / len(batch)
                rows = []
                for p, prompt, g in zip(batch, prompts, gens):
                    parsed = parse_output(g.raw_output, p.choices)
                    rows.append({**meta, "id": p.id, "split": p.split, "setting": setting, "prompt": prompt,
                                 "raw_output": g.raw_output, "answer_index": parsed.answer_index,
                                 "answer_text": parsed.answer_text, "solution": parsed.solution,
                                 "finish_reason": g.finish_reason, "n_output_tokens": g.n_output_tokens,
                                 "seconds": round(per_row, 4)})
                generated += out.append(rows)
                bar.update(len(batch))
                if extra := backend.metrics():  # API tokens/cost so far (a killed run keeps them)
                    mlflow.log_metrics(extra)
            bar.close()
    seconds = time.perf_counter() - started
    df = read_outputs(path)
    mlflow.log_metrics({"rows": len(df), "rows_generated": generated, "seconds": seconds,
                        "rows_per_second": generated / seconds if generated else 0.0,
                        "mapped_rate": float(df["answer_index"].notna().mean()) if len(df) else 0.0})
    mlflow.log_artifact(str(path), "outputs")
    return path
