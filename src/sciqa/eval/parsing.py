"""Raw output -> (choice index, answer as written, explanation): tolerant in *finding* the answer, strict in *mapping*
it (naming no choice or two, cut off, function words only, negated or a question: unmapped, counted, not guessed)."""

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

# Which rule mapped an answer (``Parsed.rule``), in the order tried; "conflict" (label and text disagree) maps nothing.
RULES = ("json", "text", "normalized_text", "label", "number", "unknown_label", "boolean", "head", "prefix",
         "contained", "mention", "ordinal", "choice_key", "key_value", "nested", "other_key", "conflict")
# Rules that read the answer rather than match a choice's text or label (they keep their name under "nested").
FUZZY_RULES: frozenset[str] = frozenset({"unknown_label", "prefix", "contained", "mention", "ordinal", "choice_key"})
CONFLICT, UNMAPPED = "conflict", "unmapped"
# Keys read as the answer when there is no "answer" key; the first one in the output wins.
OTHER_ANSWER_KEYS = ("final_answer", "correct_answer", "choice", "selected_choice", "option",
                     "selected_option", "correct_option", "response", "prediction", "output")


@dataclass(frozen=True)
class Parsed:
    """What an output says; ``rule`` (one of RULES, UNMAPPED, "" when built by hand) is diagnostic, not compared."""

    answer_index: int | None  # None = unmapped
    answer_text: str  # the answer as the model wrote it
    solution: str  # the explanation
    rule: str = field(default="", compare=False)


# A JSON string value, closed by its quote before "}", another key or the end; a cut-off one runs to the end.
_VALUE_END = r"""(?=\s*(?:,?\s*\}|,\s*["']?\w+["']?\s*:|,?\s*\Z|,?\s*```))"""
_STRING = r"""(?P<q>["'])(?P<text>.*?)(?:(?P=q)(?P<closed>)""" + _VALUE_END + r"""|\Z)"""


def _field_pattern(keys: str) -> re.Pattern:
    """A field under one of ``keys`` (a regex): an object, a string or a bare value (1, false)."""
    value = rf"""(?:(?P<nested>\{{)|{_STRING}|(?P<bare>[^,}}\s][^,}}\n]*))"""
    return re.compile(rf"""\s*["'](?:{keys})["']\s*:\s*{value}""", re.IGNORECASE | re.DOTALL)


_ANSWER_FIELD = _field_pattern("answer")
_OTHER_FIELD = _field_pattern("|".join(OTHER_ANSWER_KEYS))
_FIRST_FIELD = _field_pattern(r"[\w -]+")  # a nested object's first field, whatever its key
_ANY_FIELD = _field_pattern(r"(?P<key>[^\"\n{}]{1,300}?)")  # any key of an object, for choices as keys
_SOLUTION_FIELD = re.compile(r"""["'](?:solution|explanation)["']\s*:\s*""" + _STRING, re.IGNORECASE | re.DOTALL)

_MARKER = re.compile(r"\banswer\s*(?:is\b\s*:?|:)\s*(?:\*\*(?!\*)\s*)?", re.IGNORECASE)  # "The answer is", "Answer:"
# A choice label: "B", "(B)", "B.", "(1)", "1)", "Option B", "choice 2".
_LABEL = r"(?:(?:option|choice)\s*)?\(?(?P<label>[A-Za-z]|\d{1,2})\)?"
_LABEL_ONLY = re.compile(rf"{_LABEL}[.:)]?", re.IGNORECASE)
_LABEL_PREFIX = re.compile(rf"{_LABEL}(?:[.:)]|(?<=\))|\s*-)\s*(?P<rest>.+)", re.IGNORECASE | re.DOTALL)
# The answer span in free text ends at a sentence or line end or "BECAUSE:" (see _span_end).
_SPAN_END = re.compile(r"[.!?](?=\s|\Z)|\n|(?=\b(?:because\b|(?:explanation|solution|reason)\s*:))", re.IGNORECASE)
_LEADING_LABEL = re.compile(r"\s*\(?(?:[A-Za-z]|\d{1,2})[.:)]")
_EXPLANATION_LABEL = re.compile(r"^\s*(?:because\b\s*:?|(?:explanation|solution|reason(?:ing)?)\s*:)\s*", re.IGNORECASE)
_EDGE_PUNCT = " \t\n\"'`*.,;:!?()[]{}"
_QUOTES = str.maketrans("‘’“”", "''\"\"")
# The head of "guilt by association: a negative association ...": before ": ", " - ", "—".
_HEAD = re.compile(r"(?P<head>.+?)(?::\s|\s[-–—]\s|—)", re.DOTALL)
# Ordinals, 0-based; a reference is one before a choice noun ("the 2nd one") or ending the answer ("the third").
_ORDINALS = {w: i for i, ws in enumerate(("first 1st", "second 2nd", "third 3rd", "fourth 4th", "fifth 5th"))
             for w in ws.split()}
