"""Peak memory of ``sciqa benchmark`` at 500 vs 3,000 rows, side by side: it should not grow with rows.

Each run is ``python -m sciqa benchmark`` with the tiny model and ``--max-new-tokens 2`` in its own
process; its peak resident set size comes from ``wait4``, so it is that process's own. Both runs
read the same dataset folder in the original ScienceQA layout, written here from the bundled
sample's problems (those with a lecture and a solution, as the benchmark keeps) repeated under new
pids until there are enough rows, with a small PNG for every problem that has an image, so images
are read from disk as with the real dataset. Only ``--limit`` differs. Target: within +-10 %.

    python benchmarks/bench_memory.py [--rows 500,3000] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sciqa.data import SAMPLE_DIR


def write_dataset(folder: Path, rows: int) -> Path:
    """An original-layout folder whose validation split holds ``rows`` problems (sample ones repeated)."""
    from PIL import Image

    sample = json.loads((SAMPLE_DIR / "problems.json").read_text())
    usable = [(pid, rec) for pid, rec in sample.items() if rec.get("lecture") and rec.get("solution")]
    problems, pids = {}, []
    for row in range(rows):
        pid, rec = usable[row % len(usable)]
        new = f"{pid}r{row // len(usable)}"
        problems[new] = dict(rec, split="val")
        pids.append(new)
        if rec.get("image"):
            image = folder / "images" / "val" / new / rec["image"]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (96, 64), (row % 256, 128, 64)).save(image)
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"train": [], "val": pids, "test": []}))
    return folder


def peak_rss_mib(rows: int, dataset: Path, work: Path, batch_size: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one ``sciqa benchmark`` over the first ``rows`` problems."""
    cmd = [sys.executable, "-m", "sciqa", "benchmark", "--model", "tiny-qwen2-vl", "--dataset", str(dataset),
           "--split", "validation", "--max-new-tokens", "2", "--batch-size", str(batch_size),
           "--limit", str(rows), "--workdir", str(work / f"work-{rows}")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "TQDM_DISABLE": "1",
           "MLFLOW_EXPERIMENT_NAME": "bench-memory"}
    start = time.perf_counter()
    with open(work / f"log-{rows}.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{rows} rows failed:\n" + (work / f"log-{rows}.txt").read_text()[-3000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="500,3000", help="row counts to compare, the first is the reference")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    counts = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = write_dataset(work / "dataset", max(counts))
        results = {rows: peak_rss_mib(rows, dataset, work, args.batch_size) for rows in counts}
    reference = results[counts[0]][0]
    print(f"sciqa benchmark, tiny-qwen2-vl, --max-new-tokens 2, batch {args.batch_size}")
    print(f"{'rows':>6} {'peak RSS MiB':>13} {'vs first':>9} {'seconds':>8}")
    for rows, (mib, seconds) in results.items():
        change = 100 * (mib / reference - 1)
        flag = "" if abs(change) <= 10 else "  (outside +-10 %)"
        print(f"{rows:6d} {mib:13.0f} {change:+8.1f}% {seconds:8.0f}{flag}")


if __name__ == "__main__":
    main()
