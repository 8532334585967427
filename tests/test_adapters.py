"""Adapters on the tiny models: masking, prefix reaching generate(), save/load, refusals."""
from __future__ import annotations

import pytest
import torch

from helpers import collate, encode_prompts
from sciqa import models
from sciqa.adapters import attach, check_variant, load_adapter
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt, target_json
from sciqa.errors import SciqaError
from sciqa.train.collate import IGNORE, Example, token_loss_sum

MODELS = ["tiny-qwen2-vl", "tiny-llava", "tiny-paligemma"]


@pytest.fixture(scope="module")
def problems():
    return load_problems("sample", "train", limit=3)


def _lm(name):
    return models.load(name, dtype="float32", device="cpu")


def _mm(inputs):
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}


def with_completion(lm, inputs, tokens: torch.Tensor) -> dict:
    """``inputs`` followed by completion ``tokens`` (batch, k): every per-token input takes the
    family's completion value there (mask 1, PaliGemma's token type 1, Qwen2-VL's mm type 0)."""
    ids = inputs["input_ids"]
    out = dict(inputs, input_ids=torch.cat([ids, tokens], 1))
    for k, v in inputs.items():
        if k != "input_ids" and torch.is_tensor(v) and v.shape == ids.shape:
            out[k] = torch.cat([v, v.new_full(tokens.shape, lm.family.completion_value(k))], 1)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_loss_is_cross_entropy_over_target_tokens_only(name, problems):
    """Collated batch (right padding, images) gives exactly the hand-computed CE of each example's
    target + end-of-turn tokens, with the prompt and padding ignored."""
    lm = _lm(name)
    exs = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution[: 20 + 40 * i]))
           for i, p in enumerate(problems[:2])]
    batch = collate(lm, exs)
    labels = batch.pop("labels")
    with torch.no_grad():
        loss, n = token_loss_sum(lm.model(**batch).logits, labels)
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    hand, count = 0.0, 0
    for i, ex in enumerate(exs):
        enc = lm.family.encode(lm.processor, [lm.family.render_prompt(lm.processor, ex.prompt)], [ex.problem.image()])
        target = lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [eot]
        lm.family.reset_state(lm.model)
        with torch.no_grad():
            logits = lm.model(**with_completion(lm, enc, torch.tensor([target]))).logits[0]
        n_prompt = enc["input_ids"].shape[1]
        pred = logits[n_prompt - 1: n_prompt - 1 + len(target)]
        hand += float(torch.nn.functional.cross_entropy(pred, torch.tensor(target), reduction="sum"))
        count += len(target)
        # labels: -100 everywhere but the target (prompt and right padding)
        assert labels[i].ne(IGNORE).sum() == len(target)
        assert labels[i, n_prompt: n_prompt + len(target)].tolist() == target
    assert n == count
    assert float(loss) / n == pytest.approx(hand / count, rel=1e-4)