_ORD = "|".join(_ORDINALS)
_ORDINAL_REF = re.compile(
    rf"\b(?:{_ORD})\s+(?:one|option|choice|answer|alternative|sentence|text|statement)s?\b|(?:^|\bthe\s+)(?:{_ORD})$")
_ORDINAL_WORD = re.compile(rf"\b(?:{_ORD})\b")
# Words that name nothing on their own: a phrase of only these ("The", "It has") is in too many choices
# by chance to name one. A library's stop list (scikit-learn's) holds answers too: "fire", "thick", "empty".
_FUNCTION_WORDS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "it's", "they", "them", "their", "there", "he",
    "she", "him", "her", "his", "i", "we", "you", "me", "us", "our", "your", "is", "are", "was", "were", "be", "been",
    "being", "am", "has", "have", "had", "do", "does", "did", "will", "would", "can", "could", "shall", "should",
    "may", "might", "must", "of", "in", "on", "at", "to", "for", "from", "by", "with", "as", "into", "onto", "about",
    "than", "then", "so", "and", "or", "but", "if", "which", "who", "whom", "whose", "what", "also", "very", "not",
    "both", "all", "none", "neither", "either", "each", "any", "some", "other"})
_WORD = re.compile(r"[\w'-]+")
# A choice named right after these is denied ("is not a liquid"); not one before them ("Chop doesn't belong").
_NEGATION = re.compile(
    r"""(?:\b(?:not|never|neither|nor)|n't|\b(?:rather|other) than|\binstead of)\s+(?:(?:a|an|the)\s+)?["'*_]*\Z""",
    re.IGNORECASE)
# A question names no answer: "Is a pair of jeans a solid?" restates what was asked.
_QUESTION = re.compile(r"(?:is|are|was|were|do|does|did|which|what)\b|.*\?\s*\Z", re.IGNORECASE | re.DOTALL)
_FALSY = frozenset({"", "false", "no", "null", "none", "0"})

Found = tuple[set[int], str] | None  # the candidate choices and the rule; None: the rule does not apply


def parse_output(raw: str, choices: Sequence[str], number_base: int = 0) -> Parsed:
    """JSON fields win, free text is the fallback; bare numbers count from ``number_base`` (1 for external CSVs)."""
    text = (raw or "").strip()
    answer, source = _ANSWER_FIELD.search(text), "json"
    if answer is None:
        answer, source = _OTHER_FIELD.search(text), "other_key"
    while answer and answer.group("nested") and (inner := _FIRST_FIELD.match(text, answer.end())):
        answer, source = inner, "nested" if source == "json" else source  # an object: its first field
    solution = _SOLUTION_FIELD.search(text)
    if answer is None and (keyed := _keyed_answer(text, choices, _field(solution))) is not None:
        return keyed
    if answer is None and solution is None:
        return _parse_free_text(text, choices, number_base)
    answer_text = _field(answer)
    if answer is not None and answer.groupdict().get("text") is not None and answer.group("closed") is None:
        return Parsed(None, answer_text, _field(solution), UNMAPPED)  # cut off: "The" could have gone on anyhow
    index, rule = _match_span(answer_text, choices, number_base)
    if index is not None and source != "json" and rule not in FUZZY_RULES:
        rule = source
    return Parsed(index, answer_text, _field(solution), "json" if rule == "text" else rule)


def rule_counts(rules: Iterable[str]) -> dict[str, int]:
    """How many answers each rule mapped, from their ``rule``s: every rule of RULES (zeros too), then UNMAPPED."""
    return dict.fromkeys((*RULES, UNMAPPED), 0) | Counter(rule or UNMAPPED for rule in rules)


