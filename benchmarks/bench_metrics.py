"""Explanation metrics for 3,216 rows: sciqa's batched way vs the study's row-by-row way, side by side.

The study scored each row with its own calls: two sentence_bleu calls, a new
RougeScorer, a METEOR call against nltk's WordNet, and one embedding ``encode``
per row. sciqa shares that work across rows. Both must give the same numbers.

The cosine, nearly all of the time, is measured two ways: cold (nothing encoded yet, as a new
process starts: every distinct text is encoded) and warm (the split's references already encoded by
an earlier evaluation in the process, as when `main` scores its next run: only the predictions are
encoded). The totals add BLEU, ROUGE-L and METEOR, measured once. The ratios depend on load: a busy
machine slows the study's batches of two far more than sciqa's batches of 32; the last line gives the
ratio at equal speed per token (the tokens each way runs through the model), about what a quiet machine shows.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--rows 3216] [--study-every N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import warnings

import numpy as np

from sciqa.data import SAMPLE_DIR
from sciqa.eval import embeddings, metrics


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


def text_metrics(predictions: list[str], references: list[str]) -> tuple[dict[str, list], dict]:
    """BLEU, ROUGE-L and METEOR as ``explanation_scores`` runs them, timed per metric: (wall s, CPU s)."""
    steps = {
        "bleu": lambda: list(zip(*[metrics._bleu(p, r) for p, r in zip(predictions, references)])),
        "rougeL": lambda: metrics._rouge_l(predictions, references),
        "meteor": lambda: metrics._meteor(predictions, references),
    }
    rows, times = {}, {}
    for name, step in steps.items():
        rows[name], times[name] = timed(step)
    rows["bleu1"], rows["bleu4"] = rows.pop("bleu")
    return rows, times


def cosine(predictions: list[str], references: list[str], known: dict) -> tuple[list[float], tuple]:
    """sciqa's cosine with the process's vectors set to ``known`` (empty: cold; the references: warm)."""
    embeddings._VECTORS.clear()
    embeddings._VECTORS.update(known)
    return timed(lambda: embeddings.cosine(predictions, references))


def token_ratio(predictions: list[str], references: list[str], known: set[str]) -> float:
    """Tokens through the model: the study's pairs (each padded to its longer text) over sciqa's new distinct texts."""
    model = embeddings.model()
    texts = list(dict.fromkeys([*predictions, *references]))
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    tokens = dict(zip(texts, map(len, ids)))
    study = sum(2 * max(tokens[p], tokens[r]) for p, r in zip(predictions, references))
    return study / sum(n for text, n in tokens.items() if text not in known)


def timed(step) -> tuple[object, tuple[float, float]]:
    start, cpu = time.perf_counter(), time.process_time()
    result = step()
    return result, (time.perf_counter() - start, time.process_time() - cpu)


def study(predictions: list[str], references: list[str]) -> tuple[dict[str, list], dict]:
    """The study's path: per row, one call per metric, a new RougeScorer, one torch ``encode``; (wall s, CPU s)."""
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer

    model = embeddings.model()
    pairs = list(zip(predictions, references))
    values = {}

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

    times = {name: timed(step)[1] for name, step in (("bleu", bleu), ("rougeL", rouge), ("meteor", meteor),
                                                      ("cosine", cosine))}
    return values, times


def summary(values: dict[str, list]) -> dict[str, float]:
    """The study's means (empty predictions already left out of ROUGE-L and METEOR) and overall."""
    means = {name: float(np.nanmean(values[name])) for name in ("bleu1", "bleu4", "rougeL", "meteor", "cosine")}
    parts = [means["bleu1"], means["bleu4"], means["rougeL"], means["meteor"], 2 * means["cosine"] - 1]
    return {**means, "overall": 100.0 * float(np.mean(parts))}


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
    metrics.explanation_scores(predictions[:2], references[:2])  # WordNet and the model
    print(f"rows={args.rows}  setup (WordNet + model)={time.perf_counter() - start:.1f}s")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    rows, text_times = text_metrics(predictions, references)
    runs = {"cold": cosine(predictions, references, {})}  # name -> (cosine values, (wall, CPU))
    refs = {text: embeddings._VECTORS[text] for text in references}
    runs["warm"] = cosine(predictions, references, refs)
    for name, (_, (wall, _cpu)) in runs.items():
        print(f"sciqa cosine, {name}: {wall:.1f}s", flush=True)

    n = args.study_every
    study_values, study_times = study(predictions[::n], references[::n])
    study_times = {name: (wall * n, cpu * n) for name, (wall, cpu) in study_times.items()}
    if n > 1:
        print(f"study way run on every {n}th row ({len(predictions[::n])} rows); its times are scaled by {n}")
    report(rows, text_times, runs, study_values, study_times, n)
    print(f"tokens through the model, study / sciqa (the ratio at equal speed per token): "
          f"cold {token_ratio(predictions, references, set()):.1f}x, "
          f"warm {token_ratio(predictions, references, set(references)):.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def report(rows, text_times, runs, study_values, study_times, n) -> None:
    """Values side by side (on the study's rows), then seconds and ratios per way of running the cosine."""
    ours = {name: summary({**{k: v[::n] for k, v in rows.items()}, "cosine": values[::n]})
            for name, (values, _) in runs.items()}
    theirs = summary(study_values)
    print(f"{'metric':8s} {'study':>10s} " + " ".join(f"{name:>11s}" for name in ours))
    for key in theirs:
        print(f"{key:8s} {theirs[key]:10.6f} " + " ".join(f"{ours[name][key]:11.6f}" for name in ours))
    cold = np.array(runs["cold"][0])
    print(f"cosine per row, max |sciqa - study| = {np.abs(cold[::n] - np.array(study_values['cosine'])).max():.2e}")
    for name in ours:
        same = all(abs(ours[name][k] - theirs[k]) < 1e-4 for k in theirs)
        print(f"same values as the study (1e-4), {name}: {same}")
    study_total = tuple(map(sum, zip(*study_times.values())))
    text_total = tuple(map(sum, zip(*text_times.values())))
    print(f"{'seconds':22s} {'sciqa wall':>10s} {'study wall':>10s} {'ratio':>7s} {'sciqa CPU':>10s} "
          f"{'study CPU':>10s} {'ratio':>7s}")
    lines = {**{name: text_times[name] for name in ("bleu", "rougeL", "meteor")},
             **{f"cosine, {name}": times for name, (_, times) in runs.items()},
             **{f"total, {name}": tuple(a + b for a, b in zip(text_total, times)) for name, (_, times) in runs.items()}}
    for name, (wall, cpu) in lines.items():
        study_wall, study_cpu = study_total if name.startswith("total") else study_times[name.split(",")[0]]
        print(f"{name:22s} {wall:10.1f} {study_wall:10.1f} {study_wall / wall:6.1f}x"
              f" {cpu:10.1f} {study_cpu:10.1f} {study_cpu / cpu:6.1f}x")


if __name__ == "__main__":
    main()
