"""The four prompt settings and the study's prompt protocol, kept so numbers stay comparable."""
import json

from sciqa.data import Problem
from sciqa.errors import SciqaError

# QTCH = question, task, choices, hint; L adds the lecture, S the solution
SETTINGS = {"QTCH": (), "QTCHL": ("lecture",), "QTCHLS": ("lecture", "solution"), "QTCHS": ("solution",)}
INSTRUCTION = (
    'Instruction: Answer in JSON style with two fields: "answer", one of the choices written exactly as '
    'given, and "solution", a short explanation. For example: {"answer": "<choice>", "solution": "<explanation>"}'
)


def build_prompt(problem: Problem, setting: str) -> str:
    if setting not in SETTINGS:
        raise SciqaError(f"unknown setting '{setting}'; accepted: {', '.join(SETTINGS)}")
    choices = " ".join(f"({i}) {c}" for i, c in enumerate(problem.choices))
    lines = [f"Question: {problem.question}", f"Task: {problem.task}", f"Choices: {choices}",
             f"Hint: {problem.hint.strip() or 'N/A'}"]
    lines += [f"{name.capitalize()}: {getattr(problem, name)}" for name in SETTINGS[setting]]
    return "\n".join([*lines, INSTRUCTION])


def target_json(answer: str, solution: str) -> str:
    """The answer the instruction asks for: the training target for golden and KD runs alike."""
    return json.dumps({"answer": answer, "solution": solution}, ensure_ascii=False)
