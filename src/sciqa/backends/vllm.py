"""Offline batched inference with vLLM (``pip install -e '.[vllm]'``, CUDA machines).

    sciqa benchmark --backend vllm --model Qwen/Qwen2-VL-2B-Instruct --batch-size 64
    sciqa benchmark --backend vllm --model mistralai/Pixtral-12B-2409 --tensor-parallel 4 --max-model-len 8192

Sampling is the HF backend's: greedy, ``max_tokens`` = ``--max-new-tokens``, stop at the family's
end-of-turn token, then ``family.clean_output`` cuts leaked turn markers. Models in Hugging Face
format get the very prompt text the HF backend renders (the processor's chat template, image
first) with the image as multi-modal data, so both backends see the same inputs; models in
Mistral's own format (``params.json``, e.g. mistralai/Pixtral-12B-2409) go through ``LLM.chat``
with Mistral's tokenizer. vLLM serves LoRA adapters only (language side, through ``LoRARequest``);
prefix adapters (pkv, peft prefix) were never supported by vLLM: score them with ``--backend hf``.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from sciqa.backends.base import Backend, Generation
from sciqa.data.problems import Problem
from sciqa.errors import SciqaError

INSTALL_HINT = "backend 'vllm' needs vLLM, which is not installed: pip install -e '.[vllm]' (CUDA machines only)"


def lora_folder(adapter: str) -> tuple[Path, int]:
    """The PEFT LoRA folder vLLM loads and its rank: a PEFT LoRA folder itself, or a sciqa adapter
    folder's ``peft/`` export; any other adapter kind is refused with the fix."""
    from sciqa.adapters import SERVING_FOLDER

    folder = Path(adapter).expanduser()
    if (folder / SERVING_FOLDER / "adapter_config.json").exists():  # a sciqa LoRA adapter folder
        folder = folder / SERVING_FOLDER
    cfg_file = folder / "adapter_config.json"
    kind = ""
    if cfg_file.exists():
        conf = json.loads(cfg_file.read_text())
        kind = str(conf.get("peft_type") or conf.get("variant") or "").upper()
        if kind == "LORA" and "peft_type" in conf:
            return folder.resolve(), int(conf.get("r", 8))
    what = f" (it is {kind.lower()})" if kind and kind != "LORA" else ""
    raise SciqaError(f"backend 'vllm' serves LoRA adapters only; '{adapter}' is not a LoRA adapter vLLM can "
                     f"load{what}: score prefix adapters with --backend hf")


def is_mistral_format(model: str, revision: str | None = None) -> bool:
    """Mistral's own checkpoint format (params.json, no HF config.json): vLLM needs mistral modes."""
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "params.json").exists() and not (path / "config.json").exists()
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(model, "params.json", revision=revision)
        return True
    except Exception:  # noqa: BLE001 - missing file, offline, unknown repo: not Mistral format
        return False


class VLLMBackend(Backend):
    name = "vllm"

    @classmethod
    def check(cls, cfg) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise SciqaError(INSTALL_HINT)

    @classmethod
    def from_config(cls, cfg, adapter: str | None = None) -> VLLMBackend:
        cls.check(cfg)
        lora_path, rank = lora_folder(adapter) if adapter else (None, 0)
        try:
            import vllm
        except ImportError as exc:
            raise SciqaError(f"{INSTALL_HINT} ({exc})") from None
        from sciqa import models

        revision = cfg.revision or None
        mistral = is_mistral_format(cfg.model, revision)
        if mistral:
            path, family, processor = cfg.model, models.family("pixtral"), None
        else:
            path, family = models.resolve(cfg.model, revision)
            processor = family.load_processor(path, revision)
        kwargs = dict(model=path, revision=revision, tensor_parallel_size=cfg.tensor_parallel,
                      gpu_memory_utilization=cfg.gpu_memory_utilization,
                      limit_mm_per_prompt={"image": cfg.max_images}, dtype=cfg.dtype, seed=0)
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.cpu_offload_gb:
            kwargs["cpu_offload_gb"] = cfg.cpu_offload_gb
        if family.processor_kwargs:  # the same pixel budget as the HF backend
            kwargs["mm_processor_kwargs"] = dict(family.processor_kwargs)
        if mistral:
            kwargs.update(tokenizer_mode="mistral", config_format="mistral", load_format="mistral")
        if rank:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (rank - 1).bit_length()), max_loras=1)
        llm = vllm.LLM(**kwargs)
        lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, str(lora_path))
        return cls(llm, family, processor, cfg.max_new_tokens, lora)

    def __init__(self, llm, family, processor=None, max_new_tokens: int = 256, lora=None):
        """``processor``: the HF processor that renders prompts; None = Mistral format (``LLM.chat``)."""
        from vllm import SamplingParams

        self.llm, self.family, self.processor, self.lora = llm, family, processor, lora
        stop_ids = [family.end_of_turn_id(processor.tokenizer)] if processor is not None else None
        # skip_special_tokens=False: keep markers in the text so clean_output can cut them, as in HF
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                     skip_special_tokens=False)

    def requests(self, problems: list[Problem], prompts: list[str]) -> list:
        """HF format: prompt dicts with the image as multi-modal data; Mistral format: chat messages."""
        if self.processor is None:
            from sciqa.backends.openai import image_data_url

            return [[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(p.image())}},
                {"type": "text", "text": text}]}] for p, text in zip(problems, prompts)]
        return [{"prompt": self.family.render_prompt(self.processor, text), "multi_modal_data": {"image": p.image()}}
                for p, text in zip(problems, prompts)]

    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        reqs = self.requests(problems, prompts)
        kw = {"lora_request": self.lora} if self.lora is not None else {}
        if self.processor is None:
            outs = self.llm.chat(reqs, self.params, use_tqdm=False, **kw)
        else:
            outs = self.llm.generate(reqs, self.params, use_tqdm=False, **kw)
        return [self.to_generation(o) for o in outs]

    def to_generation(self, request_output) -> Generation:
        """vLLM's RequestOutput -> Generation: first completion, markers cut, 'stop' or 'length'."""
        out = request_output.outputs[0]
        reason = "length" if out.finish_reason == "length" else "stop" if out.finish_reason == "stop" \
            else str(out.finish_reason)
        return Generation(raw_output=self.family.clean_output(out.text), finish_reason=reason,
                          n_output_tokens=len(out.token_ids))
