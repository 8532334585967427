"""Text-only causal language models (SmolLM2, Qwen2.5, Llama, Mistral, ...): ScienceQA's text-only setting.

ScienceQA's text-only baselines answer every question from its text; an image question is then
answered without its picture (the bundled sample ships no image files, so a VLM sees only a blank
placeholder there anyway). ``uses_images = False`` says so for whoever reports a run.

Any config that ``AutoModelForCausalLM`` knows and that has no ``vision_config`` is this family's
(it comes last in the registry: every VLM family is tried first). The prompt is the text alone,
in a single user turn through the tokenizer's own chat template (SmolLM2-Instruct: ChatML, with its
default system turn); the turn ends at the tokenizer's end-of-sequence token (SmolLM2:
``<|im_end|>``), bound when the tokenizer is loaded, and output is cut at any other special token
that leaks into the text (``<|im_start|>``, ``<|endoftext|>``): none belongs in an answer.
"""
from __future__ import annotations

from dataclasses import replace

from sciqa.errors import SciqaError
from sciqa.models.base import Family, LoadedModel

# Before a tokenizer is loaded (e.g. the openai backend cleaning a remote model's text): the
# end-of-turn and new-turn markers of the common chat templates (ChatML, Llama 3, Mistral).
COMMON_MARKERS = ("<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "</s>")


class CausalLMFamily(Family):
    uses_images = False  # the prompt is the text only: image questions are answered without the picture

    def matches(self, config) -> bool:
        """Any config ``AutoModelForCausalLM`` can load that has no vision tower (VLM families come first)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LMS

        return getattr(config, "vision_config", None) is None and config.model_type in CAUSAL_LMS

    def load(self, name: str, path: str, revision: str | None, dtype: str, device: str,
             gpu_memory_gb: float = 0.0) -> LoadedModel:
        """The base loader (``AutoModelForCausalLM``), with the family bound to the tokenizer's turns."""
        lm = super().load(name, path, revision, dtype, device, gpu_memory_gb)
        return replace(lm, family=self.bound_to(lm.processor))

    def load_processor(self, path: str, revision: str | None):
        """The tokenizer is the whole processor; a missing pad token pads with end-of-sequence (labels
        mask padding and attention masks hide it, so which token fills it does not matter)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        if not tokenizer.chat_template:
            raise SciqaError(f"model '{path}' has no chat template: use an instruction-tuned (chat) model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def bound_to(self, tokenizer) -> CausalLMFamily:
        """This family with the tokenizer's end of turn (its EOS token) and its other special tokens
        as new-turn markers: what differs between causal LMs is read from the model, not listed here."""
        eos = tokenizer.eos_token
        markers = tuple(t for t in tokenizer.all_special_tokens if t and t != eos)
        return replace(self, end_of_turn=eos, turn_markers=markers)

    def messages(self, prompt: str, target: str | None = None) -> list[dict]:
        """One user turn of plain text (no image placeholder), plus the answer where given."""
        msgs = [{"role": "user", "content": prompt}]
        if target is not None:
            msgs.append({"role": "assistant", "content": target})
        return msgs

    def encode(self, processor, texts, images, continuations=None, padding_side="left"):
        """Rendered texts through the tokenizer; the images are not used. The chat template already
        wrote any BOS, so none is added (as ``apply_chat_template(tokenize=True)`` does)."""
        if continuations is not None:
            texts = [t + c for t, c in zip(texts, continuations)]
        return processor(texts, padding=True, padding_side=padding_side, add_special_tokens=False,
                         return_tensors="pt")


FAMILY = CausalLMFamily(
    name="causal_lm",
    model_class="AutoModelForCausalLM",
    end_of_turn="<|im_end|>",  # ChatML until bound to the model's tokenizer (load)
    turn_markers=COMMON_MARKERS,
)
