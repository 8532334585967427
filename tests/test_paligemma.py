"""tiny-paligemma: a family model like the others, answers as PaliGemma's causal suffix.

PaliGemma's ``token_type_ids == 0`` is its bidirectional prefix block: a training target, a forced
answer start or a generated token marked 0 would see the tokens after it."""
from __future__ import annotations

import pytest
import torch
from test_adapters import with_completion

from helpers import collate
from sciqa import models
from sciqa.adapters import attach
from sciqa.backends.hf import HFBackend, answer_prefix, encode_texts
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt, target_json
from sciqa.train.collate import IGNORE, Example, token_loss_sum

MODEL = "tiny-paligemma"


@pytest.fixture(scope="module")
def problems():
    return load_problems("sample", "train", limit=4)


def _lm():
    return models.load(MODEL, dtype="float32", device="cpu")


def _examples(problems):
    """Targets of different lengths, so the collated rows are padded."""
    return [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution[: 10 + 30 * i]))
            for i, p in enumerate(problems)]


def _prompt_inputs(lm, ex):
    return lm.family.encode(lm.processor, [lm.family.render_prompt(lm.processor, ex.prompt)], [ex.problem.image()])


def test_loads_with_the_family_tokenizer_and_processor(problems):
    lm = _lm()
    assert type(lm.model).__name__ == "PaliGemmaForConditionalGeneration" and lm.family.name == "paligemma"
    assert type(lm.processor).__name__ == "PaliGemmaProcessor" and type(lm.tokenizer).__name__ == "GemmaTokenizer"
    assert lm.family.end_of_turn_id(lm.tokenizer) == lm.tokenizer.eos_token_id
    enc = _prompt_inputs(lm, Example(problems[0], "Why?", ""))
    assert lm.tokenizer.decode(enc["input_ids"][0]) == "<image>" * 4 + "<bos>Why?\n"  # one "\n", no warning
    assert "labels" not in enc and enc["token_type_ids"].eq(0).all()


def test_training_targets_see_only_earlier_tokens(problems):
    """Each target token's logits in the collated (right-padded) batch equal those of a forward on
    the sequence cut right after the token before it, so the loss is the causal one."""
    lm = _lm()
    exs = _examples(problems[:2])
    batch = collate(lm, exs)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = lm.model(**batch).logits
    loss, n = token_loss_sum(logits, labels)
    reference, count = 0.0, 0
    for i, ex in enumerate(exs):
        prompt = _prompt_inputs(lm, ex)
        n_prompt, target = prompt["input_ids"].shape[1], labels[i][labels[i] != IGNORE]
        for t in range(len(target)):
            with torch.no_grad():
                want = lm.model(**with_completion(lm, prompt, target[None, :t])).logits[0, -1]
            torch.testing.assert_close(logits[i, n_prompt - 1 + t], want, rtol=1e-4, atol=1e-5)
            reference += float(torch.nn.functional.cross_entropy(want, target[t]))
        count += len(target)
    assert n == count and float(loss) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("variant", ["pkv", "peft"])
def test_prefix_keeps_the_prefix_block_and_positions(variant, problems):
    """With a prefix, every real token sees the virtual tokens and otherwise the base model's mask
    (prompt block bidirectional, targets causal) and 1-based positions."""
    lm = _lm()
    batch = collate(lm, _examples(problems[:2]))
    batch.pop("labels")
    seen = []
    hook = lm.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["attention_mask"], kwargs["position_ids"])), with_kwargs=True)
    adapted = attach(lm, variant, {"prefix_len": 3})
    with torch.no_grad():
        lm.model(**batch)
        adapted(**batch)
    hook.remove()
    (base_mask, base_pos), (mask, pos) = seen
    for row, real in enumerate(batch["attention_mask"].bool()):
        assert torch.equal(mask[row, 0][real][:, 3:], base_mask[row, 0][real])
        assert mask[row, 0][real][:, :3].all()
        assert torch.equal(pos[row][real], base_pos[0][real])


def test_forced_answer_start_is_a_causal_suffix(problems):
    """Choice mode's forced answer start follows the processor's "\\n" as the suffix (type 1), with
    no end-of-sequence token after it."""
    lm = _lm()
    texts = [lm.family.render_prompt(lm.processor, build_prompt(p, "QTCH")) for p in problems[:2]]
    forced = [answer_prefix(p.choices[0]) for p in problems[:2]]
    inputs = encode_texts(lm, problems[:2], texts, forced)
    for row, (text, start) in enumerate(zip(texts, forced)):
        n = len(lm.tokenizer(start, add_special_tokens=False)["input_ids"])
        real = inputs["attention_mask"][row].bool()
        assert inputs["token_type_ids"][row][real].tolist()[-n - 1:] == [0] + [1] * n
        assert lm.tokenizer.decode(inputs["input_ids"][row][real]).endswith(text[len("<image>"):] + "\n" + start)


@pytest.mark.parametrize("answer_mode", ["free", "choice"])
def test_batched_greedy_equals_batch_of_one(answer_mode):
    backend = HFBackend(_lm(), max_new_tokens=12, answer_mode=answer_mode)
    problems = load_problems("sample", "validation", limit=4)
    prompts = [build_prompt(p, "QTCHL") for p in problems]
    batched = backend.generate(problems, prompts)
    single = [backend.generate([p], [t])[0] for p, t in zip(problems, prompts)]
    assert [g.raw_output for g in batched] == [g.raw_output for g in single]
    assert len({g.raw_output for g in batched}) > 1  # the outputs depend on the prompt


def test_prefix_training_lowers_the_loss(problems, tmp_path):
    from sciqa.train.loop import LoopConfig, train

    lm = _lm()
    adapted = attach(lm, "pkv", {"prefix_len": 4})
    history = train(adapted, lm, MODEL, _examples(problems), _examples(problems[:2]),
                    LoopConfig(epochs=3, lr=3e-2, batch_size=2, log_every=0), tmp_path,
                    log_metrics=lambda metrics, step: None, log_checkpoint=lambda folder: None)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05