def _keyed_answer(text: str, choices: Sequence[str], solution: str) -> Parsed | None:
    """No answer key: the one truthy choice key ({"solid": false, "gas": true}), or a value naming one choice."""
    start = text.find("{")
    if start < 0:
        return None
    fields = [(_unescape(m.group("key")).strip(), _field(m)) for m in _ANY_FIELD.finditer(text, start)]
    fields = [(key, value) for key, value in fields if key.lower() not in ("solution", "explanation")]  # never answers
    by_key = [(index, key, value) for key, value in fields if (index := _named_by_text(key, choices)) is not None]
    if len({index for index, _, _ in by_key}) >= 2:
        chosen = [(index, key, value) for index, key, value in by_key if _norm(value) not in _FALSY]
        if len({index for index, _, _ in chosen}) != 1:
            return Parsed(None, "", solution, UNMAPPED)
        index, key, value = chosen[0]
        return Parsed(index, key, solution or ("" if _norm(value) in ("true", "yes", "1") else value), "choice_key")
    named = [(found[0], value) for _, value in fields if (found := _as_text(value, choices))]
    indices = {index for found, _ in named for index in found}
    if len(indices) != 1:
        return None
    return Parsed(min(indices), named[0][1], solution, "key_value")


def _parse_free_text(text: str, choices: Sequence[str], number_base: int) -> Parsed:
    """Answer: after the marker, else the first sentence; solution: the rest, else the reasoning before the marker."""
    marker = _MARKER.search(text)
    before, rest = (text[: marker.start()], text[marker.end() :]) if marker else ("", text)
    end = _span_end(rest, choices)
    answer_text = rest[:end].strip().rstrip(".,;:").strip()
    after = _EXPLANATION_LABEL.sub("", rest[end:].lstrip(".!?").strip(), count=1).strip()
    reasoning = re.sub(r"[^.!?\n]*\Z", "", before).strip()  # drop the "So the" lead-in
    index, rule = _match_span(answer_text, choices, number_base)
    return Parsed(index, answer_text, after or reasoning, rule)


def _span_end(text: str, choices: Sequence[str]) -> int:
    """The first sentence/line end not inside a choice's text ("Dear Ms. Allen,") or a leading label ("B.")."""
    protected = [(m.start(), m.end() - 1) for c in choices if c.strip() for m in re.finditer(_choice_pattern(c), text)]
    protected += [label.span()] if (label := _LEADING_LABEL.match(text)) else []
    for end in _SPAN_END.finditer(text):
        if not any(start <= end.start() < stop for start, stop in protected):
            return end.start()
    return len(text)


