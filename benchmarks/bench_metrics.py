"""Explanation metrics for 3,216 rows: sciqa's batched way vs the study's row-by-row way, side by side.

The study scored each row with its own calls: two sentence_bleu calls, a new
RougeScorer, a METEOR call against nltk's WordNet, and one embedding ``encode``
per row. sciqa shares that work across rows. Both must give the same numbers.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--rows 3216]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import warnings

import numpy as np
import pandas as pd

from sciqa import metrics
from sciqa.data.sources import SAMPLE_DIR


def load_pairs(n_rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """References from real problems; predictions = another row's solution or a perturbed own solution."""
    source = SAMPLE_DIR / "problems.json"
    problems = list(json.loads(source.read_text()).values())
    rng = random.Random(seed)
    predictions, references = [], []
    for row in range(n_rows):
        problem = problems[row % len(problems)]
        references.append(f"{problem['lecture']} {problem['solution']}".strip())
        if row % 2:
            predictions.append(problems[rng.randrange(len(problems))]["solution"])
        else:
            words = problem["solution"].split()
            predictions.append(" ".join(w for w in words if rng.random() > 0.2))
    return predictions, references


def ours(predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict]:
    """sciqa's path (what explanation_scores runs), timed per metric: (wall s, CPU s)."""
    times, rows = {}, {}
    steps = {
        "bleu": lambda: list(zip(*[metrics._bleu(p, r) for p, r in zip(predictions, references)])),
        "rougeL": lambda: metrics._rouge_l(predictions, references),
        "meteor": lambda: metrics._meteor(predictions, references),
        "cosine": lambda: metrics._cosine(predictions, references),
    }
    for name, step in steps.items():
        start, cpu = time.perf_counter(), time.process_time()
        rows[name] = step()
        times[name] = (time.perf_counter() - start, time.process_time() - cpu)
    rows["bleu1"], rows["bleu4"] = rows.pop("bleu")
    return metrics.summarize_explanations(pd.DataFrame(rows)), times


def study(predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict]:
    """The study's path: per row, one call per metric, a new RougeScorer, one ``encode``; (wall s, CPU s)."""
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer

    model = metrics._embedder()
    pairs = list(zip(predictions, references))
    times, values = {}, {}

    def bleu():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for weights, name in (((1,), "bleu1"), ((0.25,) * 4, "bleu4")):
                values[name] = [
                    sentence_bleu([metrics._bleu_tokens(r)], metrics._bleu_tokens(p), weights=weights)
                    for p, r in pairs
                ]

    def rouge():
        values["rougeL"] = [
            RougeScorer(["rougeL"], use_stemmer=False).score(r, p)["rougeL"].fmeasure
            for p, r in pairs
            if p.strip()
        ]

    def meteor():
        values["meteor"] = [meteor_score([r.split()], p.split()) for p, r in pairs if p.strip()]

    def cosine():
        values["cosine"] = [float(np.dot(*model.encode([p, r], normalize_embeddings=True))) for p, r in pairs]

    for name, step in (("bleu", bleu), ("rougeL", rouge), ("meteor", meteor), ("cosine", cosine)):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        times[name] = (time.perf_counter() - start, time.process_time() - cpu)
    means = {name: float(np.mean(v)) for name, v in values.items()}
    parts = [means["bleu1"], means["bleu4"], means["rougeL"], means["meteor"], 2 * means["cosine"] - 1]
    return {**means, "overall": 100.0 * float(np.mean(parts))}, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3216)
    parser.add_argument(
        "--study-every", type=int, default=1,
        help="run the slow study way on every Nth row only and scale its time by N (for a busy machine)",
    )
    args = parser.parse_args()
    predictions, references = load_pairs(args.rows)

    start = time.perf_counter()
    metrics.explanation_scores(predictions[:2], references[:2])  # load WordNet and the model outside the timing
    print(f"rows={args.rows}  setup (WordNet + model load)={time.perf_counter() - start:.1f}s")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    our_values, our_times = ours(predictions, references)
    print(f"sciqa done: {our_times}", flush=True)
    n = args.study_every
    study_values, study_times = study(predictions[::n], references[::n])
    study_times = {name: (wall * n, cpu * n) for name, (wall, cpu) in study_times.items()}
    if n > 1:
        our_values, _ = ours(predictions[::n], references[::n])  # compare values on the same rows
        print(f"study way run on every {n}th row ({len(predictions[::n])} rows); its times are scaled by {n}")

    print(f"{'metric':8s} {'sciqa':>10s} {'study':>10s}")
    for name in our_values:
        print(f"{name:8s} {our_values[name]:10.6f} {study_values[name]:10.6f}")
    print(f"{'seconds':8s} {'sciqa wall':>10s} {'study wall':>10s} {'ratio':>7s} {'sciqa CPU':>10s} {'study CPU':>10s} {'ratio':>7s}")
    rows = {**our_times, "total": tuple(map(sum, zip(*our_times.values())))}
    study_rows = {**study_times, "total": tuple(map(sum, zip(*study_times.values())))}
    for name, (wall, cpu) in rows.items():
        study_wall, study_cpu = study_rows[name]
        print(
            f"{name:8s} {wall:10.1f} {study_wall:10.1f} {study_wall / wall:6.1f}x"
            f" {cpu:10.1f} {study_cpu:10.1f} {study_cpu / cpu:6.1f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("same values (1e-4):", all(abs(our_values[k] - study_values[k]) < 1e-4 for k in our_values))


if __name__ == "__main__":
    main()
