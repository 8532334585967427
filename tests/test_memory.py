"""The GPU memory estimate behind ``--slurm-gpu auto`` (sciqa.slurm.memory) and the
hf backend's CPU offload: estimates against the measured peak of tiny models on CPU, real models
from their published configs, the choice of GPU type, the offload's ``from_pretrained`` arguments."""
from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoConfig

from sciqa.errors import SciqaError
from sciqa.slurm import memory

MB = 2 ** 20


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once (every op's outputs, freed when collected), on top
    of ``base`` (the weights, allocated before): PyTorch's own accounting, which CPU lacks."""

    def __init__(self, base: int):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = base

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                if id(storage) not in self.live and storage.nbytes():
                    self.live[id(storage)] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, id(storage))
        return out


def _measured(fn, module: torch.nn.Module) -> int:
    base = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for p in [*module.parameters(), *module.buffers()]}.values())
    with PeakTensorBytes(base) as tracker:
        fn()
    return tracker.peak


def _batch(name: str):
    from helpers import encode_prompts
    from sciqa import models
    from sciqa.data import load_problems
    from sciqa.data.prompts import build_prompt

    problems = load_problems("sample", "validation", False, 8)
    prompts = [build_prompt(p, "QTCH") for p in problems]
    lm = models.load(name, dtype="float32", device="cpu")
    path, fam = models.resolve(name)
    shape = memory.shape_of(AutoConfig.from_pretrained(path), fam)
    return lm, problems, prompts, encode_prompts(lm, problems, prompts), shape


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-llava"])
def test_generation_estimate_is_within_25_percent_of_the_measured_peak(name):
    from sciqa.backends.hf import HFBackend

    lm, problems, prompts, inputs, shape = _batch(name)
    backend = HFBackend(lm, max_new_tokens=32)
    measured = _measured(lambda: backend.generate(problems, prompts), lm.model)
    text = inputs["input_ids"].shape[1] - shape.image_tokens
    estimate = sum(memory.generation_bytes(shape, 4, len(problems), 32, prompt_tokens=text).values())
    print(f"{name} generation: estimate {estimate / MB:.1f} MB, measured {measured / MB:.1f} MB")
    assert abs(estimate - measured) <= 0.25 * measured


@pytest.mark.parametrize("name,variant,options", [
    ("tiny-qwen2-vl", "pkv", {"prefix_len": 50, "prefix_projection": False}),
    ("tiny-llava", "lora", {"lora_r": 8, "lora_alpha": 16, "lora_targets": "q_proj,k_proj,v_proj,o_proj"}),
])
def test_training_estimate_is_within_25_percent_of_the_measured_peak(name, variant, options):
    from sciqa.adapters import attach

    lm, _, _, inputs, shape = _batch(name)
    adapted = attach(lm, variant, options)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    ids = inputs["input_ids"]

    def step():  # one optimizer step on the batch: the peak of a training step
        logits = adapted(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # the optimizer's state exists from the first step on
    measured = _measured(step, adapted)
    estimate = sum(memory.training_bytes(shape, 4, len(ids), ids.shape[1], sum(p.numel() for p in trainable)).values())
    print(f"{name} {variant} training: estimate {estimate / MB:.1f} MB, measured {measured / MB:.1f} MB")
    assert abs(estimate - measured) <= 0.25 * measured


def _published():
    """Qwen2-VL-2B-Instruct, llava-1.5-7b-hf and Pixtral-12B as their config.json files give them."""
    from transformers import LlavaConfig, Qwen2VLConfig

    qwen = Qwen2VLConfig(
        text_config=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2), tie_word_embeddings=True)
    llava = LlavaConfig(
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768), vision_feature_layer=-2)
    pixtral = LlavaConfig(
        text_config=dict(model_type="mistral", hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=131072),
        vision_config=dict(model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=1024, patch_size=16), vision_feature_layer=-1)
    return {"Qwen2-VL-2B": (qwen, "qwen2_vl", 2.21e9), "LLaVA-1.5-7B": (llava, "llava", 7.06e9),
            "Pixtral-12B": (pixtral, "pixtral", 12.68e9)}


def test_real_models_from_published_configs_pick_the_gpus_that_hold_them():
    from sciqa import slurm
    from sciqa.models import family
    from sciqa.slurm.memory import choose

    profile = slurm.load_profile("bwunicluster")
    idle = {"v100": 8, "v100-dev": 0, "a100": 2, "h100": 1}
    picked = {}
    for name, (config, fam, params) in _published().items():
        shape = memory.shape_of(config, family(fam))
        assert shape.params == pytest.approx(params, rel=0.01)
        gb = (sum(memory.generation_bytes(shape, 2, 8, 512).values()) / memory.GB) + memory.CUDA_OVERHEAD_GB
        picked[name] = choose(profile, gb, idle=idle)[0]
        assert gb > shape.params * 2 / memory.GB  # at least the bf16 weights
    # 2B and 7B fit a V100-32GB (8 idle); Pixtral-12B in bf16 needs an A100/H100: the idler A100
    assert picked == {"Qwen2-VL-2B": "v100", "LLaVA-1.5-7B": "v100", "Pixtral-12B": "a100"}
    with pytest.raises(SciqaError, match=r"needs about 500.0 GB, the largest GPU is h100 with 94 GB"):
        choose(profile, 500.0, idle=idle)
    tie, candidates = choose(profile, 10.0, idle={"v100": 1, "v100-dev": 1, "a100": 1, "h100": 1})
    assert tie in ("v100", "v100-dev") and candidates == {"v100": 1, "v100-dev": 1, "a100": 1, "h100": 1}


def test_profile_gpu_memory_must_be_a_positive_number(tmp_path):
    from sciqa import slurm

    text = slurm.load_profile("local").path.read_text().replace("memory_gb = 40", 'memory_gb = "lots"')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SciqaError, match=r"\[gpus.a100\]: memory_gb must be a positive number"):
        slurm.load_profile(str(path))
    assert {t: g.memory_gb for t, g in slurm.load_profile("local").gpus.items()} == {"h100": 80.0, "a100": 40.0}


def test_offload_places_what_fits_on_the_gpu_and_the_rest_on_cpu(monkeypatch):
    from sciqa.models.base import placement

    assert placement(torch.device("cuda:1"), 0) == {}
    kw = placement(torch.device("cuda:1"), 12.5)
    assert kw["device_map"] == "auto" and kw["max_memory"][1] == "12.5GiB" and kw["max_memory"]["cpu"].endswith("GiB")
    with pytest.raises(SciqaError, match="offloads to CPU"):
        placement(torch.device("cpu"), 8)

    from sciqa import models
    from sciqa.backends.hf import HFBackend
    from sciqa.steps.benchmark import BenchmarkConfig

    seen = {}
    monkeypatch.setattr(models, "load", lambda *a, **k: seen.update(args=a, kwargs=k) or (_ for _ in ()).throw(
        RuntimeError("loaded")))
    with pytest.raises(RuntimeError, match="loaded"):
        HFBackend.from_config(BenchmarkConfig(model="tiny-llava", gpu_memory_gb=20))
    assert 20 in (*seen["args"], *seen["kwargs"].values())  # the option reaches the loader
