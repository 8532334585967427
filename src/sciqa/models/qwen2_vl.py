"""Qwen2-VL (e.g. Qwen/Qwen2-VL-2B-Instruct): ChatML turns, multimodal rotary positions."""
import json
from pathlib import Path

from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.utils import cached_file

from sciqa.models.base import Family


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Without the video processor, which needs torchvision (not installable beside our torch)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


class Qwen2VLFamily(Family):
    def load_processor(self, path: str, revision: str | None):
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, revision=revision, **self.processor_kwargs)
        template = tokenizer.chat_template  # the processor's own template file where the repo has one
        for name in ("chat_template.jinja", "chat_template.json"):
            if found := cached_file(path, name, revision=revision, _raise_exceptions_for_missing_entries=False):
                text = Path(found).read_text(encoding="utf-8")
                template = json.loads(text)["chat_template"] if name.endswith(".json") else text
                break
        return Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)

    def reset_state(self, model) -> None:
        # rope_deltas cached on the model goes stale across calls of different batch size (transformers#36009)
        for obj in (model, getattr(model, "model", None)):
            if obj is not None and hasattr(obj, "rope_deltas"):
                obj.rope_deltas = None


FAMILY = Qwen2VLFamily(
    name="qwen2_vl",
    model_class="Qwen2VLForConditionalGeneration",
    end_of_turn="<|im_end|>",
    turn_markers=("<|im_start|>", "<|endoftext|>"),
    # Cap the pixel budget: the default (up to 12.8 M pixels) makes thousands of image tokens.
    processor_kwargs={"min_pixels": 56 * 56, "max_pixels": 512 * 28 * 28},
)
