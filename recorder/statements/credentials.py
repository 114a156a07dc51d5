"""Where a SQL text gives a credential a value: read off sqlglot's Snowflake tokens.

The recorder masks bind values and literals that a statement assigns to a
credential property. Deciding that by a pattern over the text misses spellings
Snowflake accepts (`PASSWORD /* note */ = ?`, `"PASSWORD" = ?`, `password => ?`
in a call), so the decision is made on the tokens sqlglot's Snowflake tokenizer
reads: comments, whitespace, case and identifier quoting are gone by then. A
command sqlglot keeps as one string after its lead word (`CALL p(...)`) is
tokenized again, and so is a string literal that holds SQL (`EXECUTE IMMEDIATE
'...'`). A text the tokenizer cannot read gives no answer (`None`), and callers
treat it as the worst case.

A credential property is a name that is, or ends like, one of Snowflake's
secret-bearing properties and arguments (PASSWORD, PASSCODE, TOKEN, SECRET,
`*_KEY`, `*_KEY_ID`, RSA_PUBLIC_KEY_2, ...), followed by `=`, `=>` or `:=`, or
`IDENTIFIED BY`; its value is the expression after that (`?`,
`CONCAT(?, 'x')`, `'a' || ?`). `CREDENTIALS = (...)` and `ENCRYPTION = (...)`
make every value in their list one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements.tokens import tokenize
from hoopgw.recorder.statements.vocabulary import DIALECT

ASSIGN: Final = frozenset({TokenType.EQ, TokenType.FARROW, TokenType.COLON_EQ})
STRINGS: Final = frozenset(
    {
        TokenType.STRING,
        TokenType.RAW_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.BYTE_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.UNICODE_STRING,
    }
)
_OPERATORS: Final = frozenset(
    {
        TokenType.DPIPE,
        TokenType.PLUS,
        TokenType.DASH,
        TokenType.STAR,
        TokenType.SLASH,
        TokenType.MOD,
        TokenType.DOT,
        TokenType.DCOLON,
    }
)
_STOPS: Final = frozenset(
    {TokenType.COMMA, TokenType.SEMICOLON, TokenType.R_PAREN, TokenType.R_BRACKET}
)
_BIND_NAME: Final = re.compile(r"\w+")
_COMMANDS: Final = frozenset(DIALECT.tokenizer_class.COMMANDS)
_LISTS: Final = frozenset({"CREDENTIALS", "ENCRYPTION"})
_NAMES: Final = frozenset({"TOKEN", "PRIVATE_KEY", "RSA_PUBLIC_KEY_2", "MASTER_KEY", "API_KEY"})
_NAME_PARTS: Final = ("PASSWORD", "PASSWD", "PASSCODE", "PASSPHRASE", "SECRET", "CREDENTIAL")
_NAME_SUFFIXES: Final = ("TOKEN", "_KEY", "_KEY_ID", "_KEY_2", "PRIVATE_KEY")
TRIGGER_WORDS: Final = ("PASS", "SECRET", "CREDENTIAL", "TOKEN", "KEY", "ENCRYPTION", "IDENTIFIED")
"""Every credential name contains one of these: a text with none skips tokenizing."""
MAX_DEPTH: Final = 3


def is_credential_name(name: str) -> bool:
    """Whether a property or argument name gives a credential its value."""
    upper = name.upper()
    return (
        upper in _NAMES
        or upper in _LISTS
        or upper.endswith(_NAME_SUFFIXES)
        or any(part in upper for part in _NAME_PARTS)
    )


def may_name_credentials(sql: str) -> bool:
    upper = sql.upper()
    return any(word in upper for word in TRIGGER_WORDS)


def binds_credential(sql: str) -> bool | None:
    """Whether a bind placeholder (`?`, `:1`, `:name`, `$1`) is part of a credential's value.

    None when the text (or SQL nested in it) cannot be tokenized: the caller
    cannot know, and should mask as if it did.
    """
    if not may_name_credentials(sql):
        return False
    try:
        return _binds(sql, 0)
    except SqlglotError:
        return None


def _binds(sql: str, depth: int) -> bool:
    tokens = tokenize(sql)
    for start, end in credential_values(tokens):
        if any(_is_placeholder(tokens, index) for index in range(start, end)):
            return True
    if depth >= MAX_DEPTH:
        return False
    for token in nested_sql(tokens):
        if may_name_credentials(token.text) and _binds(token.text, depth + 1):
            return True
    return False


def nested_sql(tokens: list[Token]) -> Iterator[Token]:
    """String tokens that may hold SQL: a command's remainder, and string literals."""
    for index, token in enumerate(tokens):
        if token.token_type in STRINGS and (
            index == 0 or tokens[index - 1].token_type not in _COMMANDS
        ):
            yield token
        elif (
            token.token_type in _COMMANDS
            and index + 1 < len(tokens)
            and tokens[index + 1].token_type == TokenType.STRING
        ):
            yield tokens[index + 1]


