"""Metrics against the reference libraries called directly, hand-computed values, and edge cases."""

import math

import numpy as np
import pandas as pd
import pytest
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score
from rouge_score.rouge_scorer import RougeScorer

from sciqa.errors import SciqaError
from sciqa.eval import embeddings, metrics, wordnet

PREDICTIONS = [
    "the cat sat",  # BLEU-1 = 1 * brevity penalty; ROUGE-L = 2/3 by hand
    "The cat sat on the mat",
    "",  # empty prediction: ROUGE-L and METEOR skipped
    "Something with no reference.",
    "café naïve über",  # rouge-score keeps only [a-z0-9]
    "The text uses apostrophe, a direct address to an absent person.",
]
REFERENCES = [
    "the cat sat on the mat",
    "The cat sat on a mat.",
    "Figures of speech are words.",
    "",  # empty reference
    "café naïve über",
    "Apostrophe is a direct address. The text uses apostrophe, a direct address to a goddess.",
]


@pytest.fixture(scope="module")
def scored():
    return metrics.explanation_scores(PREDICTIONS, REFERENCES)


def _tokens(text):
    return [t for t in text.replace(".", " ").split() if t]


@pytest.mark.filterwarnings("ignore:\\nThe hypothesis contains 0 counts")
def test_bleu_matches_nltk_and_hand_values(scored):
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES)):
        assert scored.bleu1[i] == pytest.approx(sentence_bleu([_tokens(r)], _tokens(p), weights=(1,)))
        assert scored.bleu4[i] == pytest.approx(sentence_bleu([_tokens(r)], _tokens(p), weights=(0.25,) * 4))
    assert scored.bleu1[0] == pytest.approx(math.exp(1 - 6 / 3))  # all 3 unigrams match; brevity penalty
    assert scored.bleu1[1] == pytest.approx(5 / 6)  # "mat." tokenises to "mat"; "the" != "The", "a" unmatched
    assert scored.bleu1[2] == 0.0 and scored.bleu1[3] == 0.0  # empty prediction / empty reference
    assert scored.bleu1[4] == 1.0


def test_rouge_l_matches_rouge_score_without_stemmer(scored):
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES)):
        if p:
            assert scored.rougeL[i] == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)
    assert scored.rougeL[0] == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert math.isnan(scored.rougeL[2])
    assert scored.rougeL[3] == 0.0
    assert metrics.METRIC_SETTINGS["rouge_stemmer"] is False


def test_meteor_matches_nltk_on_whitespace_tokens(scored):
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES)):
        if p:
            assert scored.meteor[i] == pytest.approx(meteor_score([r.split()], p.split()))
    assert math.isnan(scored.meteor[2])
    assert scored.meteor[3] == 0.0
    assert 0.9 < scored.meteor[4] < 1.0  # exact unicode match, only the fragmentation penalty


def test_meteor_gives_wordnet_synonym_credit():
    wordnet.ensure_wordnet()

    class NoWordNet:
        def synsets(self, word):
            return []

    reference, hypothesis = ["the", "car", "is", "red"], ["the", "auto", "is", "red"]
    with_synonyms = meteor_score([reference], hypothesis)
    without = meteor_score([reference], hypothesis, wordnet=NoWordNet())
    assert with_synonyms == pytest.approx(0.9921875)  # 4 of 4 matched, one chunk
    assert without < with_synonyms
    assert metrics._meteor([" ".join(hypothesis)], [" ".join(reference)]) == [pytest.approx(with_synonyms)]


def test_cosine_matches_row_by_row_encoding(scored):
    model = embeddings.model()
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES)):
        a, b = model.encode([p, r], normalize_embeddings=True)
        assert scored.cosine[i] == pytest.approx(float(np.dot(a, b)), abs=1e-5)
    assert scored.cosine[4] == pytest.approx(1.0, abs=1e-5)
    assert scored.cosine[5] > 0.6 > scored.cosine[3]


def test_cosine_encodes_each_text_once_per_process(monkeypatch):
    calls = []

    class FakeModel:
        def encode(self, texts, **kwargs):
            calls.append(list(texts))
            return np.array([[1.0, 0.0] if "cat" in t else [0.6, 0.8] for t in texts])

    monkeypatch.setattr(embeddings, "model", lambda: FakeModel())
    monkeypatch.setattr(embeddings, "_VECTORS", {})
    assert embeddings.cosine(["a cat", "a dog"], ["the cat", "the cat"]) == pytest.approx([1.0, 0.6])
    assert embeddings.cosine(["a dog", "a cow"], ["the cat", "a cat"]) == pytest.approx([0.6, 0.6])
    assert calls == [["a cat", "a dog", "the cat"], ["a cow"]]
    assert embeddings.cosine([], []) == []


def test_summary_averaging_rules_and_overall_formula():
    rows = pd.DataFrame(
        {
            "bleu1": [0.5, 0.1, 0.0],
            "bleu4": [0.2, 0.0, 0.0],
            "rougeL": [0.6, 0.4, math.nan],
            "meteor": [0.3, 0.5, math.nan],
            "cosine": [0.9, 0.7, 0.2],
        }
    )
    summary = metrics.summarize_explanations(rows)
    assert summary["bleu1"] == pytest.approx(0.2)  # all rows, empty prediction counts 0
    assert summary["rougeL"] == pytest.approx(0.5)  # empty prediction skipped
    assert summary["meteor"] == pytest.approx(0.4)
    assert summary["cosine"] == pytest.approx(0.6)
    expected = 100 * (0.2 + 0.2 / 3 + 0.5 + 0.4 + (2 * 0.6 - 1)) / 5
    assert summary["overall"] == pytest.approx(expected)  # = 27.3333...
    assert summary["overall"] == pytest.approx(27.3333333)


