"""A synthetic knowledge base of fictional countries, cities and people, generated from a seed.

Names are built from syllables so no pretrained model knows the facts: the only way to answer is to search.
Every name word is unique across the whole base, so a name identifies exactly one entity. Snippets are kept
short (about 40-60 characters) because the tiny model is byte-level and every character is a token.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

DEFAULT_SEED = 7
N_COUNTRIES = 8
CITIES_PER_COUNTRY = 4
N_PEOPLE = 96

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s", "th"]
_OCCUPATIONS = ["painter", "poet", "sailor", "judge", "farmer", "doctor", "weaver", "builder"]
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric words: the unit of search matching and of answer checking."""
    return _TOKEN.findall(text.casefold())


@dataclass(frozen=True)
class Entity:
    """One fact sheet: `kind` is country, city or person; `facts` holds its attributes."""

    name: str
    kind: str
    facts: dict[str, str | int]
    snippet: str


@dataclass
class KnowledgeBase:
    """Entities in generation order (the order breaks search ties), with a name index and search statistics."""

    entities: list[Entity]
    by_name: dict[str, Entity] = field(init=False, repr=False)
    name_tokens: list[tuple[str, ...]] = field(init=False, repr=False)
    name_words: frozenset[str] = field(init=False, repr=False)
    snippet_tokens: list[set[str]] = field(init=False, repr=False)
    idf: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {entity.name: entity for entity in self.entities}
        self.name_tokens = [tuple(tokenize(entity.name)) for entity in self.entities]
        self.name_words = frozenset(word for tokens in self.name_tokens for word in tokens)
        self.snippet_tokens = [set(tokenize(entity.snippet)) for entity in self.entities]
        counts = Counter(token for tokens in self.snippet_tokens for token in tokens)
        # Rare words (names) should outweigh common ones ("city", "population") when search scores overlap.
        self.idf = {token: math.log(1 + len(self.entities) / count) for token, count in counts.items()}

    @property
    def names(self) -> list[str]:
        """All entity names, in generation order."""
        return [entity.name for entity in self.entities]

    def of_kind(self, kind: str) -> list[Entity]:
        """Entities of one kind (country, city, person)."""
        return [entity for entity in self.entities if entity.kind == kind]


class _NameMaker:
    """Draws capitalised syllable words that were never drawn before."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int = 2) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
            word = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if word not in self.used and len(word) >= 4:
                self.used.add(word)
                return word


def build_knowledge_base(seed: int = DEFAULT_SEED) -> KnowledgeBase:
    """Generate countries (each with a capital), their cities, and people born in those cities."""
    rng = random.Random(seed)
    names = _NameMaker(rng)
    entities: list[Entity] = []
    cities: list[Entity] = []
    for _ in range(N_COUNTRIES):
        country = names.word()
        country_cities = [_city(names.word(), country, rng) for _ in range(CITIES_PER_COUNTRY)]
        capital = country_cities[0].name
        entities.append(Entity(country, "country", {"capital": capital}, f"{country}: country; capital {capital}"))
        cities += country_cities
    entities += cities
    entities += [_person(f"{names.word()} {names.word(1)}", rng.choice(cities), rng) for _ in range(N_PEOPLE)]
    return KnowledgeBase(entities)


def _city(name: str, country: str, rng: random.Random) -> Entity:
    facts: dict[str, str | int] = {
        "country": country,
        "population": rng.randrange(1_000, 500_000),
        "founded": rng.randrange(900, 1900),
    }
    snippet = f"{name}: city in {country}; population {facts['population']}; founded {facts['founded']}"
    return Entity(name, "city", facts, snippet)


def _person(name: str, city: Entity, rng: random.Random) -> Entity:
    facts: dict[str, str | int] = {
        "birthplace": city.name,
        "born": rng.randrange(1850, 2000),
        "occupation": rng.choice(_OCCUPATIONS),
    }
    snippet = f"{name}: {facts['occupation']}, born in {city.name} in {facts['born']}"
    return Entity(name, "person", facts, snippet)


@functools.cache
def get_knowledge_base() -> KnowledgeBase:
    """The default knowledge base shared by the `search` tool, the task generator and the experts."""
    return build_knowledge_base(DEFAULT_SEED)
