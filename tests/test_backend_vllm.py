"""The vllm backend's request building and output mapping, against a minimal stand-in of the two
vLLM classes it touches (``LLM``, ``SamplingParams``) injected as ``sys.modules['vllm']``: vLLM
itself cannot run on these CPU machines (benchmarks/gpu_smoke.sh covers the real thing)."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest


@dataclass
class FakeSamplingParams:
    temperature: float = 1.0
    max_tokens: int = 16
    stop_token_ids: list | None = None
    skip_special_tokens: bool = True


@dataclass
class FakeCompletion:
    text: str
    token_ids: list
    finish_reason: str


@dataclass
class FakeRequestOutput:
    outputs: list


class FakeLLM:
    """Records the constructor arguments and every call; answers from a script."""

    last = None

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.script = kwargs, [], []
        FakeLLM.last = self

    def _answer(self, kind, reqs, params, kw):
        self.calls.append((kind, reqs, params, kw))
        return [FakeRequestOutput([c]) for c in self.script[: len(reqs)]]

    def generate(self, reqs, params, use_tqdm=True, **kw):
        return self._answer("generate", reqs, params, kw)

    def chat(self, messages, params, use_tqdm=True, **kw):
        return self._answer("chat", messages, params, kw)


@dataclass
class FakeLoRARequest:
    name: str
    id: int
    path: str


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    mod.__spec__ = types.SimpleNamespace(name="vllm")  # find_spec() sees it
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = FakeLoRARequest
    for name, m in {"vllm": mod, "vllm.lora": lora, "vllm.lora.request": req}.items():
        monkeypatch.setitem(sys.modules, name, m)
    return mod


def config(**kw):
    from sciqa.steps.benchmark import BenchmarkConfig

    return BenchmarkConfig(**{"backend": "vllm", "model": "tiny-qwen2-vl", "max_new_tokens": 12, **kw})


def test_requests_sampling_and_outputs(fake_vllm):
    from helpers import encode_prompts
    from sciqa import models
    from sciqa.backends.vllm import VLLMBackend
    from sciqa.data import load_problems
    from sciqa.data.prompts import build_prompt

    cfg = config(tensor_parallel=4, max_model_len=8192, gpu_memory_utilization=0.8, max_images=1, cpu_offload_gb=2.0,
                 dtype="bfloat16")
    backend = VLLMBackend.from_config(cfg)
    llm = FakeLLM.last
    path, family = models.resolve("tiny-qwen2-vl")
    assert llm.kwargs == {"model": path, "revision": None, "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8,
                          "limit_mm_per_prompt": {"image": 1}, "dtype": "bfloat16", "seed": 0,
                          "max_model_len": 8192, "cpu_offload_gb": 2.0}
    p = backend.params  # greedy, the HF budget, stop at the family's end-of-turn token
    eot = family.end_of_turn_id(backend.processor.tokenizer)
    assert (p.temperature, p.max_tokens, p.stop_token_ids, p.skip_special_tokens) == (0.0, 12, [eot], False)

    problems = load_problems("sample", "validation", limit=3)
    prompts = [build_prompt(q, "QTCH") for q in problems]
    llm.script = [FakeCompletion('{"answer": "A"}', [5, 6, eot], "stop"),
                  FakeCompletion('{"answer": "B"}<|im_end|>\n<|im_start|>user\nmore', [1] * 12, "length"),
                  FakeCompletion("x", [7], "abort")]
    gens = backend.generate(problems, prompts)
    kind, reqs, params, kw = llm.calls[-1]
    assert kind == "generate" and params is p and kw == {}
    # the very prompt text the HF backend renders (chat template, image first), image as multi-modal data
    lm = models.load("tiny-qwen2-vl")
    hf_text = [lm.family.render_prompt(lm.processor, t) for t in prompts]
    assert [r["prompt"] for r in reqs] == hf_text
    assert all(r["multi_modal_data"]["image"].size == q.image().size for r, q in zip(reqs, problems))
    assert encode_prompts(lm, problems[:1], prompts[:1])["input_ids"].shape[0] == 1
    assert [(g.raw_output, g.finish_reason, g.n_output_tokens) for g in gens] == [
        ('{"answer": "A"}', "stop", 3), ('{"answer": "B"}', "length", 12), ("x", "abort", 1)]


def test_family_pixel_budget_goes_to_vllm(fake_vllm, monkeypatch):
    from sciqa import models
    from sciqa.backends import vllm as vb

    fam = models.family("qwen2_vl")  # the real family: its pixel budget, not the tiny model's
    path = models.resolve("tiny-qwen2-vl")[0]
    monkeypatch.setattr(models, "resolve", lambda name, revision=None: (path, fam))
    vb.VLLMBackend.from_config(config(model="Qwen/Qwen2-VL-2B-Instruct"))
    assert FakeLLM.last.kwargs["mm_processor_kwargs"] == fam.processor_kwargs
    assert "max_model_len" not in FakeLLM.last.kwargs and "cpu_offload_gb" not in FakeLLM.last.kwargs


def test_mistral_format_goes_through_chat(fake_vllm, tmp_path):
    from PIL import Image

    from sciqa.backends.vllm import VLLMBackend

    (tmp_path / "params.json").write_text("{}")
    backend = VLLMBackend.from_config(config(model=str(tmp_path), tensor_parallel=4))
    llm = FakeLLM.last
    assert llm.kwargs["tokenizer_mode"] == "mistral" and llm.kwargs["load_format"] == "mistral"
    assert backend.params.stop_token_ids is None  # Mistral's tokenizer: the model's own EOS
    llm.script = [FakeCompletion("The answer is 1.[INST] next", [1, 2, 3], "length")]
    problem = types.SimpleNamespace(image=lambda: Image.new("RGB", (4, 4)))
    gens = backend.generate([problem], ["Question: q"])
    kind, msgs, _, _ = llm.calls[-1]
    content = msgs[0][0]["content"]
    assert kind == "chat" and [c["type"] for c in content] == ["image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,") and content[1]["text"] == "Question: q"
    assert gens[0].raw_output == "The answer is 1." and gens[0].finish_reason == "length"


def test_lora_only(fake_vllm, tmp_path):
    from PIL import Image

    from sciqa.backends.vllm import VLLMBackend
    from sciqa.errors import SciqaError

    lora, prefix = tmp_path / "lora", tmp_path / "prefix"
    lora.mkdir(), prefix.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 12}))
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    backend = VLLMBackend.from_config(config(), adapter=str(lora))
    assert FakeLLM.last.kwargs["enable_lora"] is True and FakeLLM.last.kwargs["max_lora_rank"] == 16
    FakeLLM.last.script = [FakeCompletion("a", [1], "stop")]
    backend.generate([types.SimpleNamespace(image=lambda: Image.new("RGB", (4, 4)))], ["q"])
    assert FakeLLM.last.calls[-1][3]["lora_request"].path == str(lora.resolve())
    for folder in (prefix, tmp_path):  # a PEFT prefix adapter, or our own PKV folder (no adapter_config)
        with pytest.raises(SciqaError, match="LoRA adapters only.*--backend hf"):
            VLLMBackend.from_config(config(), adapter=str(folder))


def test_without_vllm_one_line_exit_2(cli, tmp_path, experiment):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    proc = cli("benchmark", "--backend", "vllm", "--limit", "2", "--workdir", str(tmp_path / "w"),
               cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sciqa: error: backend 'vllm' needs vLLM, which is not installed: " \
                                  "pip install -e '.[vllm]' (CUDA machines only)"
    assert "LoRA" in cli("benchmark", "--help", cwd=tmp_path).stdout


def test_score_with_a_lora_adapter_goes_through_vllm(fake_vllm, trained_adapter, experiment, tmp_path, monkeypatch):
    """`sciqa score --backend vllm`: the one generation config reaches the vllm backend, which loads
    the LoRA adapter's PEFT export; a prefix adapter is refused before any run starts."""
    from sciqa.errors import SciqaError
    from sciqa.steps.score import ScoreConfig, score
    from sciqa.steps.train import TrainConfig, train
    from sciqa.tracking import runs

    monkeypatch.setattr(FakeLLM, "_answer", lambda self, kind, reqs, params, kw: (
        self.calls.append((kind, reqs, params, kw)) or
        [FakeRequestOutput([FakeCompletion('{"answer": "x", "solution": "y"}', [1, 2], "stop")]) for _ in reqs]))
    runs.setup()
    small = dict(limit=2, val_limit=2, epochs=1, batch_size=2, max_length=0, workdir=str(tmp_path / "t"))
    lora = train(TrainConfig(variant="lora", **small)).run_id
    run = score(ScoreConfig(adapter_run=lora, backend="vllm", limit=3, max_new_tokens=4, tensor_parallel=2,
                            workdir=str(tmp_path / "s")))
    llm = FakeLLM.last
    request = llm.calls[-1][3]["lora_request"]
    peft_config = json.loads((tmp_path / "s" / "adapters" / lora / "adapter" / "peft" / "adapter_config.json").read_text())
    assert request.path.endswith("adapter/peft") and peft_config["peft_type"] == "LORA"
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["tensor_parallel_size"] == 2
    import mlflow

    r = mlflow.get_run(run.run_id)
    assert r.data.tags["sciqa.backend"] == "vllm" and r.data.metrics["rows"] == 3 and "acc" in r.data.metrics
    pkv = trained_adapter("pkv")
    with pytest.raises(SciqaError, match="cannot apply a 'pkv' adapter.*--backend hf"):
        score(ScoreConfig(adapter_run=pkv, backend="vllm", limit=3, workdir=str(tmp_path / "s")))
