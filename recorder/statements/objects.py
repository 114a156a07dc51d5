"""Object names read off the tokens of a statement sqlglot has no grammar for.

Also the token-level readers the parsed path shares: stage references
(`@db.s.stage/path`), dotted names given as strings and SEARCH_PATH values.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements.context import Context
from hoopgw.recorder.statements.names import ACCOUNT_LEVEL, render_name, resolve
from hoopgw.recorder.statements.vocabulary import DIALECT

# Keywords after which an unqualified name in a statement sqlglot keeps as a
# generic Command names a schema object; qualified names count everywhere.
_OBJECT_INTRODUCERS = frozenset(
    {
        "ON",
        "IN",
        "FROM",
        "INTO",
        "TABLE",
        "VIEW",
        "STAGE",
        "SEQUENCE",
        "FUNCTION",
        "PROCEDURE",
        "TASK",
        "STREAM",
        "PIPE",
        "FORMAT",
        "TAG",
        "POLICY",
        "ALERT",
        "SECRET",
        "LIKE",
        "CLONE",
        "TO",
        "EXISTS",
        "JOIN",
        "UPDATE",
        "USING",
    }
)
# Words that sqlglot may tokenize as plain names but that are grammar in
# statements kept as a generic Command (`GRANT ROLE r TO USER u`).
_GRAMMAR_WORDS = (
    ACCOUNT_LEVEL
    | _OBJECT_INTRODUCERS
    | frozenset(
        {
            "ALL",
            "DATABASE",
            "DATABASES",
            "FUTURE",
            "GRANTS",
            "OBJECTS",
            "SCHEMA",
            "SCHEMAS",
            "TABLES",
            "VIEWS",
            "STAGES",
            "FUNCTIONS",
            "PROCEDURES",
            "TASKS",
            "STREAMS",
            "PIPES",
            "SEQUENCES",
        }
    )
)
_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)


def scan_objects(
    tokens: Sequence[Token], text: str, context: Context, *, first_is_object: bool = False
) -> tuple[str, ...]:
    """Object names in a statement sqlglot has no grammar for, led by keywords.

    Qualified names count wherever they appear; unqualified ones only after a
    keyword that introduces an object (ON, IN, FROM, TABLE, ...), after SCHEMA
    or DATABASE (as containers) or as the first name of CALL / EXECUTE TASK.
    Names after account-level keywords (ROLE, USER, WAREHOUSE, ...) are skipped.
    """
    found: dict[str, None] = {}
    i = 0
    previous = ""
    first_pending = first_is_object
    while i < len(tokens):
        token = tokens[i]
        if token.token_type is TokenType.PARAMETER and token.text == "@":
            stage = stage_object(_stage_text(text, token.start), context)
            if stage:
                found[stage] = None
            i = _skip_stage(tokens, i)
            previous = ""
            continue
        if token.token_type is TokenType.STRING:
            if token.text.startswith("@"):
                stage = stage_object(token.text, context)
                if stage:
                    found[stage] = None
            elif (
                i >= 2
                and tokens[i - 1].token_type is TokenType.EQ
                and tokens[i - 2].text.upper() == "SEARCH_PATH"
            ):
                found.update(dict.fromkeys(search_path_schemas(token.text, context)))
            previous = ""
            i += 1
            continue
        if _is_name_start(tokens, i):
            parts, i = _read_chain(tokens, i)
            is_call = i < len(tokens) and tokens[i].token_type is TokenType.L_PAREN
            level = 3
            if previous in ("SCHEMA", "SCHEMAS"):
                level = 2
            elif previous in ("DATABASE", "DATABASES"):
                level = 1
            counts = first_pending or (
                previous not in ACCOUNT_LEVEL
                and (
                    len(parts) > 1
                    or (not is_call and (level < 3 or previous in _OBJECT_INTRODUCERS))
                )
            )
            first_pending = False
            if counts:
                name = resolve(parts, level, context)
                if name:
                    found[name] = None
            previous = parts[-1].upper()
            continue
        previous = token.text.upper()
        i += 1
    return tuple(found)


def _is_word(text: str) -> bool:
    return text.replace("_", "").replace("$", "").isalnum()


def _is_name_start(tokens: Sequence[Token], i: int) -> bool:
    token = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else None
    if following is not None and following.token_type is TokenType.DOT:
        return token.token_type is TokenType.IDENTIFIER or _is_word(token.text)
    if token.token_type is TokenType.IDENTIFIER:
        return True
    return token.token_type is TokenType.VAR and token.text.upper() not in _GRAMMAR_WORDS


def _read_chain(tokens: Sequence[Token], i: int) -> tuple[list[str], int]:
    parts = [_token_part(tokens[i])]
    i += 1
    while i < len(tokens) and tokens[i].token_type is TokenType.DOT:
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if following is not None and following.token_type is TokenType.DOT:
            parts.append("")
            i += 1
            continue
        if following is None or not (
            following.token_type in _NAME_TOKENS or _is_word(following.text)
        ):
            break
        parts.append(_token_part(following))
        i += 2
    return parts, i


def _token_part(token: Token) -> str:
    return token.text if token.token_type is TokenType.IDENTIFIER else token.text.upper()


def _stage_text(text: str, start: int) -> str:
    end = start
    quoted = False
    while end < len(text):
        char = text[end]
        if char == '"':
            quoted = not quoted
        elif not quoted and (char.isspace() or char in ",;()"):
            break
        end += 1
    return text[start:end]


def _skip_stage(tokens: Sequence[Token], i: int) -> int:
    """Index of the first token after the stage reference that starts at tokens[i]."""
    end = tokens[i].end
    i += 1
    while i < len(tokens) and tokens[i].start == end + 1:
        end = tokens[i].end
        i += 1
    return i


def stage_object(reference: str, context: Context) -> str | None:
    """The schema object behind a stage reference: `@st/p`, `@db.s.st`, `@%table`; `@~` is none."""
    body = reference[1:] if reference.startswith("@") else reference
    if body.startswith("%"):
        body = body[1:]
    elif body.startswith("~") or not body:
        return None
    name_chars: list[str] = []
    quoted = False
    for char in body:
        if char == '"':
            quoted = not quoted
        elif char == "/" and not quoted:
            break
        name_chars.append(char)
    parts = parse_dotted("".join(name_chars))
    return resolve(parts, 3, context) if parts else None


def parse_dotted(name: str) -> list[str] | None:
    try:
        tokens = DIALECT.tokenize(name)
    except TokenError:
        return None
    if not tokens or not _is_name_start(tokens, 0):
        return None
    parts, end = _read_chain(tokens, 0)
    return parts if end == len(tokens) else None


def search_path_schemas(value: str, context: Context) -> list[str]:
    """Schemas a SEARCH_PATH value names: unqualified names in queries resolve through them."""
    database = context[0]
    schemas: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.lower() == "$current":
            continue
        if entry.lower() == "$public":
            schemas.append(render_name([database, "PUBLIC"]))
            continue
        parts = parse_dotted(entry)
        name = resolve(parts, 2, context) if parts else None
        schemas.append(name or render_name([database, None]))
    return schemas