def test_explanation_scores_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.explanation_scores(["a", "b"], ["a"])


def test_wordnet_is_laid_out_for_nltk():
    path = wordnet.ensure_wordnet()
    assert path == wordnet.ensure_wordnet()  # idempotent
    lines = (path / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    assert lines[5] == "05\tnoun.animal\t1" and lines[44] == "44\tadj.ppl\t3"
    from nltk.corpus import wordnet as nltk_wordnet

    assert "dog.n.01" in [s.name() for s in nltk_wordnet.synsets("dog")]


def test_missing_debian_wordnet_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wordnet, "_DEBIAN_WORDNET", tmp_path / "nowhere")
    with pytest.raises(SciqaError, match="apt-get install wordnet-base"):
        wordnet.ensure_wordnet()


def _frame():
    # 8 rows; predictions: correct rows 0, 2, 4, 6; row 1 and 7 unmapped (NA).
    return pd.DataFrame(
        {
            "answer_index": pd.array([0, pd.NA, 2, 0, 1, 1, 0, pd.NA], dtype="Int64"),
            "answer": [0, 1, 2, 1, 1, 0, 0, 0],
            "subject": ["natural science"] * 3 + ["social science"] * 3 + ["language science"] * 2,
            "grade": ["grade1", "grade3", "grade7", "grade8", "grade12", "grade2", "grade6", "grade10"],
            "topic": ["physics", "physics", "biology", "geography", "geography", "civics", "grammar", "grammar"],
            "hint": ["a hint", "", "", "context", "", "", "", "x"],
            "has_image": [True, True, False, False, False, True, False, False],
        }
    )


def test_accuracy_breakdown_exact_values():
    scores = metrics.accuracy_breakdown(_frame())
    assert scores == pytest.approx(
        {
            "acc": 50.0,  # rows 0, 2, 4, 6 of 8
            "acc_natural": 200 / 3,  # rows 0-2 -> 0, 2
            "acc_social": 100 / 3,  # rows 3-5 -> 4
            "acc_language": 50.0,  # rows 6-7 -> 6
            "acc_txt": 100 / 3,  # hint: rows 0, 3, 7 -> 0
            "acc_img": 100 / 3,  # image: rows 0, 1, 5 -> 0
            "acc_no": 100.0,  # neither: rows 2, 4, 6 -> all
            "acc_g1_6": 50.0,  # rows 0, 1, 5, 6 -> 0, 6
            "acc_g7_12": 50.0,  # rows 2, 3, 4, 7 -> 2, 4
            "unmapped_rate": 25.0,  # rows 1, 7
        }
    )


def test_metric_table_names_exactly_what_is_logged(scored):
    """The one table (name, label, scale, group) covers every logged metric and nothing else."""
    logged = set(metrics.accuracy_breakdown(_frame())) | set(metrics.summarize_explanations(scored))
    assert set(metrics.names()) == logged
    assert tuple(scored.columns) == metrics.EXPLANATION
    assert all(metrics.BY_NAME[n].scale == "points" for n in metrics.accuracy_breakdown(_frame()))
    assert {metrics.BY_NAME[n].scale for n in metrics.EXPLANATION} == {"unit"}
    assert len(set(metrics.LABELS.values())) == len(metrics.METRICS)
    groups = metrics.accuracy_groups(_frame())  # the one definition stats' per-group rows also use
    assert set(groups) == set(metrics.names("accuracy")) and all(metrics.BY_NAME[n].where for n in groups)


def test_accuracy_breakdown_omits_empty_groups():
    frame = _frame()
    only_natural = frame[frame.subject == "natural science"]
    scores = metrics.accuracy_breakdown(only_natural)
    assert "acc_social" not in scores and "acc_language" not in scores and "acc_g7_12" in scores
    assert scores["acc_natural"] == pytest.approx(200 / 3)
    assert metrics.accuracy_breakdown(frame.iloc[:0]) == {}


def test_topic_accuracy_table():
    table = metrics.topic_accuracy(_frame())
    assert list(table.columns) == ["topic", "n", "accuracy"]
    rows = {r.topic: (r.n, r.accuracy) for r in table.itertuples()}
    assert rows == {
        "physics": (2, 50.0),
        "geography": (2, 50.0),
        "grammar": (2, 50.0),
        "biology": (1, 100.0),
        "civics": (1, 0.0),
    }
    assert list(table.topic[:3]) == ["geography", "grammar", "physics"]  # largest first, then by name


def test_a_new_explanation_metric_leaves_the_studys_overall_alone(monkeypatch):
    rows = pd.DataFrame({"bleu1": [0.2], "bleu4": [0.1], "rougeL": [0.3], "meteor": [0.4], "cosine": [0.5]})
    before = metrics.summarize_explanations(rows)["overall"]
    monkeypatch.setattr(metrics, "EXPLANATION", (*metrics.EXPLANATION, "exact_match"))
    after = metrics.summarize_explanations(rows.assign(exact_match=[1.0]))["overall"]
    assert after == before == pytest.approx(100 * (0.2 + 0.1 + 0.3 + 0.4 + 0.0) / 5)
