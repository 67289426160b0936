"""Questions over the synthetic knowledge base, answered with the search tool.

Levels: 1 = one hop (search the entity, read the fact), 2 = two hops (the first search gives a bridge entity,
e.g. a person's birthplace, that must be searched next). Answers are numbers (years, populations) or names.
"mixed" draws from these two.

The hard level (3, or "hard"; `rlagent/KBSearch-hard-v0`) is never part of "mixed": 2-3 bridge entities (3-4
searches), person -> birthplace -> its country -> that country's capital (-> the capital's population or founding
year). Items where the birthplace is itself the capital are left out, so every hop is a new entity and stopping
early is always wrong.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envs.tasks.task import Task, choose_phrasing, draw_item, make_rng, phrasing_id
from envs.tools.knowledge_base import Entity, KnowledgeBase, get_knowledge_base

FAMILY = "knowledge"
LEVELS = (1, 2)
HARD_LEVEL = 3  # not in LEVELS: "mixed" and curricula keep to 1-2


@dataclass(frozen=True)
class Question:
    """A question type: which entity kind it asks about, the chain of facts to follow, and its phrasings."""

    kind: str
    path: tuple[str, ...]
    shared: tuple[str, ...]
    held_out: tuple[str, ...]


QUESTIONS: dict[str, Question] = {
    "population": Question(
        "city", ("population",),
        ("What is the population of {x}?", "How many people live in {x}?", "Population of {x}?"),
        ("How large is the population of {x}?", "Tell me how many people live in {x}."),
    ),
    "founded": Question(
        "city", ("founded",),
        ("In which year was {x} founded?", "When was {x} founded?", "What year was {x} founded?"),
        ("{x} was founded in which year?", "Give the founding year of {x}."),
    ),
    "country": Question(
        "city", ("country",),
        ("In which country is {x}?", "Which country is {x} in?", "{x} is a city in which country?"),
        ("Name the country where {x} lies.", "Where is {x}? Give the country."),
    ),
    "birthplace": Question(
        "person", ("birthplace",),
        ("In which city was {x} born?", "Where was {x} born?", "What is the birthplace of {x}?"),
        ("Name the city where {x} was born.", "{x} was born in which city?"),
    ),
    "born": Question(
        "person", ("born",),
        ("In which year was {x} born?", "When was {x} born?", "What is the birth year of {x}?"),
        ("{x} was born in which year?", "Give the year {x} was born."),
    ),
    "capital": Question(
        "country", ("capital",),
        ("What is the capital of {x}?", "Which city is the capital of {x}?", "Name the capital of {x}."),
        ("{x} has which city as its capital?", "What city is the capital of {x}?"),
    ),
    "birth_population": Question(
        "person", ("birthplace", "population"),
        ("What is the population of the city where {x} was born?", "How many people live where {x} was born?"),
        ("How populous is the birthplace of {x}?",),
    ),
    "birth_country": Question(
        "person", ("birthplace", "country"),
        ("In which country was {x} born?", "Which country is {x} from?", "{x} was born in which country?"),
        ("Name the country of birth of {x}.",),
    ),
    "birth_founded": Question(
        "person", ("birthplace", "founded"),
        ("When was the city where {x} was born founded?", "In which year was the birthplace of {x} founded?"),
        ("Give the founding year of the city where {x} was born.",),
    ),
    "capital_population": Question(
        "country", ("capital", "population"),
        ("What is the population of the capital of {x}?", "How many people live in the capital of {x}?"),
        ("How populous is the capital city of {x}?",),
    ),
    "capital_founded": Question(
        "country", ("capital", "founded"),
        ("When was the capital of {x} founded?", "In which year was the capital of {x} founded?"),
        ("Give the founding year of the capital of {x}.",),
    ),
}  # fmt: skip
HARD_QUESTIONS: dict[str, Question] = {
    "birth_capital": Question(
        "person", ("birthplace", "country", "capital"),
        ("What is the capital of the country where {x} was born?", "{x} was born in a country; name its capital."),
        ("Which city is the capital of {x}'s country of birth?",),
    ),
    "birth_capital_population": Question(
        "person", ("birthplace", "country", "capital", "population"),
        ("What is the population of the capital of the country where {x} was born?",
         "How many people live in the capital of {x}'s birth country?"),
        ("How populous is the capital of the country {x} was born in?",),
    ),
    "birth_capital_founded": Question(
        "person", ("birthplace", "country", "capital", "founded"),
        ("When was the capital of the country where {x} was born founded?",
         "In which year was the capital of {x}'s birth country founded?"),
        ("Give the founding year of the capital of the country {x} was born in.",),
    ),
}  # fmt: skip


def sample_task(rng_or_seed: random.Random | int, split: str = "train", difficulty: int | str = 1) -> Task:
    """A deterministic knowledge question for (seed, split, difficulty); difficulty may be "mixed" or "hard"."""
    rng = make_rng(rng_or_seed, split)
    level = rng.choice(LEVELS) if difficulty == "mixed" else HARD_LEVEL if difficulty == "hard" else difficulty
    if level not in (*LEVELS, HARD_LEVEL):
        raise ValueError(f"difficulty for {FAMILY} must be one of {LEVELS}, {HARD_LEVEL}, 'hard' or 'mixed', "
                         f"got {difficulty!r}")  # fmt: skip
    kb = get_knowledge_base()
    questions = HARD_QUESTIONS if level == HARD_LEVEL else QUESTIONS
    qtypes = [name for name, question in questions.items() if level == HARD_LEVEL or len(question.path) == level]
    qtype, entity = draw_item(rng, split, lambda r: _draw_question(r, kb, qtypes, questions), lambda item: _key(*item))
    question = questions[qtype]
    index, template = choose_phrasing(rng, split, question.shared, question.held_out)
    hops, answer = follow(kb, entity, question.path)
    return Task(
        prompt=template.format(x=entity.name),
        answer=str(answer),
        answer_kind="number" if isinstance(answer, int) else "name",
        difficulty=level,
        family=FAMILY,
        split=split,
        key=_key(qtype, entity),
        phrasing=phrasing_id(qtype, index, len(question.shared)),
        hops=hops,
        intermediate=hops[1] if len(hops) > 1 else None,
    )


def follow(kb: KnowledgeBase, entity: Entity, path: tuple[str, ...]) -> tuple[list[str], str | int]:
    """Walk `path` from `entity`: the names to search, in order, and the final fact."""
    hops = [entity.name]
    value = entity.facts[path[0]]
    for fact in path[1:]:
        hops.append(str(value))
        value = kb.by_name[str(value)].facts[fact]
    return hops, value


def _draw_question(
    rng: random.Random, kb: KnowledgeBase, qtypes: list[str], questions: dict[str, Question]
) -> tuple[str, Entity]:
    """A question type and an entity whose hops and answer are all different (only ever false at the hard level:
    someone born in their country's capital)."""
    while True:
        qtype = rng.choice(qtypes)
        entity = rng.choice(kb.of_kind(questions[qtype].kind))
        hops, answer = follow(kb, entity, questions[qtype].path)
        if len({*hops, str(answer)}) == len(hops) + 1:
            return qtype, entity


def _key(qtype: str, entity: Entity) -> str:
    return f"{qtype}:{entity.name}"
