"""A SQL text cut into statements on sqlglot tokens, never inside strings, blocks or comments."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot.dialects.snowflake import Snowflake
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements.tokens import tokenize, tokenize_for_parser

_SEPARATORS = frozenset({TokenType.SEMICOLON, TokenType.DARROW})
_COMMAND_TOKENS = frozenset(Snowflake.Tokenizer.COMMANDS)


@dataclass(slots=True)
class Chunk:
    """One statement's tokens; positions are offsets into `sql`, the whole text."""

    sql: str
    tokens: list[Token]
    end: int
    script: bool = False

    @property
    def text(self) -> str:
        return self.sql[self.tokens[0].start : self.end].strip()

    @property
    def rest(self) -> str:
        """The text after the leading keyword."""
        return self.sql[self.tokens[0].end + 1 : self.end]


def split_statements(sql: str) -> list[Chunk]:
    """Statements end at `;` and at Snowflake's flow operator `->>`, which chains statements."""
    tokens = tokenize_for_parser(sql)
    chunks: list[Chunk] = []
    current: list[Token] = []
    for index, token in enumerate(tokens):
        if token.token_type not in _SEPARATORS:
            if not current and _starts_script(tokens, index):
                chunks.append(Chunk(sql, tokens[index:], len(sql), script=True))
                return chunks
            current.append(token)
            continue
        if current:
            chunks.extend(_split_command(Chunk(sql, current, token.start)))
        current = []
    if current:
        chunks.extend(_split_command(Chunk(sql, current, len(sql))))
    return chunks


def _split_command(chunk: Chunk) -> list[Chunk]:
    """sqlglot's tokenizer keeps the text after CALL, EXECUTE, ... as one string, which
    would hide a `->>` chain in it: look inside and split there too."""
    tokens = chunk.tokens
    if not (
        tokens[0].token_type in _COMMAND_TOKENS
        and len(tokens) == 2
        and tokens[1].token_type is TokenType.STRING
    ):
        return [chunk]
    rest_start = tokens[0].end + 1
    try:
        rest = tokenize(chunk.sql[rest_start : chunk.end])
    except TokenError:
        return [chunk]
    arrow = next((token for token in rest if token.token_type is TokenType.DARROW), None)
    if arrow is None:
        return [chunk]
    head = Chunk(chunk.sql, tokens, rest_start + arrow.start)
    return [head, *split_statements(chunk.sql[rest_start + arrow.end + 1 : chunk.end])]


def _starts_script(tokens: list[Token], index: int) -> bool:
    token = tokens[index]
    if token.token_type in (TokenType.IDENTIFIER, TokenType.STRING):
        return False
    word = token.text.upper()
    if word == "DECLARE":
        return True
    if word != "BEGIN":
        return False
    following = tokens[index + 1] if index + 1 < len(tokens) else None
    return (
        following is not None
        and following.token_type is not TokenType.SEMICOLON
        and following.text.upper() not in ("TRANSACTION", "WORK", "NAME")
    )
