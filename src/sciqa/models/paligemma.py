"""PaliGemma (google/paligemma-3b-*): no chat template; the processor puts the image tokens first."""
from sciqa.models.base import Family


class PaliGemmaFamily(Family):
    def render_prompt(self, processor, prompt: str) -> str:
        # PaliGemma is a prefix-LM without turns: the processor adds <image> tokens and BOS itself.
        return prompt + "\n"


FAMILY = PaliGemmaFamily(
    name="paligemma",
    model_class="PaliGemmaForConditionalGeneration",
    end_of_turn="<eos>",
    turn_markers=(),
)