def _choice_pattern(choice: str) -> re.Pattern:  # a choice's words as whole words, any case and spacing
    words = r"\s+".join(re.escape(word) for word in choice.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def _match_span(span: str, choices: Sequence[str], number_base: int) -> tuple[int | None, str]:
    """The first whole-span rule that applies decides, else a sentence naming one choice; one candidate maps."""
    if not _norm(span):
        return None, UNMAPPED
    found = next((f for rule in _WHOLE_SPAN_RULES if (f := rule(span, choices, number_base)) is not None), None)
    candidates, rule_name = found or _named_in_sentence(span, choices)
    if len(candidates) == 1:
        return min(candidates), rule_name
    return None, CONFLICT if rule_name == CONFLICT else UNMAPPED


def _as_text(span: str, choices: Sequence[str], number_base: int = 0) -> Found:
    """Choices equal to the span, at the strictest fold that finds any: some choices differ only in case."""
    folds = ((rule, {i for i, c in enumerate(choices) if fold(c) == fold(span)}) for rule, fold in _TEXT_FOLDS)
    return next(((same, rule) for rule, same in folds if same), None)


def _as_label(span: str, choices: Sequence[str], number_base: int) -> Found:
    """A bare label ("B", "(1)"), or a label with text: agreeing, naming no choice ("unknown_label": the text decides)
    or a CONFLICT (neither is likelier). Not "a" of "a gas", nor a choice's text: "4:0 or 3:1" is not choice 4."""
    if any(_choice_pattern(c).match(span.strip()) for c in choices if c.strip()):
        return None
    match = _LABEL_ONLY.fullmatch(span.strip(" *`,;")) or _LABEL_PREFIX.fullmatch(span.strip())
    if match is None:
        return None
    label = match.group("label")
    by_label = int(label) - number_base if label.isdigit() else ord(label.upper()) - ord("A")
    by_label = by_label if 0 <= by_label < len(choices) else None  # out of range: unmapped
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
    found = next((f for rule in _TEXT_RULES if (f := rule(text, choices, 0)) is not None), None)
    return min(found[0]) if found and len(found[0]) == 1 else None


def _as_boolean(span: str, choices: Sequence[str], number_base: int) -> Found:
    """true/false (a JSON boolean or the word) for choices that are exactly yes and no."""
    word = {"true": "yes", "false": "no"}.get(_norm(span))
    folded = [_norm(choice) for choice in choices]
    return ({folded.index(word)}, "boolean") if word and sorted(folded) == ["no", "yes"] else None


def _as_head(span: str, choices: Sequence[str], number_base: int) -> Found:
    """Choices whose head ("guilt by association" of "guilt by association: a ...") is the span."""
    same = {i for i, head in enumerate(_heads(choices)) if head and _loose(head) == _loose(span)}
    return (same, "head") if same else None


def _inside(rule: str, where: Callable[[re.Pattern, str], object], span: str, choices: Sequence[str],
            number_base: int = 0) -> Found:
    """Choices with the span's whole words where ``where`` finds them, any case; None for function words only."""
    words = _norm(span)
    folded = {i: text for i, choice in enumerate(choices) if words in (text := _norm(choice))}  # cheap test first
    if not folded or all(word in _FUNCTION_WORDS for word in _WORD.findall(words)):
        return None
    pattern = re.compile(rf"(?<![\w.-]){re.escape(words)}(?!\w|[.,]\d)")  # "5 kg" is not in "2.5 kg" or "-5 kg"
    found = {i for i, text in folded.items() if where(pattern, text)}
    return (found, rule) if found else None


# "chemical" for "chemical change"; "unspotted tail" in "an unspotted tail" (in order, words that merely recur do not)
_as_prefix = partial(_inside, "prefix", re.Pattern.match)
_as_contained = partial(_inside, "contained", re.Pattern.search)
_TEXT_RULES = (_as_text, _as_head, _as_prefix, _as_contained)
_WHOLE_SPAN_RULES = (_as_text, _as_label, _as_boolean, _as_head, _as_prefix, _as_contained)


def _named_in_sentence(span: str, choices: Sequence[str]) -> tuple[set[int], str]:
    """The choices a sentence names by text, else by head; an ordinal must agree with them or stand alone
    ("The first option, apostrophe" with apostrophe second names two); none beyond the choices, none in a question."""
    if _QUESTION.match(span.strip()):
        return set(), UNMAPPED
    named = _mentions(_norm(span), [_norm(c) for c in choices])
    for fold in (_unpunctuated, _exact):  # variants of one text (case, quotes vs italics): the stricter fold decides
        if len(named) > 1 and len({_norm(choices[i]) for i in named}) == 1:
            named = _mentions(fold(span), [fold(c) if i in named else "" for i, c in enumerate(choices)])
    named = named or _mentions(_norm(span), [_norm(head) for head in _heads(choices)])
    positions: set[int] = set()  # "the first sentence" = 0; none when a choice has an ordinal word itself
    if _ORDINAL_REF.search(_norm(span)) and not any(_ORDINAL_WORD.search(c.lower()) for c in choices):
        positions = {_ORDINALS[word] for word in _ORDINAL_WORD.findall(_norm(span))}
    if named:
        return named | {p for p in positions if p < len(choices)}, "mention"
    return (positions if all(p < len(choices) for p in positions) else set()), "ordinal"


def _mentions(span: str, choices: list[str]) -> set[int]:
    """Choices as whole words, less those inside a longer one ("New York" of "New York City") or negated."""
    hits = [(m.start(), m.end(), index) for index, choice in enumerate(choices) if choice
            for m in re.finditer(rf"(?<!\w){re.escape(choice)}(?!\w)", span)]
    return {index for start, end, index in hits
            if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in hits)
            and not _NEGATION.search(span[max(start - 30, 0) : start])}


def _heads(choices: Sequence[str]) -> list[str]:  # each head before ": ", " - " or "—", or ""; "1:3" has none
    return [m.group("head") if (m := _HEAD.match(choice)) else "" for choice in choices]


def _exact(text: str) -> str:  # one space between words, straight quotes (never what tells choices apart)
    return " ".join(text.split()).translate(_QUOTES)


def _unpunctuated(text: str) -> str:  # no quotes/markup/punctuation at the edges; case kept
    return _exact(text).strip(_EDGE_PUNCT)


def _norm(text: str) -> str:  # lower case, one space between words, no quotes/markup/punctuation at the edges
    return _unpunctuated(text.lower())


def _compact(fold: Callable[[str], str]) -> Callable[[str], str]:  # "95 kilometers" is the choice "95kilometers"
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
