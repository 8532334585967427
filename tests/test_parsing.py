"""Answer parsing on a table of realistic raw outputs (JSON, fenced, broken JSON, letters, numbers, free text)."""

import pytest

from sciqa.parsing import Parsed, parse_output

FIG = ["chiasmus", "apostrophe"]
YN = ["yes", "no"]
RUN = ["run", "running", "ran"]
ANIMALS = ["koala", "bald eagle", "eagle"]
CITY = ["New York", "New York City", "Boston"]
THREE = ["sodium chloride", "water", "oxygen"]
CAPS = ["A breath of Fresh Air", "A Breath of Fresh Air"]  # real ScienceQA: choices that differ only in case
TITLE = ["***The Lion and the Mouse***", '"The Lion and the Mouse"']  # italics vs quotes
CLOSING = ["your friend,\nCarla", "Your friend,\nCarla"]
GREETING = ["Dear ms. Allen,", "Dear Ms. Allen,"]
TRAITS = ["Logan's mother has blue eyes. She passed this trait down to Logan.", "Logan likes a blue sweater."]
SOL = "The text uses apostrophe, a direct address to an absent person."

# (raw output, choices, expected answer_index, expected solution)
CASES = [
    # Well-formed JSON, as the prompt asks.
    ('{"answer": "apostrophe", "solution": "' + SOL + '"}', FIG, 1, SOL),
    ('{"answer": "chiasmus", "solution": "The words repeat in reverse."}', FIG, 0, "The words repeat in reverse."),
    ('{\n  "answer": "no",\n  "solution": "Magnets attract iron.\\nSo they pull."\n}', YN, 1, "Magnets attract iron.\nSo they pull."),
    ('{"solution": "Koalas eat leaves.", "answer": "koala"}', ANIMALS, 0, "Koalas eat leaves."),
    # Fenced JSON, with text around it.
    ('```json\n{"answer": "apostrophe", "solution": "' + SOL + '"}\n```', FIG, 1, SOL),
    ('Sure! Here is my answer:\n```json\n{"answer": "water", "solution": "Water is a compound."}\n```\nHope this helps.', THREE, 1, "Water is a compound."),
    ('```\n{"answer": "Yes", "solution": "It is."}\n```', YN, 0, "It is."),
    # Single quotes, trailing commas, odd spacing.
    ("{'answer': 'apostrophe', 'solution': 'It's a direct address.'}", FIG, 1, "It's a direct address."),
    ('{"answer": "oxygen", "solution": "Oxygen is an element.",}', THREE, 2, "Oxygen is an element."),
    ('{ "answer" : "ran" , "solution" : "Past tense." , }', RUN, 2, "Past tense."),
    ('{"Answer": "Chiasmus", "Solution": "Reversed order."}', FIG, 0, "Reversed order."),
    ('{"answer": "New York City", "solution": "The word \\"City\\" is part of it."}', CITY, 1, 'The word "City" is part of it.'),
    ('{"answer": "eagle", "solution": "The word "eagle", not bald eagle."}', ANIMALS, 2, 'The word "eagle", not bald eagle.'),
    # Truncated at the end.
    ('{"answer": "apostrophe", "solution": "The text uses apostrophe, a direct add', FIG, 1, "The text uses apostrophe, a direct add"),
    ('{"answer": "running", "solution": "Running is the -ing form."', RUN, 1, "Running is the -ing form."),
    ('```json\n{"answer": "koala", "solution": "Koalas', ANIMALS, 0, "Koalas"),
    ('{"answer": "no"', YN, 1, ""),
    # JSON answer as a letter, a number, or label plus text.
    ('{"answer": "B", "solution": "Second."}', FIG, 1, "Second."),
    ('{"answer": "(A)", "solution": "First."}', FIG, 0, "First."),
    ('{"answer": 1, "solution": "Numbered from zero."}', FIG, 1, "Numbered from zero."),
    ('{"answer": "(0) chiasmus", "solution": "Label and text agree."}', FIG, 0, "Label and text agree."),
    ('{"answer": "(1) apostrophe.", "solution": "x"}', FIG, 1, "x"),
    ('{"answer": "The answer is apostrophe.", "solution": "x"}', FIG, 1, "x"),
    ('{"answer": "APOSTROPHE!", "solution": "x"}', FIG, 1, "x"),
    ('{"answer": "No", "solution": "The magnets repel."}', YN, 1, "The magnets repel."),
    # Free text with an answer marker.
    ("The answer is B. BECAUSE: " + SOL, FIG, 1, SOL),
    ("The answer is Apostrophe. " + SOL, FIG, 1, SOL),
    ("Answer: C\nExplanation: Oxygen is an element.", THREE, 2, "Oxygen is an element."),
    ("Answer: (B)", FIG, 1, ""),
    ("The correct answer is: water. Water is made of H2O.", THREE, 1, "Water is made of H2O."),
    ("Chiasmus reverses words; here the speaker addresses a goddess. So the answer is apostrophe.", FIG, 1,
     "Chiasmus reverses words; here the speaker addresses a goddess."),
    ("**Answer:** B\n\nThe text addresses a goddess.", FIG, 1, "The text addresses a goddess."),
    # Free text without a marker: letter, number, choice text, yes/no.
    ("B", FIG, 1, ""),
    ("(A)", FIG, 0, ""),
    ("B.", FIG, 1, ""),
    ("b) apostrophe", FIG, 1, ""),
    ("(1)", FIG, 1, ""),
    ("1", FIG, 1, ""),
    ("0", FIG, 0, ""),
    ("apostrophe", FIG, 1, ""),
    ("Apostrophe.\nThe speaker addresses a goddess.", FIG, 1, "The speaker addresses a goddess."),
    ("No", YN, 1, ""),
    ("yes.", YN, 0, ""),
    ("No, the magnets will not attract. They repel.", YN, 1, "They repel."),
    ("running", RUN, 1, ""),
    ("The word is running.", RUN, 1, ""),
    ("It is a bald eagle.", ANIMALS, 1, ""),
    ("New York City", CITY, 1, ""),
    # Choices from real problems: case-only variants, markup, periods and line breaks inside a choice.
    ('{"answer": "A Breath of Fresh Air", "solution": "Capitalize important words."}', CAPS, 1,
     "Capitalize important words."),
    ("The answer is A breath of Fresh Air.", CAPS, 0, ""),
    ("The answer is ***The Lion and the Mouse***.", TITLE, 0, ""),
    ('I think it is "The Lion and the Mouse", since it is a story.', TITLE, 1, ""),
    ("Your friend,\nCarla\nA closing capitalizes only the first word.", CLOSING, 1,
     "A closing capitalizes only the first word."),
    ("Answer: Dear Ms. Allen, because Ms is a title.", GREETING, 1, "Ms is a title."),
    ("Logan's mother has blue eyes. She passed this trait down to Logan. Eye color is inherited.", TRAITS, 0,
     "Eye color is inherited."),
    # Unmapped: out-of-range number or letter, no choice, two choices, contradictions.
    ('{"answer": 2, "solution": "Out of range."}', FIG, None, "Out of range."),
    ("(5)", FIG, None, ""),
    ("D", FIG, None, ""),
    ('{"answer": "simile", "solution": "Not a choice."}', FIG, None, "Not a choice."),
    ("I don't know.", FIG, None, ""),
    ("The answer is chiasmus or apostrophe.", FIG, None, ""),
    ('{"answer": "yes and no", "solution": "Both."}', YN, None, "Both."),
    ('{"answer": "(0) apostrophe", "solution": "Label says 0, text says 1."}', FIG, None, "Label says 0, text says 1."),
    ("The answer is eagle or koala.", ANIMALS, None, ""),
    ("", FIG, None, ""),
    ("A BREATH OF FRESH AIR", CAPS, None, ""),  # the case was the question
    ("The answer is *The Lion and the Mouse*.", TITLE, None, ""),
    ('{"answer": "", "solution": "Nothing chosen."}', FIG, None, "Nothing chosen."),
]