def _reference_greedy(adapted, lm, inputs, steps):
    """Greedy decoding that recomputes the whole forward pass, prefix included, at every step."""
    new = inputs["input_ids"][:, :0]
    with torch.no_grad():
        for _ in range(steps):
            logits = adapted(**with_completion(lm, inputs, new)).logits
            new = torch.cat([new, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return new


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("variant", ["pkv", "peft"])
def test_prefix_generate_equals_full_recompute_and_changes_output(name, variant, problems):
    lm = _lm(name)
    inputs = encode_prompts(lm, problems, [build_prompt(p, "QTCH") for p in problems])
    steps = 10
    base = lm.model.generate(**inputs, max_new_tokens=steps, do_sample=False, eos_token_id=-1,
                             pad_token_id=lm.tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    torch.manual_seed(0)
    adapted = attach(lm, variant, {"prefix_len": 6, "prefix_projection": True}).eval()
    with torch.no_grad():  # a clearly non-trivial prefix
        for p in adapted.encoder.parameters():
            p.mul_(3)
    got = adapted.generate(**inputs, max_new_tokens=steps, do_sample=False, eos_token_id=-1,
                           pad_token_id=lm.tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    assert got.shape == (len(problems), steps)
    assert got.tolist() == _reference_greedy(adapted, lm, inputs, steps).tolist()
    assert got.tolist() != base.tolist()


def test_prefix_keeps_real_token_positions(problems):
    """Real tokens keep the positions the base model gives them (Qwen2-VL's 3-D mrope ones)."""
    from sciqa.adapters.prefix import real_positions

    lm = _lm("tiny-qwen2-vl")
    inputs = encode_prompts(lm, problems, [build_prompt(p, "QTCH") for p in problems])
    ours, nxt = real_positions(lm.model, inputs["input_ids"], inputs["attention_mask"], _mm(inputs))
    theirs, deltas = lm.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                   inputs["image_grid_thw"], None, inputs["attention_mask"])
    assert torch.equal(ours, theirs)
    assert nxt.tolist() == (deltas[:, 0] + inputs["attention_mask"].sum(-1)).tolist()  # = max position + 1


@pytest.mark.parametrize("variant", ["pkv", "peft", "lora"])
def test_save_load_round_trip(variant, problems, tmp_path):
    lm = _lm("tiny-qwen2-vl")
    torch.manual_seed(1)
    adapted = attach(lm, variant, {"prefix_len": 4, "lora_r": 2})
    assert all(not p.requires_grad for p in lm.model.parameters() if not any(p is q for q in adapted.trainable_state().values()))
    assert adapted.n_trainable() > 0
    with torch.no_grad():
        for p in adapted.trainable_state().values():
            p.add_(torch.randn_like(p) * 0.5)
    adapted.save(tmp_path / "a", "tiny-qwen2-vl")
    inputs = encode_prompts(lm, problems, [build_prompt(p, "QTCH") for p in problems])
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=lm.tokenizer.pad_token_id)
    want = adapted.eval().generate(**inputs, **kw)
    loaded = load_adapter(_lm("tiny-qwen2-vl"), tmp_path / "a")
    for k, v in adapted.trainable_state().items():
        assert torch.equal(loaded.model.trainable_state()[k], v)
    assert torch.equal(loaded.model.generate(**inputs, **kw), want)
    base = _lm("tiny-qwen2-vl").model.generate(**inputs, **kw)
    assert not torch.equal(base, want)


def test_refusals(tmp_path):
    lm = _lm("tiny-qwen2-vl")
    with pytest.raises(SciqaError, match="unknown adapter variant 'nope'"):
        check_variant("nope")
    with pytest.raises(ValueError, match="gradient checkpointing"):
        attach(lm, "pkv", {"prefix_len": 2}).enable_gradient_checkpointing()
    attach(_lm("tiny-qwen2-vl"), "pkv", {"prefix_len": 2}).save(tmp_path / "a", "tiny-qwen2-vl")
    with pytest.raises(SciqaError, match="trained on 'tiny-qwen2-vl'"):
        load_adapter(_lm("tiny-llava"), tmp_path / "a")


def _processed_together(lm, examples, max_length=0):
    """The reference batch: the processor over all prompts and images in one call, then each
    target appended (what ``collate`` did before examples were encoded one by one, once per run)."""
    texts = [lm.family.render_prompt(lm.processor, ex.prompt) for ex in examples]
    enc = lm.family.encode(lm.processor, texts, [ex.problem.image() for ex in examples], padding_side="right")
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    targets = [lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [eot] for ex in examples]
    lengths = enc["attention_mask"].sum(-1).tolist()
    targets = [t[: max(0, max_length - n)] if max_length else t for t, n in zip(targets, lengths)]
    width = max(n + len(t) for n, t in zip(lengths, targets))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eot
    rows = []
    for i, (n, t) in enumerate(zip(lengths, targets)):
        row = with_completion(lm, {k: v[i: i + 1, :n] for k, v in enc.items() if v.shape == enc["input_ids"].shape},
                              torch.tensor([t], dtype=torch.long))
        row["labels"] = torch.tensor([[IGNORE] * n + t])
        rows.append({k: torch.nn.functional.pad(v, (0, width - v.shape[1]), value=pad if k == "input_ids"
                                                else IGNORE if k == "labels" else 0) for k, v in row.items()})
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    return {**batch, **{k: v for k, v in enc.items() if k not in batch}}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("max_length", [0, 300])
def test_examples_encoded_once_collate_like_the_processor_over_the_batch(name, max_length, problems, monkeypatch):
    """Training encodes each example once per run and cuts batches from the tensors: every input,
    padding included, equals the processor's batch; so do Qwen2-VL's precomputed rotary positions
    (those ``get_rope_index`` gives the whole batch), and so does the fallback for images past the
    per-run budget."""
    from sciqa.adapters.prefix import real_positions
    from sciqa.train import collate as collation

    lm = _lm(name)
    exs = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution[: 20 + 60 * i]))
           for i, p in enumerate(problems)]
    want = _processed_together(lm, exs, max_length)
    encoded = collation.encode_examples(lm, exs, max_length, positions=True)
    got = collation.collate_encoded(lm, encoded)
    positions = got.pop("position_ids", None)
    assert sorted(got) == sorted(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    if name == "tiny-qwen2-vl":
        assert torch.equal(positions, real_positions(lm.model, want["input_ids"], want["attention_mask"], want)[0])
    else:
        assert positions is None  # a cumulative sum: nothing worth keeping
    assert len({id(e.images) for e in encoded}) == 1  # the one placeholder image, kept once
    monkeypatch.setattr(collation, "IMAGE_CACHE_BYTES", 0)
    unkept = collation.encode_examples(lm, exs, max_length)
    assert all(e.images is None for e in unkept)
    again = collation.collate_encoded(lm, unkept)
    assert sorted(again) == sorted(want) and all(torch.equal(again[k], want[k]) for k in want)


@pytest.mark.parametrize("variant", ["pkv", "peft", "lora"])
def test_precomputed_positions_give_the_same_forward(variant, problems):
    """A training batch's precomputed rotary positions replace the forward's own computation exactly."""
    from sciqa.train.collate import collate_encoded, encode_examples

    lm = _lm("tiny-qwen2-vl")
    torch.manual_seed(0)
    adapted = attach(lm, variant, {"prefix_len": 4, "lora_r": 2})
    exs = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution)) for p in problems]
    batch = collate_encoded(lm, encode_examples(lm, exs, positions=True))
    batch.pop("labels")
    with torch.no_grad():
        lm.family.reset_state(lm.model)
        given = adapted(**batch).logits
        batch.pop("position_ids")
        lm.family.reset_state(lm.model)
        computed = adapted(**batch).logits
    assert torch.equal(given, computed)
