"""Answer parsing on a table of realistic raw outputs (JSON, fenced, broken JSON, letters, numbers, free text)."""

import pytest

from sciqa.eval.parsing import RULES, UNMAPPED, Parsed, parse_output, rule_counts

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
NY = ["no", "yes"]
TF = ["true", "false"]
SHIPS = ["a ship that moved 555kilometers west in 10hours", "a ship that moved 95kilometers south in 10hours",
         "a ship that moved 460kilometers south in 10hours"]  # real ScienceQA spacing
TEMPS = ["41°C", "41°F"]
ROSA = ["Rosa's hair is the same color as her brown eyes.", "Rosa's father has brown eyes. He passed this trait down to Rosa."]
CHANGE = ["physical change", "chemical change"]
FALLACY = ["circular reasoning: an argument that supports a claim with the claim itself",
           "guilt by association: a negative association intended to discredit someone or something"]
SENTENCES = ["Those carpenters use wood to build stairways and doorframes.",
             "Our dog Rusty had rolled around in the mud, so we gave him a bath."]
CAN = ['As they observed the animals, the photographer said, "Did you know that cheetahs can run that fast?"',
       'As they observed the cheetahs, the photographer said, "You can borrow my camera if you want."']
MOON = ["first-quarter moon", "third-quarter moon"]  # ordinal words inside the choices
STRUCTURE = ["problem-solution", "cause-effect", "sequential"]
RATIOS = ["1:3", "2:2", "4:0", "3:1", "0:4"]
TAILS = ["a spotted tail", "an unspotted tail"]
ANIMAL_TRAITS = [
    "Chinese alligators live in lakes and streams in eastern China. They lay eggs with shells and live in "
    "underground burrows in the winter. Chinese alligators have scaly, waterproof skin.",
    "Blue-footed boobies live on tropical islands in the Pacific Ocean. They have two wings, feathers, and a beak. "
    "Blue-footed boobies lay eggs with pale blue shells. They keep the eggs warm with their large blue feet."]
STATES = ["a liquid", "a gas", "a solid"]
DIRECTIONS = ["toward his finger", "away from his finger"]
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
    # JSON booleans and "True"/"False" for yes/no questions; near-misses: other choices, "not true".
    ('{"answer": false, "solution": "Glass is not magnetic."}', NY, 0, "Glass is not magnetic."),
    ('{"answer": true, "solution": "The magnets attract."}', YN, 0, "The magnets attract."),
    ('{"answer": "True", "solution": "Both are made of iron."}', NY, 1, "Both are made of iron."),
    ('```json\n{"answer": False, "solution": "They repel."}\n```', YN, 1, "They repel."),
    ('{"answer": false, "solution": "Jupiter is larger."}', TF, 1, "Jupiter is larger."),
    ("TRUE. The table shows it.", NY, 1, "The table shows it."),
    ('{"answer": true, "solution": "x"}', FIG, None, "x"),
    ('{"answer": "not true", "solution": "x"}', YN, None, "x"),
    # Choice text with other spacing, curly quotes, case, a trailing period; near-miss: case-only variants.
    ('{"answer": "a ship that moved 95 kilometers south in 10 hours", "solution": "Fewer kilometers."}', SHIPS, 1,
     "Fewer kilometers."),
    ("The answer is a ship that moved 460 kilometers south in 10 hours. It moved south.", SHIPS, 2, "It moved south."),
    ('{"answer": "Rosa’s father has brown eyes. He passed this trait down to Rosa.", "solution": "x"}', ROSA, 1, "x"),
    ('{"answer": "“Chemical Change.”", "solution": "A new substance forms."}', CHANGE, 1, "A new substance forms."),
    ('{"answer": "41 °F", "solution": "A warm day."}', TEMPS, 1, "A warm day."),
    ('{"answer": "ABREATHOFFRESHAIR", "solution": "x"}', CAPS, None, "x"),
    # The head of a "head: definition" choice, or a unique prefix; near-misses: shared prefix, two heads.
    ('{"answer": "guilt by association", "solution": "It attacks the source."}', FALLACY, 1,
     "It attacks the source."),
    ('{"answer": "Circular Reasoning.", "solution": "x"}', FALLACY, 0, "x"),
    ("The answer is guilt by association. The ad links the mayor to a criminal.", FALLACY, 1,
     "The ad links the mayor to a criminal."),
    ('{"answer": "This argument is an example of circular reasoning", "solution": "x"}', FALLACY, 0, "x"),
    ('{"answer": "chemical", "solution": "A new substance forms."}', CHANGE, 1, "A new substance forms."),
    ('{"answer": "Our dog Rusty had rolled around in the mud", "solution": "x"}', SENTENCES, 1, "x"),
    ('{"answer": "a ship that moved", "solution": "x"}', SHIPS, None, "x"),
    ('{"answer": "circular reasoning or guilt by association", "solution": "x"}', FALLACY, None, "x"),
    ('{"answer": "change", "solution": "x"}', CHANGE, None, "x"),
    # Ordinals in a sentence; near-misses: beyond the choices, two ordinals, an ordinal plus another choice.
    ("The first sentence is the compound sentence. It is made up of two simple sentences.", SENTENCES, 0,
     "It is made up of two simple sentences."),
    ('{"answer": "The second one", "solution": "It joins two clauses with so."}', SENTENCES, 1,
     "It joins two clauses with so."),
    ('{"answer": "The first text uses can in its traditional sense", "solution": "x"}', CAN, 0, "x"),
    ("Answer: the third option\nOxygen is an element.", THREE, 2, "Oxygen is an element."),
    ('{"answer": "The second option, apostrophe", "solution": "x"}', FIG, 1, "x"),
    ('{"answer": "The third sentence", "solution": "x"}', SENTENCES, None, "x"),
    ('{"answer": "The first and second sentences", "solution": "x"}', SENTENCES, None, "x"),
    ('{"answer": "The first option, apostrophe", "solution": "x"}', FIG, None, "x"),
    ('{"answer": "the first one", "solution": "x"}', MOON, None, "x"),
    # Nested answer objects, other keys; near-misses: a nested non-choice, two choices under another key.
    ('{"answer": {"word": "problem-solution", "description": "A problem, then a fix."}, "solution": "x"}',
     STRUCTURE, 0, "x"),
    ('{"answer": {"text": "apostrophe", "index": 1}, "solution": "x"}', FIG, 1, "x"),
    ('{"answer": {"text": "Our dog Rusty had rolled around in the mud, so we gave him a bath."}}', SENTENCES, 1, ""),
    ('{"answer": {"choice": 1, "explanation": "Numbered from zero."}}', FIG, 1, "Numbered from zero."),
    ('{"answer": {"word": "cause-effect", "description": "One thing leads to', STRUCTURE, 1, ""),
    ('{"choice": "koala", "solution": "Koalas eat leaves."}', ANIMALS, 0, "Koalas eat leaves."),
    ('{"option": 1, "solution": "Numbered from zero."}', FIG, 1, "Numbered from zero."),
    ('{"response": "No", "explanation": "The poles repel."}', YN, 1, "The poles repel."),
    ('```json\n{"final_answer": "water", "reasoning": "A compound."}\n```', THREE, 1, ""),
    ('{"choice": "koala", "answer": "eagle", "solution": "x"}', ANIMALS, 2, "x"),
    ('{"answer": {"word": "simile"}, "solution": "x"}', FIG, None, "x"),
    ('{"choice": "chiasmus or apostrophe", "solution": "x"}', FIG, None, "x"),
    # A choice that starts like a label ("4:0") is text, not choice 4.
    ('{"answer": "4:0 or 3:1", "solution": "x"}', RATIOS, None, "x"),
    ('{"answer": "2:2 because half are tall", "solution": "x"}', RATIOS, 1, "x"),
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


