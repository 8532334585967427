"""The four settings hold exactly the parts they name, in the study's protocol."""
import pytest

from sciqa.data import load_problems
from sciqa.data.prompts import INSTRUCTION, SETTINGS, build_prompt, target_json

PROBLEM = load_problems("sample", "validation")[0]


def test_exact_text_qtch():
    p = PROBLEM
    assert build_prompt(p, "QTCH") == "\n".join([
        f"Question: {p.question}", f"Task: {p.task}",
        "Choices: " + " ".join(f"({i}) {c}" for i, c in enumerate(p.choices)),
        f"Hint: {p.hint or 'N/A'}", INSTRUCTION])
    assert "Choices: (0) " in build_prompt(p, "QTCH")


@pytest.mark.parametrize("setting,lecture,solution", [
    ("QTCH", False, False), ("QTCHL", True, False), ("QTCHLS", True, True), ("QTCHS", False, True)])
def test_setting_parts(setting, lecture, solution):
    text = build_prompt(PROBLEM, setting)
    lines = [line.split(":", 1)[0] for line in text.split("\n") if line[:1].isupper() and ":" in line]
    expected = ["Question", "Task", "Choices", "Hint"] + ["Lecture"] * lecture + ["Solution"] * solution
    assert [x for x in lines if x in ("Question", "Task", "Choices", "Hint", "Lecture", "Solution")][:len(expected)] \
        == expected
    assert ("Lecture: " in text) is lecture and ("Solution: " in text) is solution
    assert (PROBLEM.solution in text) is solution
    assert text.endswith(INSTRUCTION)
    assert set(SETTINGS) == {"QTCH", "QTCHL", "QTCHLS", "QTCHS"}


def test_empty_hint_is_na_and_target_json():
    p = next(p for p in load_problems("sample", "train") if not p.hint.strip())
    assert "\nHint: N/A\n" in build_prompt(p, "QTCH")
    assert target_json("yes", "Because.") == '{"answer": "yes", "solution": "Because."}'


# Snapshots (as lmms-eval's prompt_stability): the rendered turn of each family, with the image
# placeholder first in the user turn and the markers generation stops at.
RENDERED = {
    "tiny-qwen2-vl": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>PROMPT<|im_end|>\n<|im_start|>assistant\n",
                      "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
    "tiny-llava": ("USER: <image>\nPROMPT ASSISTANT:", "</s>", ("USER:", "\nUSER", "ASSISTANT:")),
    "tiny-paligemma": ("<image>PROMPT", "<eos>", ()),
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendered_turn_per_family(name):
    from sciqa import models

    path, fam = models.resolve(name)
    text, eot, markers = RENDERED[name]
    assert fam.render_prompt(fam.load_processor(path, None), "PROMPT") == text
    assert (fam.end_of_turn, fam.turn_markers) == (eot, markers)


def test_families_are_matched_by_config_not_only_model_type():
    """mistral-community/pixtral-12b is a llava config with a pixtral vision tower: Pixtral's turns."""
    from transformers import LlavaConfig, PaliGemmaConfig, PixtralVisionConfig, Qwen2VLConfig

    from sciqa.models import family_of

    assert family_of(LlavaConfig(vision_config=PixtralVisionConfig().to_dict())).turn_markers == ("[INST]", "[/INST]")
    assert [family_of(c).name for c in (LlavaConfig(), Qwen2VLConfig(), PaliGemmaConfig())] == [
        "llava", "qwen2_vl", "paligemma"]
