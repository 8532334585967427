"""vLLM offline batches, greedy: the prompt text the HF backend renders (Mistral format: ``LLM.chat``); LoRA only."""
import importlib.util
import json
from pathlib import Path

from huggingface_hub import hf_hub_download

from sciqa import models
from sciqa.adapters import SERVING_FOLDER
from sciqa.backends import Backend, Generation
from sciqa.backends.openai import chat_messages
from sciqa.data import Problem
from sciqa.errors import SciqaError

INSTALL_HINT = "backend 'vllm' needs vLLM, which is not installed: pip install -e '.[vllm]' (CUDA machines only)"


def lora_folder(adapter: str) -> tuple[Path, int]:
    """The PEFT LoRA folder vLLM loads (the folder itself or a sciqa adapter's ``peft/`` export) and its rank."""
    folder = Path(adapter).expanduser()
    folder = folder / SERVING_FOLDER if (folder / SERVING_FOLDER / "adapter_config.json").exists() else folder
    conf_file = folder / "adapter_config.json"
    conf = json.loads(conf_file.read_text()) if conf_file.exists() else {}
    if str(conf.get("peft_type")).upper() == "LORA":
        return folder.resolve(), int(conf.get("r", 8))
    kind = str(conf.get("peft_type") or conf.get("variant") or "lora").lower()
    what = "" if kind == "lora" else f" (it is {kind})"
    raise SciqaError(f"backend 'vllm' serves LoRA adapters only; '{adapter}' is not a LoRA adapter vLLM can "
                     f"load{what}: score prefix adapters with --backend hf")


def is_mistral_format(model: str, revision: str | None = None) -> bool:
    """Mistral's own checkpoint format (params.json, no HF config.json)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return (path / "params.json").exists() and not (path / "config.json").exists()
    try:
        return bool(hf_hub_download(model, "params.json", revision=revision))
    except Exception:  # noqa: BLE001 - missing file, offline, unknown repo: not Mistral format
        return False


class VLLMBackend(Backend):
    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if importlib.util.find_spec("vllm") is None:
            raise SciqaError(INSTALL_HINT)

    def __init__(self, cfg, adapter: str | None = None):
        lora_path, rank = lora_folder(adapter) if adapter else (None, 0)
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise SciqaError(f"{INSTALL_HINT} ({exc})") from None
        kwargs = dict(tensor_parallel_size=cfg.tensor_parallel, gpu_memory_utilization=cfg.gpu_memory_utilization,
                      limit_mm_per_prompt={"image": cfg.max_images}, dtype=cfg.dtype, seed=0)
        kwargs |= {k: v for k, v in (("max_model_len", cfg.max_model_len), ("cpu_offload_gb", cfg.cpu_offload_gb)) if v}
        if rank:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (rank - 1).bit_length()), max_loras=1)
        revision = cfg.revision or None
        if mistral := is_mistral_format(cfg.model, revision):  # no HF processor: LLM.chat renders the prompts
            path, self.family, self.processor = cfg.model, models.family("pixtral"), None
            kwargs.update(tokenizer_mode="mistral", config_format="mistral", load_format="mistral")
        else:
            path, self.family = models.resolve(cfg.model, revision)
            self.processor = self.family.load_processor(path, revision)
        if self.family.processor_kwargs:  # the same pixel budget as the HF backend
            kwargs["mm_processor_kwargs"] = dict(self.family.processor_kwargs)
        self.llm = vllm.LLM(model=path, revision=revision, **kwargs)
        self.lora = LoRARequest("adapter", 1, str(lora_path)) if adapter else None
        stop_ids = None if mistral else [self.family.end_of_turn_id(self.processor.tokenizer)]
        self.params = vllm.SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, stop_token_ids=stop_ids,
                                          skip_special_tokens=False)  # markers kept for clean_output, as in HF

    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        kw = {"lora_request": self.lora} if self.lora is not None else {}
        if self.processor is None:
            chats = [chat_messages(p.image(), text) for p, text in zip(problems, prompts)]
            outs = self.llm.chat(chats, self.params, use_tqdm=False, **kw)
        else:
            reqs = [{"prompt": self.family.render_prompt(self.processor, text),
                     "multi_modal_data": {"image": p.image()}} for p, text in zip(problems, prompts)]
            outs = self.llm.generate(reqs, self.params, use_tqdm=False, **kw)
        return [Generation(raw_output=self.family.clean_output(o.outputs[0].text), n_output_tokens=len(
            o.outputs[0].token_ids), finish_reason=str(o.outputs[0].finish_reason)) for o in outs]
