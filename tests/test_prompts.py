"""The four settings hold exactly the parts they name, in the study's protocol."""
import pytest

from sciqa.data import load_problems
from sciqa.prompts import INSTRUCTION, SETTINGS, build_prompt, target_json

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
