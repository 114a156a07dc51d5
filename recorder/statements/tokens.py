"""A SQL text's sqlglot tokens, read once and shared by everything that reads the text.

In one request the gateway reads a statement's tokens several times: the query
id scan (addons/query_ids.py), the split and parse of the classification, the
SQL redaction of the records and the check whether a binding is a credential.
The most recent texts' tokens are kept here, so each text is tokenized once.

A reader gets a list of its own; the `Token` objects in it are shared and read
only. sqlglot's parser may add comments to a token it consumes, so a token
list goes to at most one parser (`tokenize_for_parser`): a text parsed again
(in another context, or after the classification cache forgot it) is tokenized
anew. Texts the tokenizer cannot read are not kept; it raises `TokenError`
again for the next reader. The keeping is thread-safe: long texts are
classified on worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from sqlglot.tokens import Token, Tokenizer

from hoopgw.recorder.statements.vocabulary import DIALECT

KEPT_TEXTS: Final = 16
"""Texts whose tokens are kept. A text's readers are one request's hooks, which run
back to back on the loop, so a few suffice; 16 covers requests whose hooks interleave
at an await. Kept longer, the tokens (about 25 objects a statement) outlive the
collector's young generations and every middle pass walks them: 64 texts doubled
the cost of a pass."""
KEPT_MAX_CHARS: Final = 16 * 1024
"""Longer texts are tokenized for each reader (guardrails classifies them off the loop)."""
KEPT_TOTAL_CHARS: Final = 256 * 1024
"""The kept texts' length together: their tokens take roughly 40 bytes per character."""


class _Kept:
    __slots__ = ("parsed", "tokens")

    def __init__(self, tokens: list[Token], parsed: bool) -> None:
        self.tokens = tokens
        self.parsed = parsed


_kept: OrderedDict[str, _Kept] = OrderedDict()
_kept_chars = 0
_lock = threading.Lock()
_local = threading.local()


def tokenize(sql: str) -> list[Token]:
    """`sql`'s tokens, from the last reader of the same text if one read it recently."""
    if len(sql) > KEPT_MAX_CHARS:
        return _tokenizer().tokenize(sql)
    with _lock:
        kept = _kept.get(sql)
        if kept is not None:
            _kept.move_to_end(sql)
            return list(kept.tokens)
    tokens = _tokenizer().tokenize(sql)
    _keep(sql, tokens, parsed=False)
    return list(tokens)


def tokenize_for_parser(sql: str) -> list[Token]:
    """`sql`'s tokens for a parser to consume: kept ones no parser has had, or new ones."""
    if len(sql) > KEPT_MAX_CHARS:
        return _tokenizer().tokenize(sql)
    with _lock:
        kept = _kept.get(sql)
        if kept is not None and not kept.parsed:
            kept.parsed = True
            _kept.move_to_end(sql)
            return list(kept.tokens)
    tokens = _tokenizer().tokenize(sql)
    _keep(sql, tokens, parsed=True)
    return list(tokens)


def forget() -> None:
    """Drop every kept text (benchmarks measure the first reader with it)."""
    global _kept_chars
    with _lock:
        _kept.clear()
        _kept_chars = 0


def _keep(sql: str, tokens: list[Token], parsed: bool) -> None:
    global _kept_chars
    with _lock:
        if _kept.pop(sql, None) is not None:
            _kept_chars -= len(sql)
        _kept[sql] = _Kept(tokens, parsed)
        _kept_chars += len(sql)
        while len(_kept) > KEPT_TEXTS or _kept_chars > KEPT_TOTAL_CHARS:
            dropped, _ = _kept.popitem(last=False)
            _kept_chars -= len(dropped)


def _tokenizer() -> Tokenizer:
    """One tokenizer per thread: building one costs a fifth of tokenizing a short statement,
    and `tokenize` starts each text afresh but is not safe to share between threads."""
    tokenizer = getattr(_local, "tokenizer", None)
    if tokenizer is None:
        tokenizer = _local.tokenizer = DIALECT.tokenizer()
    return tokenizer
