"""The synthetic knowledge base and the `search` tool."""

from transformers.utils import get_json_schema

from envs.tools import search
from envs.tools.knowledge_base import Entity, KnowledgeBase, build_knowledge_base, get_knowledge_base, tokenize
from envs.tools.search import search_knowledge_base, with_top_k


def test_knowledge_base_is_deterministic_and_names_are_unique():
    kb = get_knowledge_base()
    assert [e.snippet for e in build_knowledge_base().entities] == [e.snippet for e in kb.entities]
    words = [word for name in kb.names for word in tokenize(name)]
    assert len(words) == len(set(words)), "every name word identifies one entity"
    assert [e.snippet for e in build_knowledge_base(seed=8).entities] != [e.snippet for e in kb.entities]


def test_snippets_are_short():
    assert max(len(e.snippet) for e in get_knowledge_base().entities) <= 70


def test_exact_name_match_ranks_first():
    kb = get_knowledge_base()
    for entity in kb.entities:
        assert search(entity.name).split("\n")[0] == entity.snippet
        assert search(entity.name.upper()).split("\n")[0] == entity.snippet


def test_name_inside_a_longer_query_ranks_first():
    city = get_knowledge_base().of_kind("city")[5]
    assert search(f"population of {city.name}?").split("\n")[0] == city.snippet


def test_top_k_and_bounds():
    country = get_knowledge_base().of_kind("country")[0]
    assert len(search(country.name).split("\n")) == 2
    assert len(search_knowledge_base(get_knowledge_base(), country.name, top_k=4).split("\n")) == 4
    assert len(with_top_k(1)(country.name).split("\n")) == 1
    assert search("zzzqqq").startswith("No results")
    assert search("").startswith("Error:")
    assert search("a" * 10_000).startswith("Error:")
    assert search(None).startswith("Error:")


def test_with_top_k_keeps_the_schema():
    assert get_json_schema(with_top_k(3)) == get_json_schema(search)


def test_stop_words_never_make_a_match():
    assert search("zzz in qqq").startswith("No results")
    assert search("where was zzz born").startswith("No results")
    assert search("what is the population of the city").startswith("No results")
    assert search("in the").startswith("No results")  # only stop-words: nothing to match, but not an error


def test_stop_words_do_not_change_what_a_name_finds():
    kb = get_knowledge_base()
    for entity in kb.entities:
        assert search(f"where is the {entity.name} in").split("\n")[0] == entity.snippet


def test_a_name_word_that_is_also_a_stop_word_still_matches():
    entity = Entity("The City", "city", {}, "The City: city in nowhere")  # a name made of stop-words only
    kb = KnowledgeBase(get_knowledge_base().entities + [entity])
    assert search_knowledge_base(kb, "the city").split("\n")[0] == entity.snippet
    assert search("the city").startswith("No results")  # the default base has no such name
