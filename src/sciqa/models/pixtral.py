"""Pixtral through transformers' LLaVA class (mistral-community/pixtral-12b); Mistral-format weights: --backend vllm."""
from sciqa.models.base import Family

FAMILY = Family(name="pixtral", model_class="LlavaForConditionalGeneration", end_of_turn="</s>",
                turn_markers=("[INST]", "[/INST]"),  # the study's Pixtral outputs ran on into a new [INST] turn
                model_types=("llava",), vision_types=("pixtral",))  # a llava config whose vision tower is pixtral