def credential_values(tokens: list[Token]) -> Iterator[tuple[int, int]]:
    """Token index ranges `[start, end)` of every value given to a credential.

    `NAME = value` (or `=>`, `:=`, `IDENTIFIED BY value`) yields the value's
    expression; `CREDENTIALS = (...)` and `ENCRYPTION = (...)` yield the whole
    parenthesised list; a name followed directly by a value (`PASSWORD 'x'`)
    yields that one token.
    """
    count = len(tokens)
    index = 0
    while index < count:
        token = tokens[index]
        upper = token.text.upper()
        value = index + 1
        if upper == "IDENTIFIED" and value < count and tokens[value].text.upper() == "BY":
            assigned = True
            value += 1
        elif token.token_type in STRINGS or not is_credential_name(upper):
            index += 1
            continue
        else:
            assigned = value < count and tokens[value].token_type in ASSIGN
            if assigned:
                value += 1
        if value >= count:
            return
        if upper in _LISTS and tokens[value].token_type == TokenType.L_PAREN:
            close = matching_paren(tokens, value)
            end = count if close is None else close + 1
            yield value, end
            index = end
            continue
        if assigned:
            end = value_end(tokens, value)
        elif tokens[value].token_type in STRINGS or tokens[value].token_type == (
            TokenType.PLACEHOLDER
        ):
            end = value + 1
        elif _is_placeholder(tokens, value):
            end = value + 2
        else:
            index += 1
            continue
        if end > value:
            yield value, end
        index = value


def value_end(tokens: list[Token], start: int) -> int:
    """Where the expression starting at `start` ends: operands joined by operators,
    calls and parenthesised groups, up to a comma, a closing parenthesis, a
    semicolon or the next word that no operator joins (the next property)."""
    count = len(tokens)
    index = start
    expect_operand = True
    while index < count:
        kind = tokens[index].token_type
        if not expect_operand:
            if kind not in _OPERATORS:
                break
            index += 1
            expect_operand = True
            continue
        if kind in _STOPS or (index + 1 < count and tokens[index + 1].token_type in ASSIGN):
            break
        if kind in (TokenType.DASH, TokenType.PLUS):
            index += 1
            continue
        if kind == TokenType.L_PAREN or (
            index + 1 < count and tokens[index + 1].token_type == TokenType.L_PAREN
        ):
            opening = index if kind == TokenType.L_PAREN else index + 1
            close = matching_paren(tokens, opening)
            if close is None:
                return count
            index = close + 1
        elif kind in (TokenType.COLON, TokenType.PARAMETER) and _is_placeholder(tokens, index):
            index += 2
        else:
            index += 1
        expect_operand = False
    return index


def matching_paren(tokens: list[Token], opening: int) -> int | None:
    depth = 0
    for index in range(opening, len(tokens)):
        kind = tokens[index].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return index
    return None


def _is_placeholder(tokens: list[Token], index: int) -> bool:
    kind = tokens[index].token_type
    if kind == TokenType.PLACEHOLDER:
        return True
    return (
        kind in (TokenType.COLON, TokenType.PARAMETER)
        and index + 1 < len(tokens)
        and tokens[index + 1].start == tokens[index].end + 1
        and _BIND_NAME.fullmatch(tokens[index + 1].text) is not None
    )
