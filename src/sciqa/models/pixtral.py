"""Pixtral through transformers' LLaVA class (mistral-community/pixtral-12b); ``[INST]`` turns.

The study's Pixtral outputs ran on into a new ``[INST]`` turn: it is a turn marker here.
mistralai/Pixtral-12B-2409 itself ships Mistral-format weights: use it with ``--backend vllm``.
"""
from sciqa.models.base import Family

FAMILY = Family(
    name="pixtral",
    model_class="LlavaForConditionalGeneration",
    end_of_turn="</s>",
    turn_markers=("[INST]", "[/INST]"),
    model_types=("llava",),  # mistral-community/pixtral-12b: a llava config whose vision tower is pixtral
    vision_types=("pixtral",),
)
