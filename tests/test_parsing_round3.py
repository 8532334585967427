"""Parsing, round 3, on real sample problems: what is clearly named maps, nothing maps by chance.

Each case names the sample problem (pid in the bundled sample) whose real choices it parses.
"""
import json

import pandas as pd
import pytest

from sciqa.data import SAMPLE_DIR
from sciqa.eval.parsing import CONFLICT, FUZZY_RULES, RULES, UNMAPPED, parse_output, rule_counts
from sciqa.steps.evaluate import _rule_table, score_frame

SAMPLE = json.loads((SAMPLE_DIR / "problems.json").read_text())


def choices(pid: str) -> list[str]:
    return SAMPLE[pid]["choices"]


# (raw output, sample pid, expected answer_index, expected rule)
MAPPED = [
    # 1. A content phrase contained in exactly one choice: case, a dropped leading pronoun or article.
    ('{"answer": "year-round warm temperatures", "solution": "x"}', "790", 0, "contained"),
    ('{"answer": "unspotted tail", "solution": "x"}', "104", 1, "contained"),
    ('{"answer": "Helps remove carbon dioxide waste from the body.", "solution": "x"}', "838", 1, "contained"),
    ("Helps remove carbon dioxide waste from the body. The lungs do that.", "838", 1, "contained"),
    ('{"choice": "unspotted tail"}', "104", 1, "contained"),  # a fuzzy rule keeps its name under another key
    # 2. A letter label that does not exist, then a choice's text.
    ('{"answer": "D. Blue-footed boobies", "solution": "x"}', "815", 1, "unknown_label"),
    ("D. Blue-footed boobies", "815", 1, "unknown_label"),
    ("(5) an unspotted tail", "104", 1, "unknown_label"),
    # 3. Choices as JSON keys, exactly one truthy.
    ('{"solid": false, "liquid": false, "gas": "It fills the whole balloon."}', "1057", 1, "choice_key"),
    ('{"gas": false, "liquid": false, "solid": true}', "1770", 2, "choice_key"),
    # 4. Another key whose value is exactly one choice, inside a fenced block.
    ('```json\n{"direction": "away from his finger", "explanation": "The force pushes away."}\n```', "394", 1,
     "key_value"),
    ('```json\n{"property": "flexible", "reason": "It bends without breaking."}\n```', "921", 1, "key_value"),
    # A label whose text agrees (by prefix) still maps by the label; a choice named beside a denied one maps.
    ('{"answer": "B. Blue-footed boobies"}', "815", 1, "label"),
    ('{"answer": "(A)"}', "1057", 0, "label"),
    ("A pair of jeans is a solid, not a liquid.", "1770", 2, "mention"),
    ('{"choice": "The jeans are a solid"}', "1770", 2, "mention"),
    # A choice before a negated verb is still named: it answers "Which word does not belong?".
    ("Chop doesn't belong. The others are ways to combine.", "769", 0, "mention"),
    ('{"answer": "Yes, not no"}', "1571", 0, "mention"),
]

# (raw output, sample pid, why it must stay unmapped)
UNMAPPED_CASES = [
    ('{"answer": "It also has many different types of organisms"}', "790", "contained in both choices"),
    ('{"answer": "lay eggs"}', "815", "contained in both choices"),
    ('{"answer": "They have"}', "815", "function words only (in one choice)"),
    ('{"answer": "both"}', "25", "function words only (in one choice)"),
    ('{"answer": "The"}', "94", "function-word prefix of one choice"),
    ('{"answer": "an"}', "104", "function-word prefix of one choice"),
    ('"The', "94", "function-word prefix, free text"),
    ('{"answer": "a"}', "1057", "an article as much as label A (every choice starts with a)"),
    ("A.", "1057", "an article as much as label A (every choice starts with a)"),
    ('{"answer": "a spotted', "104", "unterminated JSON string"),
    ('{"answer": "The', "94", "unterminated JSON string"),
    ('```json\n{"answer": "Blue-footed boobies', "815", "unterminated JSON string"),
    ('{"answer": "warm temperatures year-round"}', "790", "shared words, not in order"),
    ('{"answer": "carbon dioxide from the body"}', "838", "shared words with a gap"),
    ('{"answer": "remove waste"}', "838", "shared words with a gap"),
    ("A pair of jeans is not a liquid.", "1770", "a negated choice"),
    ('{"answer": "It isn\'t a gas"}', "1057", "a negated choice"),
    ("Neither a solid nor a liquid.", "1770", "two negated choices"),
    ("Is a pair of jeans a solid?", "1770", "restates the question"),
    ('{"answer": "Is the air inside a balloon a gas?"}', "1057", "restates the question"),
    ('{"solid": true, "liquid": false, "gas": true}', "1057", "two truthy choice keys"),
    ('{"solid": false, "liquid": false, "gas": false}', "1057", "no truthy choice key"),
    ('{"direction": "away from his finger", "other": "toward his finger"}', "394", "two values, two choices"),
]

