"""Map a raw model output to a choice index, the answer as written, and the explanation.

The prompt asks for ``{"answer": "<choice>", "solution": "..."}`` but models
answer in many shapes: fenced or broken JSON, letters, 0-based numbers, the
choice text inside a sentence. About one answer in six was lost to a strict
parser in the study, so this module is tolerant in *finding* the answer and
strict in *mapping* it: an answer that names no choice, or two different
choices, stays unmapped (``None``) and is counted, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Parsed", "parse_output"]


@dataclass(frozen=True)
class Parsed:
    answer_index: int | None  # None = unmapped
    answer_text: str  # the answer as the model wrote it
    solution: str  # the explanation


# A JSON string value: opened by " or ', closed by the same quote when the next
# thing is a closing brace, another key or the end; a truncated output (no
# closing quote) runs to the end of the text.
_VALUE_END = r"""(?=\s*(?:[,]?\s*\}|,\s*["']?\w+["']?\s*:|,?\s*\Z|,?\s*```))"""
_STRING = r"""(["'])(?P<text>.*?)(?:\1""" + _VALUE_END + r"""|\Z)"""
_ANSWER_FIELD = re.compile(
    r"""["']answer["']\s*:\s*(?:"""
    + _STRING
    + r"""|(?P<bare>[^,}\s][^,}\n]*))""",
    re.IGNORECASE | re.DOTALL,
)
_SOLUTION_FIELD = re.compile(
    r"""["'](?:solution|explanation)["']\s*:\s*""" + _STRING,
    re.IGNORECASE | re.DOTALL,
)

# "The answer is", "Answer:", "correct answer is:" - an explicit answer marker.
_MARKER = re.compile(r"\banswer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
# A choice label: "B", "(B)", "B.", "(1)", "1)", "Option B", "choice 2".
_LABEL = r"(?:(?:option|choice)\s*)?\(?(?P<label>[A-Za-z]|\d{1,2})\)?"
_LABEL_ONLY = re.compile(rf"{_LABEL}[.:)]?", re.IGNORECASE)
_LABEL_PREFIX = re.compile(rf"{_LABEL}(?:[.:)]|(?<=\))|\s*-)\s*(?P<rest>.+)", re.IGNORECASE | re.DOTALL)
# The answer span in free text ends at a sentence end, a line end, or an
# explanation marker ("BECAUSE:"); a leading label's own "." is not an end.
_SPAN = re.compile(
    r"\s*(?P<span>(?:\(?(?:[A-Za-z]|\d{1,2})[.:)]\s*)?.*?)"
    r"\s*(?:[.!?](?=\s|\Z)|\n|\Z|(?=\b(?:because|explanation|solution|reason)\s*:))",
    re.IGNORECASE | re.DOTALL,
)
_EXPLANATION_LABEL = re.compile(
    r"^\s*(?:because|explanation|solution|reason(?:ing)?)\s*:\s*", re.IGNORECASE
)
_EDGE_PUNCT = " \t\n\"'`*.,;:!?()[]{}"


def parse_output(raw: str, choices: Sequence[str], number_base: int = 0) -> Parsed:
    """Parse one output; JSON fields win, free text ("The answer is B. BECAUSE: ...") is the fallback.

    ``number_base`` says how bare numbers are labelled: 0 for this project's
    prompt (``(0) first``), 1 for external CSVs labelled from 1.
    """
    text = (raw or "").strip()
    answer = _ANSWER_FIELD.search(text)
    solution = _SOLUTION_FIELD.search(text)
    if answer or solution:
        answer_text = _field(answer, "bare")
        index = _match_span(answer_text, choices, number_base) if answer_text else None
        return Parsed(index, answer_text, _field(solution))
    return _parse_free_text(text.replace("**", ""), choices, number_base)


def _parse_free_text(text: str, choices: Sequence[str], number_base: int) -> Parsed:
    """Answer = the span after an answer marker, else the first sentence; solution = the rest.

    When the answer closes a chain of reasoning ("... so the answer is B."),
    nothing follows it, and the reasoning before it is the explanation.
    """
    marker = _MARKER.search(text)
    before, rest = (text[: marker.start()], text[marker.end() :]) if marker else ("", text)
    span = _SPAN.match(rest)
    answer_text = span.group("span").strip().rstrip(".,;:").strip()
    after = _EXPLANATION_LABEL.sub("", rest[span.end() :].strip(), count=1).strip()
    reasoning = re.sub(r"[^.!?\n]*\Z", "", before).strip()  # drop the "So the" lead-in
    return Parsed(_match_span(answer_text, choices, number_base), answer_text, after or reasoning)


def _match_span(span: str, choices: Sequence[str], number_base: int) -> int | None:
    """Resolve a span: exact choice text, a bare label, a label with text, else a whole-word mention."""
    norm = _norm(span)
    normalized = [_norm(c) for c in choices]
    if norm in normalized:
        return normalized.index(norm) if normalized.count(norm) == 1 else None
    only = _LABEL_ONLY.fullmatch(span.strip(" *`,;"))
    if only:
        return _label_index(only.group("label"), len(choices), number_base)
    prefixed = _LABEL_PREFIX.fullmatch(span.strip())
    if prefixed:
        by_label = _label_index(prefixed.group("label"), len(choices), number_base)
        rest = _norm(prefixed.group("rest"))
        by_text = normalized.index(rest) if normalized.count(rest) == 1 else None
        if by_text is not None and by_label is not None and by_text != by_label:
            return None  # "(0) apostrophe" with apostrophe at 1: contradictory, don't guess
        if by_text is not None or by_label is not None:
            return by_text if by_text is not None else by_label
    return _mentioned_choice(norm, normalized)


def _label_index(label: str, n_choices: int, number_base: int) -> int | None:
    """A letter (A = first) or a number in ``number_base``; out of range = unmapped."""
    index = int(label) - number_base if label.isdigit() else ord(label.upper()) - ord("A")
    return index if 0 <= index < n_choices else None


def _mentioned_choice(span: str, normalized: list[str]) -> int | None:
    """The one choice named as whole words in the span; a mention inside a longer named choice doesn't count.

    "running" must not also count as "run", and "New York City" not also as
    "New York"; two different choices left over means no answer.
    """
    hits = []
    for index, choice in enumerate(normalized):
        if choice:
            pattern = rf"(?<!\w){re.escape(choice)}(?!\w)"
            hits += [(m.start(), m.end(), index) for m in re.finditer(pattern, span)]
    kept = {
        index
        for start, end, index in hits
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in hits)
    }
    if len(kept) == 1:
        return kept.pop()
    if kept or span not in ("yes", "no"):
        return None
    # A bare "No" for a choice written "no, it isn't".
    starting = [i for i, choice in enumerate(normalized) if re.match(rf"{span}\b", choice)]
    return starting[0] if len(starting) == 1 else None


def _norm(text: str) -> str:
    """Lower case, one space between words, no quotes/markup/punctuation at the edges."""
    return " ".join(text.lower().split()).strip(_EDGE_PUNCT)


def _field(match: re.Match | None, bare: str | None = None) -> str:
    """A JSON field's value, quoted or (for a bare number) not, unescaped and stripped; "" when absent."""
    if match is None:
        return ""
    value = match.group("text")
    return _unescape(value if value is not None else match.group(bare)).strip()


def _unescape(value: str) -> str:
    """Decode JSON escapes (\\n, \\") where the value is valid JSON; keep it as written otherwise."""
    try:
        return json.loads(f'"{value}"'.replace("\\'", "'"), strict=False)
    except ValueError:
        return value
