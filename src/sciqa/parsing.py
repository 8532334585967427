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
    """What an output says: a 0-based choice (or None), the answer as written, the explanation."""

    answer_index: int | None  # None = unmapped
    answer_text: str  # the answer as the model wrote it
    solution: str  # the explanation


# A JSON string value: opened by " or ', closed by the same quote when the next
# thing is a closing brace, another key or the end; a truncated output (no
# closing quote) runs to the end of the text.
_VALUE_END = r"""(?=\s*(?:,?\s*\}|,\s*["']?\w+["']?\s*:|,?\s*\Z|,?\s*```))"""
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
_MARKER = re.compile(r"\banswer\s*(?:is\b\s*:?|:)\s*(?:\*\*(?!\*)\s*)?", re.IGNORECASE)  # and "**Answer:** B"
# A choice label: "B", "(B)", "B.", "(1)", "1)", "Option B", "choice 2".
_LABEL = r"(?:(?:option|choice)\s*)?\(?(?P<label>[A-Za-z]|\d{1,2})\)?"
_LABEL_ONLY = re.compile(rf"{_LABEL}[.:)]?", re.IGNORECASE)
_LABEL_PREFIX = re.compile(rf"{_LABEL}(?:[.:)]|(?<=\))|\s*-)\s*(?P<rest>.+)", re.IGNORECASE | re.DOTALL)
# The answer span in free text ends at a sentence end, a line end, or an
# explanation marker ("BECAUSE:") - unless that end lies inside a choice's text
# ("Dear Ms. Allen,", "Your friend,\nCarla") or a leading label ("B.").
_SPAN_END = re.compile(
    r"[.!?](?=\s|\Z)|\n|(?=\b(?:because\b|(?:explanation|solution|reason)\s*:))", re.IGNORECASE
)
_LEADING_LABEL = re.compile(r"\s*\(?(?:[A-Za-z]|\d{1,2})[.:)]")
_EXPLANATION_LABEL = re.compile(
    r"^\s*(?:because\b\s*:?|(?:explanation|solution|reason(?:ing)?)\s*:)\s*", re.IGNORECASE
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
    return _parse_free_text(text, choices, number_base)


def _parse_free_text(text: str, choices: Sequence[str], number_base: int) -> Parsed:
    """Answer = the span after an answer marker, else the first sentence; solution = the rest.

    When the answer closes a chain of reasoning ("... so the answer is B."),
    nothing follows it, and the reasoning before it is the explanation.
    """
    marker = _MARKER.search(text)
    before, rest = (text[: marker.start()], text[marker.end() :]) if marker else ("", text)
    end = _span_end(rest, choices)
    answer_text = rest[:end].strip().rstrip(".,;:").strip()
    after = _EXPLANATION_LABEL.sub("", rest[end:].lstrip(".!?").strip(), count=1).strip()
    reasoning = re.sub(r"[^.!?\n]*\Z", "", before).strip()  # drop the "So the" lead-in
    return Parsed(_match_span(answer_text, choices, number_base), answer_text, after or reasoning)


def _span_end(text: str, choices: Sequence[str]) -> int:
    """Where the answer span ends: the first sentence/line end not inside a choice's text or a leading label.

    A choice's own final "." still ends the span ("...down to Logan. Eye color is ...").
    """
    protected = [(m.start(), m.end() - 1) for c in choices if c.strip() for m in re.finditer(_choice_pattern(c), text)]
    label = _LEADING_LABEL.match(text)
    protected += [label.span()] if label else []
    for end in _SPAN_END.finditer(text):
        if not any(start <= end.start() < stop for start, stop in protected):
            return end.start()
    return len(text)


def _choice_pattern(choice: str) -> re.Pattern:
    """A choice's words as whole words, any case, any whitespace between them."""
    words = r"\s+".join(re.escape(word) for word in choice.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def _match_span(span: str, choices: Sequence[str], number_base: int) -> int | None:
    """Resolve a span: exact choice text, a bare label, a label with text, else a whole-word mention."""
    same = _same_text(span, choices)
    if same:
        return same[0] if len(same) == 1 else None
    only = _LABEL_ONLY.fullmatch(span.strip(" *`,;"))
    if only:
        return _label_index(only.group("label"), len(choices), number_base)
    prefixed = _LABEL_PREFIX.fullmatch(span.strip())
    if prefixed:
        by_label = _label_index(prefixed.group("label"), len(choices), number_base)
        same = _same_text(prefixed.group("rest"), choices)
        by_text = same[0] if len(same) == 1 else None
        if by_text is not None and by_label is not None and by_text != by_label:
            return None  # "(0) apostrophe" with apostrophe at 1: contradictory, don't guess
        if by_text is not None or by_label is not None:
            return by_text if by_text is not None else by_label
    return _mentioned_choice(span, choices)


def _same_text(text: str, choices: Sequence[str]) -> list[int]:
    """Choices equal to the text, at the strictest level that finds any: some choices differ only in case."""
    for fold in (_exact, _unpunctuated, _norm):
        same = [i for i, choice in enumerate(choices) if fold(choice) == fold(text)]
        if same:
            return same
    return []


def _label_index(label: str, n_choices: int, number_base: int) -> int | None:
    """A letter (A = first) or a number in ``number_base``; out of range = unmapped."""
    index = int(label) - number_base if label.isdigit() else ord(label.upper()) - ord("A")
    return index if 0 <= index < n_choices else None


def _mentioned_choice(span: str, choices: Sequence[str]) -> int | None:
    """The one choice the span names as whole words; case and markup decide only between variants.

    "Yes, not no" names two choices (unmapped), but "A Breath of Fresh Air"
    names one of two choices that differ only in capitals.
    """
    found = _mentions(_norm(span), [_norm(c) for c in choices])
    for fold in (_unpunctuated, _exact):  # variants of one text (case, quotes vs italics): stricter decides
        if len(found) > 1 and len({_norm(choices[i]) for i in found}) == 1:
            found = _mentions(fold(span), [fold(c) if i in found else "" for i, c in enumerate(choices)])
    if len(found) == 1:
        return found.pop()
    if found or _norm(span) not in ("yes", "no"):
        return None
    # A bare "No" for a choice written "no, it isn't".
    starting = [i for i, choice in enumerate(choices) if re.match(rf"{_norm(span)}\b", _norm(choice))]
    return starting[0] if len(starting) == 1 else None


def _mentions(span: str, choices: list[str]) -> set[int]:
    """Choices found as whole words in the span, less those only found inside a longer found choice.

    "running" must not also count as "run", nor "New York City" as "New York".
    """
    hits = []
    for index, choice in enumerate(choices):
        if choice:
            pattern = rf"(?<!\w){re.escape(choice)}(?!\w)"
            hits += [(m.start(), m.end(), index) for m in re.finditer(pattern, span)]
    return {
        index
        for start, end, index in hits
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in hits)
    }


def _exact(text: str) -> str:
    """One space between words, nothing else changed."""
    return " ".join(text.split())


def _unpunctuated(text: str) -> str:
    """No quotes/markup/punctuation at the edges; case kept."""
    return _exact(text).strip(_EDGE_PUNCT)


def _norm(text: str) -> str:
    """Lower case, one space between words, no quotes/markup/punctuation at the edges."""
    return _unpunctuated(text.lower())


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