# An existing label whose text names another choice: a conflict, counted, unmapped.
CONFLICTS = [
    ('{"answer": "A. Blue-footed boobies"}', "815"),
    ("(0) an unspotted tail", "104"),
    ("B) a spotted tail", "104"),
]


@pytest.mark.parametrize("raw, pid, index, rule", MAPPED)
def test_clearly_named_answers_map(raw, pid, index, rule):
    parsed = parse_output(raw, choices(pid))
    assert (parsed.answer_index, parsed.rule) == (index, rule)


@pytest.mark.parametrize("raw, pid, why", UNMAPPED_CASES)
def test_nothing_maps_by_chance(raw, pid, why):
    parsed = parse_output(raw, choices(pid))
    assert (parsed.answer_index, parsed.rule) == (None, UNMAPPED), why


@pytest.mark.parametrize("raw, pid", CONFLICTS)
def test_a_label_and_a_text_that_disagree_are_a_conflict(raw, pid):
    parsed = parse_output(raw, choices(pid))
    assert (parsed.answer_index, parsed.rule) == (None, CONFLICT)


def test_conflicts_are_counted_apart_from_other_unmapped_answers():
    parsed = [parse_output(raw, choices(pid)) for raw, pid in CONFLICTS] + [parse_output("simile", choices("104"))]
    counts = rule_counts(p.rule for p in parsed)
    assert (counts[CONFLICT], counts[UNMAPPED]) == (len(CONFLICTS), 1)


def test_choice_key_value_is_the_explanation_and_the_key_the_answer():
    parsed = parse_output('{"solid": false, "liquid": false, "gas": "It fills the whole balloon."}', choices("1057"))
    assert (parsed.answer_text, parsed.solution) == ("gas", "It fills the whole balloon.")
    fenced = parse_output('```json\n{"direction": "away from his finger", "explanation": "It is pushed."}\n```',
                          choices("394"))
    assert (fenced.answer_text, fenced.solution) == ("away from his finger", "It is pushed.")


def test_an_unterminated_answer_keeps_its_text_and_solution_but_maps_nothing():
    parsed = parse_output('{"solution": "Its tail has no spots.", "answer": "an unspotted', choices("104"))
    assert (parsed.answer_index, parsed.answer_text, parsed.solution) == (None, "an unspotted",
                                                                         "Its tail has no spots.")


def test_a_head_named_in_a_sentence_is_a_mention():
    fallacy = ["circular reasoning: an argument that supports a claim with the claim itself",
               "guilt by association: a negative association intended to discredit someone or something"]
    parsed = parse_output('{"answer": "This argument is an example of circular reasoning"}', fallacy)
    assert (parsed.answer_index, parsed.rule) == (0, "mention")


def test_fuzzy_rules_are_rules_and_name_every_reading_rule():
    assert set(RULES) >= FUZZY_RULES
    assert {"prefix", "mention", "ordinal", "contained", "unknown_label", "choice_key"} == FUZZY_RULES
    assert not FUZZY_RULES & {"json", "text", "normalized_text", "label", "number", CONFLICT}


def test_parse_rules_table_names_every_rule_and_counts_the_new_ones():
    outputs = [MAPPED[0][:2], MAPPED[5][:2], MAPPED[8][:2], MAPPED[10][:2], CONFLICTS[1], ("simile", "921")]
    problems = {pid: _problem(pid) for _, pid in outputs}
    frame = pd.DataFrame({"id": [pid for _, pid in outputs], "raw_output": [raw for raw, _ in outputs]})
    _, _, rules = score_frame(frame, problems, 0)
    table = _rule_table(rules).set_index("rule")
    assert list(table.index) == [*RULES, UNMAPPED]
    new = ["contained", "unknown_label", "choice_key", "key_value", CONFLICT, UNMAPPED]
    assert table.loc[new, "answers"].tolist() == [1] * len(new) and table["answers"].sum() == len(outputs)
    assert bool(table.loc["contained", "fuzzy"]) and not bool(table.loc["key_value", "fuzzy"])


def _problem(pid: str):
    from sciqa.data import load_problems

    split = SAMPLE[pid]["split"]
    return next(p for p in load_problems("sample", "validation" if split == "val" else split, keep_all=True)
                if p.id == pid)


def test_a_number_inside_another_number_is_not_contained():
    # No sample choice has decimals or signs; these are how a measurement choice would read.
    assert parse_output('{"answer": "5 kg"}', ["2.5 kg", "7 kg"]).answer_index is None
    assert parse_output('{"answer": "5 °C"}', ["-5 °C", "15 °C"]).answer_index is None
    assert parse_output('{"answer": "2.5"}', ["2.5 kg", "7 kg"]).answer_index == 0
