"""Map a raw model output to a choice index, the answer as written, and the explanation.

The prompt asks for ``{"answer": "<choice>", "solution": "..."}`` but models
answer in many shapes: fenced or broken JSON, nested objects, other keys,
booleans, letters, 0-based numbers, the choice text inside a sentence. About
one answer in six was lost to a strict parser in the study, so this module is
tolerant in *finding* the answer and strict in *mapping* it: an answer that
names no choice, or two different choices, stays unmapped (``None``) and is
counted, never guessed. ``Parsed.rule`` says which of ``RULES`` mapped it;
``FUZZY_RULES`` are those that read an answer rather than match it, so a
comparison can say how much of an accuracy rests on them.

Never by chance: a JSON answer cut off inside its string, or a phrase of
function words only ("The", "It has"), maps to nothing; a choice named after a
negation ("not a liquid") or inside a question ("Is it a solid?") is not named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CONFLICT", "FUZZY_RULES", "OTHER_ANSWER_KEYS", "RULES", "UNMAPPED", "Parsed", "parse_output",
           "rule_counts"]

# Which rule mapped an answer. From "json" to "contained": rules on the whole answer, tried in
# this order, the first that applies decides; then "mention"/"ordinal" on a sentence. Then rules on
# JSON without an answer field, and CONFLICT, the one rule that maps nothing.
RULES = (
    "json",  # the JSON "answer" field is a choice's text as written (curly quotes = straight)
    "text",  # a free-text answer is a choice's text as written
    "normalized_text",  # ... once case, spaces ("95 kilometers") and edge punctuation are folded
    "label",  # a letter: "B", "(B)", "Option B", "b) apostrophe"
    "number",  # a number, the 0-based index (see number_base): "1", "(1) apostrophe"
    "unknown_label",  # a label that names no choice, then one choice's text: "D. Blue-footed boobies" of two
    "boolean",  # true/false where the choices are yes/no
    "head",  # the head of a "head: definition" choice ("guilt by association"); in a sentence: "mention"
    "prefix",  # the first whole words of exactly one choice ("chemical", "No" for "no, it isn't")
    "contained",  # whole words inside exactly one choice, in order: "unspotted tail" for "an unspotted tail"
    "mention",  # a sentence that names exactly one choice (or a choice's head), not after a negation
    "ordinal",  # "the first sentence", "the second one": a position, 0-based
    "choice_key",  # choices as keys, exactly one truthy: {"solid": false, "gas": "because ..."}
    "key_value",  # no answer key; another key's value is exactly one choice: {"direction": "away from ..."}
    "nested",  # a rule not fuzzy, on the first value of a nested object: {"answer": {"word": ...}}
    "other_key",  # a rule not fuzzy, on a field of OTHER_ANSWER_KEYS when there is no "answer" field
    "conflict",  # maps nothing: a label and its text name different choices ("A. Blue-footed boobies")
)
# Rules that read the answer out of words that are not a choice's text or label; under "nested" or
# "other_key" a fuzzy rule keeps its own name, so these count every fuzzy mapping.
FUZZY_RULES: frozenset[str] = frozenset({"unknown_label", "prefix", "contained", "mention", "ordinal", "choice_key"})
CONFLICT = "conflict"
UNMAPPED = "unmapped"
# Keys read as the answer when there is no "answer" key; the first one in the output wins.
OTHER_ANSWER_KEYS = ("final_answer", "correct_answer", "choice", "selected_choice", "option",
                     "selected_option", "correct_option", "response", "prediction", "output")


@dataclass(frozen=True)
class Parsed:
    """What an output says: a 0-based choice (or None), the answer as written, the explanation.

    ``rule`` is diagnostic (one of RULES, UNMAPPED, "" when built by hand) and
    does not take part in equality.
    """

    answer_index: int | None  # None = unmapped
    answer_text: str  # the answer as the model wrote it
    solution: str  # the explanation
    rule: str = field(default="", compare=False)


# A JSON string value: opened by " or ', closed by the same quote when the next
# thing is a closing brace, another key or the end; a truncated output (no
# closing quote, group "closed" unset) runs to the end of the text.
_VALUE_END = r"""(?=\s*(?:,?\s*\}|,\s*["']?\w+["']?\s*:|,?\s*\Z|,?\s*```))"""
_STRING = r"""(?P<q>["'])(?P<text>.*?)(?:(?P=q)(?P<closed>)""" + _VALUE_END + r"""|\Z)"""


def _field_pattern(keys: str) -> re.Pattern:
    """A field under one of ``keys`` (a regex) whose value opens an object, is a string, or is bare (1, false)."""
    value = rf"""(?:(?P<nested>\{{)|{_STRING}|(?P<bare>[^,}}\s][^,}}\n]*))"""
    return re.compile(rf"""\s*["'](?:{keys})["']\s*:\s*{value}""", re.IGNORECASE | re.DOTALL)


_ANSWER_FIELD = _field_pattern("answer")
_OTHER_FIELD = _field_pattern("|".join(OTHER_ANSWER_KEYS))
_FIRST_FIELD = _field_pattern(r"[\w -]+")  # a nested object's first field, whatever its key
_ANY_FIELD = _field_pattern(r"(?P<key>[^\"\n{}]{1,300}?)")  # any key of an object, for choices as keys
_SOLUTION_FIELD = re.compile(r"""["'](?:solution|explanation)["']\s*:\s*""" + _STRING, re.IGNORECASE | re.DOTALL)

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
_QUOTES = str.maketrans("‘’“”", "''\"\"")
# The head of "guilt by association: a negative association ...": before ": ", " - ", "—".
_HEAD = re.compile(r"(?P<head>.+?)(?::\s|\s[-–—]\s|—)", re.DOTALL)
# Ordinals, 0-based; a reference is one before a choice noun ("the 2nd one") or ending the answer ("the third").
_ORDINALS = {w: i for i, ws in enumerate(("first 1st", "second 2nd", "third 3rd", "fourth 4th", "fifth 5th"))
             for w in ws.split()}
_ORD = "|".join(_ORDINALS)
_ORDINAL_REF = re.compile(
    rf"\b(?:{_ORD})\s+(?:one|option|choice|answer|alternative|sentence|text|statement)s?\b|(?:^|\bthe\s+)(?:{_ORD})$"
)
_ORDINAL_WORD = re.compile(rf"\b(?:{_ORD})\b")
# Words that name nothing on their own: a phrase of only these ("The", "It has") is in too many choices
# by chance to name one. A library's stop list (scikit-learn's) holds answers too: "fire", "thick", "empty".
_FUNCTION_WORDS = frozenset(["a", "an", "the", "this", "that", "these", "those", "it", "its", "it's", "they", "them", "their", "there", "he", "she", "him", "her", "his", "i", "we", "you", "me", "us", "our", "your", "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did", "will", "would", "can", "could", "shall", "should", "may", "might", "must", "of", "in", "on", "at", "to", "for", "from", "by", "with", "as", "into", "onto", "about", "than", "then", "so", "and", "or", "but", "if", "which", "who", "whom", "whose", "what", "also", "very", "not", "both", "all", "none", "neither", "either", "each", "any", "some", "other"])
_WORD = re.compile(r"[\w'-]+")
# A choice named right after these is denied, not chosen: "is not a liquid", "isn't a liquid", "neither ... nor".
# One named before a negated verb is not: "Chop doesn't belong" answers "Which word does not belong?".
_NEGATION = re.compile(
    r"""(?:\b(?:not|never|neither|nor)|n't|\b(?:rather|other) than|\binstead of)\s+(?:(?:a|an|the)\s+)?["'*_]*\Z""",
    re.IGNORECASE)
# A question names no answer: "Is a pair of jeans a solid?" restates what was asked.
_QUESTION = re.compile(r"(?:is|are|was|were|do|does|did|which|what)\b|.*\?\s*\Z", re.IGNORECASE | re.DOTALL)
# Keys of an object that hold the explanation, never the answer.
_EXPLANATION_KEYS = frozenset({"solution", "explanation"})
_FALSY = frozenset({"", "false", "no", "null", "none", "0"})

Found = tuple[set[int], str] | None  # the candidate choices and the rule; None: the rule does not apply


def parse_output(raw: str, choices: Sequence[str], number_base: int = 0) -> Parsed:
    """Parse one output; JSON fields win, free text ("The answer is B. BECAUSE: ...") is the fallback.

    ``number_base`` says how bare numbers are labelled: 0 for this project's
    prompt (``(0) first``), 1 for external CSVs labelled from 1.
    """
    text = (raw or "").strip()
    answer, source = _answer_field(text)
    solution = _SOLUTION_FIELD.search(text)
    if answer is None:
        keyed = _keyed_answer(text, choices)
        if keyed is not None:
            index, answer_text, value, rule = keyed
            return Parsed(index, answer_text, _field(solution) or value, rule)
        if solution is None:
            return _parse_free_text(text, choices, number_base)
    answer_text = _field(answer)
    if answer is not None and answer.groupdict().get("text") is not None and answer.group("closed") is None:
        return Parsed(None, answer_text, _field(solution), UNMAPPED)  # cut off: "The" could have gone on anyhow
    index, rule = _match_span(answer_text, choices, number_base)
    if index is not None and source != "json" and rule not in FUZZY_RULES:
        rule = source
    return Parsed(index, answer_text, _field(solution), "json" if rule == "text" else rule)


def rule_counts(parsed: Iterable[Parsed | str]) -> dict[str, int]:
    """How many answers each rule mapped: every rule of RULES (zeros too, CONFLICT = unmapped ones), then UNMAPPED.

    Takes parsed outputs or their ``rule``s (an empty rule is unmapped).
    """
    counts = dict.fromkeys((*RULES, UNMAPPED), 0)
    for one in parsed:
        if isinstance(one, str):
            key = one or UNMAPPED
        else:
            key = one.rule if one.answer_index is not None or one.rule == CONFLICT else UNMAPPED
        counts[key] = counts.get(key, 0) + 1  # a hand-built Parsed counts under ""
    return counts


def _answer_field(text: str) -> tuple[re.Match | None, str]:
    """The answer field and where it was ("json", "other_key", "nested" when its value is an object)."""
    match, source = _ANSWER_FIELD.search(text), "json"
    if match is None:
        match, source = _OTHER_FIELD.search(text), "other_key"
    while match and match.group("nested") and (inner := _FIRST_FIELD.match(text, match.end())):
        match, source = inner, "nested" if source == "json" else source
    return match, source


def _keyed_answer(text: str, choices: Sequence[str]) -> tuple[int | None, str, str, str] | None:
    """An object without an answer key: (index, answer as written, explanation, rule); index None when
    the choices are keys but not exactly one is truthy; None when neither form is there.

    Choices as keys ({"solid": false, "gas": "the air ... is a gas"}: two or more keys name choices) map
    when exactly one of them is truthy, its value being the explanation; else another key's value
    ({"direction": "away from his finger"}) maps when the values name exactly one choice, text for text.
    """
    start = text.find("{")
    if start < 0:
        return None
    fields = [(_unescape(m.group("key")).strip(), _field(m)) for m in _ANY_FIELD.finditer(text, start)]
    fields = [(key, value) for key, value in fields if key.lower() not in _EXPLANATION_KEYS]
    by_key = [(_named_by_text(key, choices), key, value) for key, value in fields]
    by_key = [(index, key, value) for index, key, value in by_key if index is not None]
    if len({index for index, _, _ in by_key}) >= 2:
        chosen = [(index, key, value) for index, key, value in by_key if _norm(value) not in _FALSY]
        if len({index for index, _, _ in chosen}) != 1:
            return None, "", "", UNMAPPED
        index, key, value = chosen[0]
        return index, key, "" if _norm(value) in ("true", "yes", "1") else value, "choice_key"
    named = [(found[0], value) for _, value in fields if (found := _as_text(value, choices))]
    indices = {index for found, _ in named for index in found}
    if len(indices) != 1:
        return None
    return min(indices), named[0][1], "", "key_value"


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
    index, rule = _match_span(answer_text, choices, number_base)
    return Parsed(index, answer_text, after or reasoning, rule)


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


def _match_span(span: str, choices: Sequence[str], number_base: int) -> tuple[int | None, str]:
    """Resolve a span: the first whole-span rule that applies decides, else a sentence naming one choice.

    Either way exactly one candidate choice maps; none or several stay unmapped.
    """
    if not _norm(span):
        return None, UNMAPPED
    for rule in _WHOLE_SPAN_RULES:
        found = rule(span, choices, number_base)
        if found is not None:
            break
    else:
        found = _named_in_sentence(span, choices)
    candidates, rule_name = found
    if len(candidates) == 1:
        return min(candidates), rule_name
    return None, CONFLICT if rule_name == CONFLICT else UNMAPPED


def _as_text(span: str, choices: Sequence[str], number_base: int = 0) -> Found:
    """Choices equal to the span, at the strictest fold that finds any: some choices differ only in case."""
    for rule, fold in _TEXT_FOLDS:
        same = {i for i, choice in enumerate(choices) if fold(choice) == fold(span)}
        if same:
            return same, rule
    return None


def _as_label(span: str, choices: Sequence[str], number_base: int) -> Found:
    """A bare label ("B", "(1)"; not "a" where a choice starts with the word "a"), or a label with text:
    "(1) apostrophe" agree; a label that names no choice leaves the text to decide ("D. Blue-footed
    boobies" of two); a label and a text that name different choices are a CONFLICT ("(0) apostrophe"),
    unmapped and counted: neither is more likely.

    Not when the span starts with a choice's text: "4:0 or 3:1" names ratios, not choice 4.
    """
    if any(_choice_pattern(c).match(span.strip()) for c in choices if c.strip()):
        return None
    match = _LABEL_ONLY.fullmatch(span.strip(" *`,;")) or _LABEL_PREFIX.fullmatch(span.strip())
    if match is None:
        return None
    label = match.group("label")
    by_label = _label_index(label, len(choices), number_base)
    rule = "number" if label.isdigit() else "label"
    if match.re is _LABEL_ONLY:
        if span.strip(" *`,;.\"'").lower() in {choice.split()[0].lower() for choice in choices if choice.split()}:
            return set(), rule  # "a" of "a gas" is an article as much as a label
        return (set() if by_label is None else {by_label}), rule
    by_text = _named_by_text(match.group("rest"), choices)
    if by_label is None:
        return None if by_text is None else ({by_text}, "unknown_label")
    if by_text is None or by_text == by_label:
        return {by_label}, rule
    return {by_label, by_text}, CONFLICT


def _named_by_text(text: str, choices: Sequence[str]) -> int | None:
    """The one choice a text names by the whole-text rules (text, head, prefix, contained); else None."""
    for rule in _TEXT_RULES:
        found = rule(text, choices, 0)
        if found is not None:
            return min(found[0]) if len(found[0]) == 1 else None
    return None


def _label_index(label: str, n_choices: int, number_base: int) -> int | None:
    """A letter (A = first) or a number in ``number_base``; out of range = unmapped."""
    index = int(label) - number_base if label.isdigit() else ord(label.upper()) - ord("A")
    return index if 0 <= index < n_choices else None


def _as_boolean(span: str, choices: Sequence[str], number_base: int) -> Found:
    """true/false (a JSON boolean or the word) for choices that are exactly yes and no."""
    word = {"true": "yes", "false": "no"}.get(_norm(span))
    folded = [_norm(choice) for choice in choices]
    return ({folded.index(word)}, "boolean") if word and sorted(folded) == ["no", "yes"] else None


def _as_head(span: str, choices: Sequence[str], number_base: int) -> Found:
    """Choices whose head ("guilt by association" of "guilt by association: a ...") is the span."""
    same = {i for i, head in enumerate(_heads(choices)) if head and _loose(head) == _loose(span)}
    return (same, "head") if same else None


def _as_prefix(span: str, choices: Sequence[str], number_base: int) -> Found:
    """Choices that start with the span's whole words ("chemical" for "chemical change"), not "The"."""
    return _inside(span, choices, "prefix", lambda pattern, choice: pattern.match(choice))


def _as_contained(span: str, choices: Sequence[str], number_base: int) -> Found:
    """Choices that hold the span's whole words in order, any case: "Helps remove carbon dioxide waste"
    in "It helps remove carbon dioxide waste from the body." Words that merely recur do not count."""
    return _inside(span, choices, "contained", lambda pattern, choice: pattern.search(choice))


def _inside(span: str, choices: Sequence[str], rule: str, where: Callable[[re.Pattern, str], object]) -> Found:
    """Choices whose normalised text has the span's normalised words ``where`` says; None for function words."""
    words = _norm(span)
    folded = {i: text for i, choice in enumerate(choices) if words in (text := _norm(choice))}  # cheap test first
    if not folded or all(word in _FUNCTION_WORDS for word in _WORD.findall(words)):
        return None
    pattern = re.compile(rf"(?<![\w.-]){re.escape(words)}(?!\w|[.,]\d)")  # "5 kg" is not in "2.5 kg" or "-5 kg"
    found = {i for i, text in folded.items() if where(pattern, text)}
    return (found, rule) if found else None


_TEXT_RULES: tuple[Callable[[str, Sequence[str], int], Found], ...] = (_as_text, _as_head, _as_prefix, _as_contained)
_WHOLE_SPAN_RULES: tuple[Callable[[str, Sequence[str], int], Found], ...] = (
    _as_text, _as_label, _as_boolean, _as_head, _as_prefix, _as_contained
)


def _named_in_sentence(span: str, choices: Sequence[str]) -> tuple[set[int], str]:
    """The choices a sentence names by text, else by head; an ordinal must agree with them, or stand alone.

    "The first option, apostrophe" with apostrophe second names two choices. An
    ordinal beyond the choices ("the third sentence" of a passage) names none, and a question none.
    """
    if _QUESTION.match(span.strip()):
        return set(), UNMAPPED
    named, rule = _mentioned(span, choices), "mention"
    if not named:
        named = _mentions(_norm(span), [_norm(head) for head in _heads(choices)])
    positions = _ordinals(span, choices)
    if named:
        return named | {p for p in positions if p < len(choices)}, rule
    return (positions if all(p < len(choices) for p in positions) else set()), "ordinal"


def _mentioned(span: str, choices: Sequence[str]) -> set[int]:
    """The choices the span names as whole words; case and markup decide only between variants.

    "Yes or no" names two choices (unmapped), but "A Breath of Fresh Air"
    names one of two choices that differ only in capitals.
    """
    found = _mentions(_norm(span), [_norm(c) for c in choices])
    for fold in (_unpunctuated, _exact):  # variants of one text (case, quotes vs italics): stricter decides
        if len(found) > 1 and len({_norm(choices[i]) for i in found}) == 1:
            found = _mentions(fold(span), [fold(c) if i in found else "" for i, c in enumerate(choices)])
    return found


def _mentions(span: str, choices: list[str]) -> set[int]:
    """Choices found as whole words in the span, less those only found inside a longer found choice
    or after a negation.

    "running" must not also count as "run", nor "New York City" as "New York"; "Yes, not no" names yes.
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
        and not _NEGATION.search(span[max(start - 30, 0) : start])
    }


def _heads(choices: Sequence[str]) -> list[str]:
    """Each choice's head before ": ", " - " or "—" ("" without one); "1:3" has none."""
    return [m.group("head") if (m := _HEAD.match(choice)) else "" for choice in choices]


def _ordinals(span: str, choices: Sequence[str]) -> set[int]:
    """Positions ("the first sentence" = 0); once there is one, every ordinal counts ("first and second ones").

    None when a choice has an ordinal word itself ("first quarter").
    """
    if not _ORDINAL_REF.search(_norm(span)) or any(_ORDINAL_WORD.search(c.lower()) for c in choices):
        return set()
    return {_ORDINALS[word] for word in _ORDINAL_WORD.findall(_norm(span))}


def _exact(text: str) -> str:
    """One space between words, straight quotes (never what tells choices apart), nothing else changed."""
    return " ".join(text.split()).translate(_QUOTES)


def _unpunctuated(text: str) -> str:
    """No quotes/markup/punctuation at the edges; case kept."""
    return _exact(text).strip(_EDGE_PUNCT)


def _norm(text: str) -> str:
    """Lower case, one space between words, no quotes/markup/punctuation at the edges."""
    return _unpunctuated(text.lower())


def _compact(fold: Callable[[str], str]) -> Callable[[str], str]:
    """A fold without any spaces: "95 kilometers" is the choice "95kilometers"."""
    return lambda text: "".join(fold(text).split())


_loose = _compact(_norm)
_TEXT_FOLDS = (("text", _exact), *(("normalized_text", fold) for fold in (
    _unpunctuated, _norm, _compact(_exact), _compact(_unpunctuated), _loose)))


def _field(match: re.Match | None) -> str:
    """A JSON field's value, quoted or bare (a number, a boolean), unescaped and stripped; "" when absent."""
    if match is None or match.groupdict().get("nested"):
        return ""
    value = match.group("text")
    return _unescape(value if value is not None else match.group("bare")).strip()


def _unescape(value: str) -> str:
    """Decode JSON escapes (\\n, \\") where the value is valid JSON; keep it as written otherwise."""
    try:
        return json.loads(f'"{value}"'.replace("\\'", "'"), strict=False)
    except ValueError:
        return value