# One output per rule, so every rule of RULES is exercised and named.
RULE_CASES = [
    ('{"answer": "apostrophe", "solution": "s"}', FIG, "json"),
    ("apostrophe", FIG, "text"),
    ('{"answer": "a ship that moved 95 kilometers south in 10 hours"}', SHIPS, "normalized_text"),
    ("The answer is B.", FIG, "label"),
    ('{"answer": 1}', FIG, "number"),
    ('{"answer": false}', NY, "boolean"),
    ('{"answer": "guilt by association"}', FALLACY, "head"),
    ('{"answer": "chemical"}', CHANGE, "prefix"),
    ("It is a bald eagle.", ANIMALS, "mention"),
    ('{"answer": "The second sentence"}', SENTENCES, "ordinal"),
    ('{"answer": {"word": "problem-solution"}}', STRUCTURE, "nested"),
    ('{"option": "B"}', FIG, "other_key"),
    ('{"answer": "simile"}', FIG, UNMAPPED),
    # Real sample choices (problems 104, 815, 1057, 394): round 3's rules.
    ('{"answer": "unspotted tail"}', TAILS, "contained"),
    ('{"answer": "D. Blue-footed boobies"}', ANIMAL_TRAITS, "unknown_label"),
    ('{"solid": false, "liquid": false, "gas": "It fills the balloon."}', STATES, "choice_key"),
    ('```json\n{"direction": "away from his finger"}\n```', DIRECTIONS, "key_value"),
    ('{"answer": "A. Blue-footed boobies"}', ANIMAL_TRAITS, "conflict"),
]


@pytest.mark.parametrize("raw, choices, rule", RULE_CASES)
def test_rule_names_what_mapped_the_answer(raw, choices, rule):
    assert parse_output(raw, choices).rule == rule


def test_every_rule_has_a_case():
    assert {rule for _, _, rule in RULE_CASES} == {*RULES, UNMAPPED}


def test_rule_counts_lists_every_rule():
    parsed = [parse_output(raw, choices) for raw, choices, _ in RULE_CASES] + [parse_output("1", FIG)]
    counts = rule_counts(p.rule for p in parsed)
    assert list(counts) == [*RULES, UNMAPPED]
    assert counts == {**dict.fromkeys(RULES, 1), "number": 2, UNMAPPED: 1}
    assert rule_counts([]) == dict.fromkeys((*RULES, UNMAPPED), 0)


def test_rule_does_not_change_equality_and_defaults():
    assert Parsed(1, "B", "s") == Parsed(1, "B", "s", "label")
    assert Parsed(1, "B", "s").rule == ""
    assert parse_output("", FIG).rule == UNMAPPED
