"""Text-only causal LMs (SmolLM2, Qwen2.5, Llama): the text alone in one user turn, ended by the tokenizer's EOS."""
from dataclasses import replace

from transformers import AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LMS

from sciqa.errors import SciqaError
from sciqa.models.base import Family, LoadedModel


class CausalLMFamily(Family):
    def matches(self, config) -> bool:
        return getattr(config, "vision_config", None) is None and config.model_type in CAUSAL_LMS

    def load(self, name: str, path: str, revision: str | None, dtype: str, device: str,
             gpu_memory_gb: float = 0.0) -> LoadedModel:
        """The family bound to the tokenizer's turns: what differs between causal LMs is read from the model."""
        lm = super().load(name, path, revision, dtype, device, gpu_memory_gb)
        eos = lm.tokenizer.eos_token
        markers = tuple(t for t in lm.tokenizer.all_special_tokens if t and t != eos)
        return replace(lm, family=replace(self, end_of_turn=eos, turn_markers=markers))

    def load_processor(self, path: str, revision: str | None):
        """The tokenizer; a missing pad token pads with EOS (labels and attention masks hide padding)."""
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        if not tokenizer.chat_template:
            raise SciqaError(f"model '{path}' has no chat template: use an instruction-tuned (chat) model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def messages(self, prompt: str, target: str | None = None) -> list[dict]:
        return [{"role": "user", "content": prompt}] + ([] if target is None else [
            {"role": "assistant", "content": target}])

    def encode(self, processor, texts, images, continuations=None, padding_side="left"):
        """The tokenizer alone; the chat template already wrote any BOS."""
        texts = texts if continuations is None else [t + c for t, c in zip(texts, continuations)]
        return processor(texts, padding=True, padding_side=padding_side, add_special_tokens=False, return_tensors="pt")


FAMILY = CausalLMFamily(
    name="causal_lm", model_class="AutoModelForCausalLM",
    end_of_turn="<|im_end|>",  # ChatML until ``load`` binds the family to the model's tokenizer
    # before that (the openai backend): the markers of ChatML, Llama 3 and Mistral
    turn_markers=("<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "</s>"))