@pytest.mark.parametrize("raw, choices, index, solution", CASES)
def test_parse_table(raw, choices, index, solution):
    parsed = parse_output(raw, choices)
    assert (parsed.answer_index, parsed.solution) == (index, solution)


def test_table_is_big_and_mostly_mappable():
    assert len(CASES) >= 40
    assert sum(index is not None for _, _, index, _ in CASES) >= 40


def test_number_base_one_for_external_labels():
    assert parse_output("(1)", FIG, number_base=1).answer_index == 0
    assert parse_output("2", FIG, number_base=1).answer_index == 1
    assert parse_output("0", FIG, number_base=1).answer_index is None


def test_answer_text_is_kept_as_written():
    assert parse_output('{"answer": "Apostrophe!", "solution": "s"}', FIG) == Parsed(1, "Apostrophe!", "s")
    assert parse_output("The answer is B. BECAUSE: s", FIG) == Parsed(1, "B", "s")


def test_substring_choices_prefer_whole_words():
    assert parse_output("I think they ran.", RUN).answer_index == 2
    assert parse_output("runs", RUN).answer_index is None


def test_numeric_choice_text_wins_over_number_label():
    assert parse_output('{"answer": "12", "solution": ""}', ["7", "12", "30"]).answer_index == 1
    assert parse_output("3.5 kg", ["2.5 kg", "3.5 kg"]).answer_index == 1
