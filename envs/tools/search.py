"""The `search` tool: ranks knowledge-base snippets against a query and returns the best few.

Stop-words are ignored when matching: English filler ("in", "the", "where") and the words that say which KIND of
fact a snippet holds ("born", "city", "population"), since nearly every snippet of a kind contains them. Only the
remaining words (names, numbers, occupations) can make a snippet match, so a nonsense query such as "zzz in qqq"
or "where was zzz born" answers "No results ..." instead of arbitrary people. A word that is part of an entity's
name is never a stop-word (a generated name may be an English word, e.g. "Both").

An empty query, a non-string or an over-long one returns an `Error:` string (an invalid tool call for the
environment); "No results" is a normal answer, not an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from envs.tools.knowledge_base import KnowledgeBase, get_knowledge_base, tokenize

DEFAULT_TOP_K = 2
MAX_QUERY_CHARS = 200
MAX_OUTPUT_CHARS = 300
# fmt: off
STOP_WORDS = frozenset({
    # English filler that questions are made of
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "as", "about",
    "is", "are", "was", "were", "be", "been", "does", "do", "did", "has", "have", "had", "it", "its", "this", "that",
    "what", "which", "who", "whom", "whose", "where", "when", "how", "many", "much", "me", "tell", "give", "name",
    "find", "search", "look", "up", "please", "info", "information", "facts", "s",
    # the knowledge base's own field words: they say what kind of fact a snippet holds, not which entity
    "city", "country", "capital", "population", "founded", "born", "birthplace", "year", "person", "people", "live",
    "lives",
})
# fmt: on


def search(query: str) -> str:
    """Search the knowledge base for a country, city or person and return the best matching facts.

    Args:
        query: What to look up, usually a name such as "Zorvath" or "Dalo Venn".

    Returns:
        Up to two matching fact lines, one per line, or a message saying nothing matched.
    """
    return search_knowledge_base(get_knowledge_base(), query, DEFAULT_TOP_K)


def with_top_k(top_k: int) -> Callable[[str], str]:
    """A `search` tool returning `top_k` snippets; same name, signature and docstring, so the same schema."""

    @functools.wraps(search)
    def search_top_k(query: str) -> str:
        return search_knowledge_base(get_knowledge_base(), query, top_k)

    return search_top_k


def search_knowledge_base(kb: KnowledgeBase, query: str, top_k: int = DEFAULT_TOP_K) -> str:
    """Top-`top_k` snippets, one per line: exact name match first, then name inside the query, then overlap.

    Stop-words are dropped from the query first; a query of stop-words only matches nothing.
    """
    if not isinstance(query, str):
        return "Error: query must be a string"
    if len(query) > MAX_QUERY_CHARS:
        return f"Error: query is longer than {MAX_QUERY_CHARS} characters"
    all_tokens = tokenize(query)
    if not all_tokens:
        return "Error: empty query"
    query_tokens = [token for token in all_tokens if token not in STOP_WORDS or token in kb.name_words]
    if not query_tokens:
        return _no_results(query)
    scores = [(rank_key(kb, i, query_tokens), i) for i in range(len(kb.entities))]
    # sorted() stays stable with reverse=True, so ties keep generation order: results are deterministic.
    ranked = [i for key, i in sorted(scores, key=lambda item: item[0], reverse=True) if key != (0, 0.0)]
    if not ranked:
        return _no_results(query)
    return "\n".join(kb.entities[i].snippet for i in ranked[:top_k])[:MAX_OUTPUT_CHARS]


def _no_results(query: str) -> str:
    # repr() escapes unprintable characters (up to 10 output characters each), so bound the message as a whole.
    return f"No results for {query[:40]!r}."[:MAX_OUTPUT_CHARS]


def rank_key(kb: KnowledgeBase, i: int, query: list[str]) -> tuple[int, float]:
    """(name tier, overlap): tier 2 = query is the name, 1 = the name appears in the query, 0 = neither."""
    name = kb.name_tokens[i]
    tier = 2 if tuple(query) == name else int(_contains_run(query, name))
    overlap = sum(kb.idf.get(token, 0.0) for token in set(query) if token in kb.snippet_tokens[i])
    return tier, overlap


def _contains_run(tokens: list[str], run: tuple[str, ...]) -> bool:
    """Whether `run` appears as consecutive tokens in `tokens`."""
    n = len(run)
    return any(tuple(tokens[i : i + n]) == run for i in range(len(tokens) - n + 1))
