"""LLaVA-1.5 (e.g. llava-hf/llava-1.5-7b-hf): ``USER: <image>\\n... ASSISTANT:`` turns ended by ``</s>``."""
from sciqa.models.base import Family

FAMILY = Family(name="llava", model_class="LlavaForConditionalGeneration", end_of_turn="</s>",
                turn_markers=("USER:", "\nUSER", "ASSISTANT:"))
