"""answer_mode="choice": the likeliest choice, scored from only the positions that spell it."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sciqa import models
from sciqa.backends.hf import ANSWER_HEAD, HFBackend, answer_prefix, answer_start, encode_texts
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt
from sciqa.errors import SciqaError
from sciqa.eval.parsing import parse_output

# tiny-llava: a metaspace (sentencepiece-style) BPE, where a leading space is part of a token
MODELS = ["tiny-llava", "tiny-qwen2-vl", "tiny-paligemma"]


def _lm(name):
    return models.load(name, dtype="float32", device="cpu")


def _problems_and_texts(lm, limit=5):
    problems = load_problems("sample", "validation", limit=limit)
    return problems, [lm.family.render_prompt(lm.processor, build_prompt(p, "QTCH")) for p in problems]


def _reference_scores(lm, problems, texts) -> dict[str, list[list[float]]]:
    """Brute force, both scores: one unpadded row per (problem, choice), log-softmax over the whole
    sequence; the scored tokens are the fewest last tokens whose text holds the whole quoted choice."""
    sums, means = [], []
    for problem, text in zip(problems, texts):
        sums.append([])
        means.append([])
        for choice in problem.choices:
            inputs = lm.family.encode(lm.processor, [text], [problem.image()], [answer_start(choice)])
            ids = inputs["input_ids"][0]
            lm.family.reset_state(lm.model)
            with torch.no_grad():
                logits = lm.model(**inputs).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]
            quoted = json.dumps(choice, ensure_ascii=False)
            k = next(k for k in range(1, len(ids)) if quoted in lm.tokenizer.decode(ids[-k:]))
            sums[-1].append(float(logp[-k:].sum()))
            means[-1].append(sums[-1][-1] / k)
    return {"sum": sums, "mean": means}


@pytest.mark.parametrize("name", MODELS)
def test_choice_scores_equal_brute_force(name):
    lm = _lm(name)
    problems, texts = _problems_and_texts(lm)
    reference = _reference_scores(lm, problems, texts)
    for score, want in reference.items():
        backend = HFBackend(lm, answer_mode="choice", choice_score=score)
        got = backend.choice_scores(problems, texts)
        assert [len(row) for row in got] == [len(p.choices) for p in problems]
        assert [s for row in got for s in row] == pytest.approx([s for row in want for s in row], rel=1e-4, abs=1e-4)
        assert backend.likeliest_choices(problems, texts) == [row.index(max(row)) for row in want]


class LargestVocabularyTensor(TorchDispatchMode):
    """The most elements of any tensor an op makes whose last dimension is the vocabulary (weights,
    and views of them such as the transposed output projection, aside)."""

    def __init__(self, vocab: int, params):
        super().__init__()
        self.vocab, self.largest = vocab, 0
        self.weights = {p.untyped_storage().data_ptr() for p in params}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.ndim and t.shape[-1] == self.vocab
                    and t.untyped_storage().data_ptr() not in self.weights):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_choice_scoring_never_makes_sequence_by_vocabulary_logits(name):
    """Nothing larger than [rows, choice tokens + 1, vocabulary]: the full-sequence logits (tens of GB
    for Qwen2-VL-2B at batch 16) are never made."""
    lm = _lm(name)
    problems, texts = _problems_and_texts(lm)
    starts = [(t, answer_start(c)) for p, t in zip(problems, texts) for c in p.choices]
    n_max = max(lm.family.continuation_tokens(lm.tokenizer, t, s, len(ANSWER_HEAD)) for t, s in starts)
    seq = encode_texts(lm, [p for p in problems for _ in p.choices], [t for t, _ in starts],
                       [s for _, s in starts])["input_ids"].shape[1]
    vocab = lm.model.config.get_text_config().vocab_size
    with LargestVocabularyTensor(vocab, lm.model.parameters()) as probe:
        HFBackend(lm, answer_mode="choice").choice_scores(problems, texts)
    assert 0 < probe.largest <= len(starts) * (n_max + 1) * vocab
    assert len(starts) * seq * vocab > 10 * probe.largest  # what the full-sequence logits would be


@pytest.mark.parametrize("name", MODELS)
def test_choice_mode_output_is_the_forced_answer_then_the_explanation(name):
    lm = _lm(name)
    problems, texts = _problems_and_texts(lm, limit=3)
    backend = HFBackend(lm, max_new_tokens=6, answer_mode="choice")
    picks = backend.likeliest_choices(problems, texts)
    generations = backend.generate(problems, [build_prompt(p, "QTCH") for p in problems])
    for g, p, i in zip(generations, problems, picks):
        assert g.raw_output.startswith(answer_prefix(p.choices[i]))
        assert parse_output(g.raw_output, p.choices).answer_index == i


def test_unknown_choice_score_is_refused():
    with pytest.raises(SciqaError, match="unknown choice score 'median'; accepted: sum, mean"):
        HFBackend(_lm("tiny-llava"), answer_mode="choice", choice_score="median")
