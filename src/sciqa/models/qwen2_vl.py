"""Qwen2-VL (e.g. Qwen/Qwen2-VL-2B-Instruct): ChatML turns, multimodal rotary positions."""
from transformers import Qwen2VLProcessor

from sciqa.models.base import Family


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Without the video processor, which needs torchvision (not installable beside our torch)."""

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [name for name in super().get_attributes() if name != "video_processor"]


class Qwen2VLFamily(Family):
    def load_processor(self, path: str, revision: str | None):
        """The processor's own chat template where the repo has one, else the tokenizer's."""
        processor = Qwen2VLImageOnlyProcessor.from_pretrained(path, revision=revision, **self.processor_kwargs)
        processor.chat_template = processor.chat_template or processor.tokenizer.chat_template
        return processor

    def reset_state(self, model) -> None:
        # rope_deltas cached on the model goes stale across calls of different batch size (transformers#36009)
        for obj in (model, getattr(model, "model", None)):
            if obj is not None and hasattr(obj, "rope_deltas"):
                obj.rope_deltas = None


FAMILY = Qwen2VLFamily(name="qwen2_vl", model_class="Qwen2VLForConditionalGeneration", end_of_turn="<|im_end|>",
                       turn_markers=("<|im_start|>", "<|endoftext|>"),
                       # a pixel budget: the default (up to 12.8 M pixels) makes thousands of image tokens
                       processor_kwargs={"min_pixels": 56 * 56, "max_pixels": 512 * 28 * 28})
