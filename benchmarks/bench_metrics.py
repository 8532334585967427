"""Explanation metrics for 3,216 rows: sciqa's batched way vs the study's row-by-row way, side by side.

The study scored each row with its own calls: two sentence_bleu calls, a new
RougeScorer, a METEOR call against nltk's WordNet, and one embedding ``encode``
per row. sciqa shares that work across rows. Both must give the same numbers.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--rows 3216]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np

from sciqa import metrics

SOURCES = (Path(__file__).resolve().parents[1] / "src/sciqa/data/sample/problems.json", Path("/work/shared/data/scienceqa/problems.json"))


def load_pairs(n_rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """References from real problems; predictions = another row's solution or a perturbed own solution."""
    source = next(path for path in SOURCES if path.is_file())
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


def study_way(predictions: list[str], references: list[str]) -> dict[str, float]:
    """One library call per row and metric, one encode per row, a new RougeScorer per row."""
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer

    model = metrics._embedder()
    bleu1, bleu4, rouge, meteor, cosine = [], [], [], [], []
    for prediction, reference in zip(predictions, references):
        ref_tokens, pred_tokens = metrics._bleu_tokens(reference), metrics._bleu_tokens(prediction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bleu1.append(sentence_bleu([ref_tokens], pred_tokens, weights=(1,)))
            bleu4.append(sentence_bleu([ref_tokens], pred_tokens, weights=(0.25,) * 4))
        if prediction.strip():
            scorer = RougeScorer(["rougeL"], use_stemmer=False)
            rouge.append(scorer.score(reference, prediction)["rougeL"].fmeasure)
            meteor.append(meteor_score([reference.split()], prediction.split()))
        pred_vec, ref_vec = model.encode([prediction, reference], normalize_embeddings=True)
        cosine.append(float(np.dot(pred_vec, ref_vec)))
    means = [float(np.mean(x)) for x in (bleu1, bleu4, rouge, meteor, cosine)]
    summary = dict(zip(("bleu1", "bleu4", "rougeL", "meteor", "cosine"), means))
    summary["overall"] = 100.0 * float(np.mean(means[:4] + [2 * means[4] - 1]))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3216)
    args = parser.parse_args()
    predictions, references = load_pairs(args.rows)

    start = time.perf_counter()
    metrics.ensure_wordnet()
    metrics._embedder()
    metrics.explanation_scores(predictions[:2], references[:2])  # load WordNet and model outside the timing
    setup = time.perf_counter() - start

    start = time.perf_counter()
    ours = metrics.summarize_explanations(metrics.explanation_scores(predictions, references))
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    study = study_way(predictions, references)
    study_s = time.perf_counter() - start

    print(f"rows={args.rows} setup(load WordNet + model)={setup:.1f}s")
    print(f"{'metric':8s} {'sciqa':>12s} {'study':>12s}")
    for name in ours:
        print(f"{name:8s} {ours[name]:12.6f} {study[name]:12.6f}")
    print(f"sciqa batched: {ours_s:.1f}s  study per-row: {study_s:.1f}s  speed-up: {study_s / ours_s:.1f}x")
    same = all(abs(ours[k] - study[k]) < 1e-4 for k in ours)
    print("same values:", same)


if __name__ == "__main__":
    main()
