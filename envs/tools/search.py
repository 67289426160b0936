"""The `search` tool: ranks knowledge-base snippets against a query and returns the best few."""

from __future__ import annotations

import functools
from collections.abc import Callable

from envs.tools.knowledge_base import KnowledgeBase, get_knowledge_base, tokenize

DEFAULT_TOP_K = 2
MAX_QUERY_CHARS = 200
MAX_OUTPUT_CHARS = 300


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
    """Top-`top_k` snippets, one per line: exact name match first, then name inside the query, then overlap."""
    if not isinstance(query, str):
        return "Error: query must be a string"
    if len(query) > MAX_QUERY_CHARS:
        return f"Error: query is longer than {MAX_QUERY_CHARS} characters"
    query_tokens = tokenize(query)
    if not query_tokens:
        return "Error: empty query"
    scores = [(rank_key(kb, i, query_tokens), i) for i in range(len(kb.entities))]
    # sorted() stays stable with reverse=True, so ties keep generation order: results are deterministic.
    ranked = [i for key, i in sorted(scores, key=lambda item: item[0], reverse=True) if key != (0, 0.0)]
    if not ranked:
        return f"No results for {query[:40]!r}."
    return "\n".join(kb.entities[i].snippet for i in ranked[:top_k])[:MAX_OUTPUT_CHARS]


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
