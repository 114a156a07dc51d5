"""A SQL text to classified statements: split, then each statement by its lead keyword and parse.

Statements sqlglot parses go to `analysis.Analysis`; those it keeps as a
generic Command (CALL, EXECUTE, many SHOW, GRANT and ALTER forms) are read
here from their tokens; EXECUTE IMMEDIATE and EXPLAIN classify the text they
carry, to a bounded depth.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements.analysis import Analysis
from hoopgw.recorder.statements.context import Context, context_after
from hoopgw.recorder.statements.names import unknown_object
from hoopgw.recorder.statements.nodes import keyword, unlink
from hoopgw.recorder.statements.objects import scan_objects, search_path_schemas
from hoopgw.recorder.statements.splitting import Chunk, split_statements
from hoopgw.recorder.statements.statement import Statement
from hoopgw.recorder.statements.tokens import tokenize
from hoopgw.recorder.statements.vocabulary import (
    DIALECT,
    LEAD_KINDS,
    MAX_DEPTH,
    READ_ONLY_KINDS,
    SCRIPT_WRITE_WORDS,
    node_kind,
)


def classify_text(sql: str, context: Context, depth: int) -> Iterator[Statement]:
    """Each statement of `sql` in order, the context carried from one to the next."""
    try:
        chunks = split_statements(sql)
    except TokenError:
        yield _unknown(
            sql.strip(), context, "cannot be tokenized (unterminated string, identifier or comment)"
        )
        return
    for chunk in chunks:
        try:
            statement = classify_chunk(chunk, context, depth)
        except RecursionError:
            statement = _unknown(chunk.text, context, "nested too deeply to analyse")
        except Exception as error:  # a statement the analysis trips on must not pass unseen
            reason = f"cannot be analysed ({type(error).__name__})"
            statement = _unknown(chunk.text, context, reason)
        if statement.new_context is not None:
            context = statement.new_context
        yield statement


# --- one statement -----------------------------------------------------------


def classify_chunk(chunk: Chunk, context: Context, depth: int) -> Statement:
    if chunk.script:
        return _script(chunk, context, depth)
    lead = chunk.tokens[0]
    kind = None
    if lead.token_type not in (TokenType.IDENTIFIER, TokenType.STRING):
        kind = LEAD_KINDS.get(lead.text.upper())
    if kind in ("BEGIN", "COMMIT", "ROLLBACK", "UNSET"):
        return _simple(kind, chunk, context)
    if lead.text.upper() == "WITH" and _declares_procedure(chunk.tokens):
        return Statement(
            kind="CALL",
            text=chunk.text,
            reads=scan_objects(chunk.tokens[1:], chunk.sql, context),
            hidden="runs an anonymous procedure (WITH ... AS PROCEDURE)",
            context=context,
        )
    try:
        parsed = DIALECT.parser().parse(chunk.tokens, chunk.sql)
    except ParseError as error:
        if kind in ("SHOW", "DESCRIBE"):
            return _command(kind, chunk.rest, chunk.text, context, depth)
        if kind == "USE" and _names_roles(chunk.tokens):
            # unparsable, but a role change whatever Snowflake makes of the rest
            return Statement(
                kind="USE",
                text=chunk.text,
                parse_error=_describe_parse_error(error),
                context=context,
            )
        return _unknown(chunk.text, context, _describe_parse_error(error))
    except (TokenError, RecursionError, ValueError) as error:
        return _unknown(chunk.text, context, f"cannot be parsed ({type(error).__name__})")
    try:
        return _classify_parsed(parsed, kind, chunk, context, depth)
    finally:
        unlink(parsed)


def _classify_parsed(
    parsed: list[exp.Expression | None],
    kind: str | None,
    chunk: Chunk,
    context: Context,
    depth: int,
) -> Statement:
    root = parsed[0] if len(parsed) == 1 else None
    if root is None:
        return _unknown(chunk.text, context, "not one statement")
    if isinstance(root, exp.Command):
        if kind is None:
            return _unknown(chunk.text, context, "not a statement Snowflake runs")
        return _command(kind, chunk.rest, chunk.text, context, depth)
    root_kind = node_kind(root)
    if root_kind is None:
        if kind is None:
            return _unknown(chunk.text, context, "not a statement Snowflake runs")
        return _command(kind, chunk.rest, chunk.text, context, depth)
    statement = Analysis(root, kind or root_kind, chunk.text, context, depth).statement()
    if isinstance(root, exp.Create):
        return _with_procedure_body(statement, root, context, depth)
    return statement


def _with_procedure_body(
    statement: Statement, root: exp.Create, context: Context, depth: int
) -> Statement:
    """CREATE PROCEDURE ... LANGUAGE SQL AS '...': the body's statements are its inner ones,
    so every check sees what a later CALL runs. Bodies in other languages are not read."""
    if keyword(root.args.get("kind")) != "PROCEDURE":
        return statement
    properties = root.args.get("properties")
    language = next(
        (
            prop.this.name.upper()
            for prop in (properties.expressions if isinstance(properties, exp.Properties) else [])
            if isinstance(prop, exp.LanguageProperty) and isinstance(prop.this, exp.Expression)
        ),
        "SQL",
    )
    body = root.expression
    if isinstance(body, exp.Block) and len(body.expressions) == 1:
        body = body.expressions[0]
    if language != "SQL" or not isinstance(body, exp.Literal | exp.RawString):
        return statement
    if depth >= MAX_DEPTH:
        return dataclasses.replace(statement, hidden="nests procedure bodies too deeply")
    inner = tuple(classify_text(body.name, context, depth + 1))
    return dataclasses.replace(statement, inner=statement.inner + inner)


def _names_roles(tokens: Sequence[Token]) -> bool:
    following = tokens[1] if len(tokens) > 1 else None
    return (
        following is not None
        and following.token_type not in (TokenType.IDENTIFIER, TokenType.STRING)
        and following.text.upper() in ("ROLE", "ROLES", "SECONDARY")
    )


_L_PAREN, _R_PAREN, _WHERE = TokenType.L_PAREN, TokenType.R_PAREN, TokenType.WHERE
"""Read once: an enum member looked up on its class costs a descriptor call each time."""


def _declares_procedure(tokens: Sequence[Token]) -> bool:
    """`WITH name AS PROCEDURE (...) ... CALL name()`: Snowflake's anonymous procedures."""
    depth = 0
    for first, second in itertools.pairwise(tokens):
        if first.token_type is _L_PAREN:
            depth += 1
        elif first.token_type is _R_PAREN:
            depth -= 1
        elif depth == 0 and first.text.upper() == "AS" and second.text.upper() == "PROCEDURE":
            return True
    return False


def _describe_parse_error(error: ParseError) -> str:
    """A parse error without SQL snippets: the text may hold credential literals."""
    if error.errors:
        first = error.errors[0]
        description = first.get("description") or "invalid syntax"
        return f"{description} at line {first.get('line')}, column {first.get('col')}"
    return "invalid syntax"


def _unknown(text: str, context: Context, reason: str) -> Statement:
    return Statement(kind="UNKNOWN", text=text, parse_error=reason, context=context)


def _simple(kind: str, chunk: Chunk, context: Context) -> Statement:
    """Transaction control and UNSET: nothing to resolve, and sqlglot misreads some forms."""
    following = [token.text.upper() for token in chunk.tokens[1:2]]
    if chunk.tokens[0].text.upper() == "START" and following != ["TRANSACTION"]:
        return _unknown(chunk.text, context, "START must be followed by TRANSACTION")
    if not _simple_shape(kind, chunk.tokens[1:]):
        # a harmless lead word must not carry a longer statement past the checks
        return _unknown(chunk.text, context, f"not a {kind} statement Snowflake runs")
    return Statement(kind=kind, text=chunk.text, read_only=True, context=context)


def _is_name(token: Token) -> bool:
    """A variable name: a word or a quoted identifier (a keyword can name a variable too)."""
    return token.token_type is TokenType.IDENTIFIER or token.text.replace("_", "").isalnum()


def _simple_shape(kind: str, rest: Sequence[Token]) -> bool:
    """BEGIN|START [WORK|TRANSACTION] [NAME n], COMMIT|ROLLBACK [WORK], UNSET v | (v, ...)."""
    words = [token.text.upper() for token in rest]
    if kind == "UNSET":
        if len(rest) == 1:
            return _is_name(rest[0])
        inner = rest[1:-1]
        return (
            len(rest) >= 3
            and rest[0].token_type is TokenType.L_PAREN
            and rest[-1].token_type is TokenType.R_PAREN
            and all(
                _is_name(token) if index % 2 == 0 else token.token_type is TokenType.COMMA
                for index, token in enumerate(inner)
            )
            and len(inner) % 2 == 1
        )
    if kind in ("COMMIT", "ROLLBACK"):
        return words in ([], ["WORK"])
    if words[:1] in (["WORK"], ["TRANSACTION"]):
        words, rest = words[1:], rest[1:]
    return words == [] or (len(words) == 2 and words[0] == "NAME")


def _script(chunk: Chunk, context: Context, depth: int) -> Statement:
    """A Snowflake Scripting block: its statements are reported by keyword, as hidden.

    What would change the role or the service user is found by its words (`USE ROLE`,
    `USE SECONDARY ROLES`, `ALTER USER ... DEFAULT_SECONDARY_ROLES`), and the SQL a block
    gives to `EXECUTE IMMEDIATE` as a literal is classified like any other text.
    """
    reason = "is a Snowflake Scripting block"
    found: dict[str, None] = {}
    nested: list[Statement] = []
    tokens = chunk.tokens
    for index, token in enumerate(tokens[1:], start=1):
        if token.token_type in (TokenType.STRING, TokenType.RAW_STRING):
            before = tokens[index - 1]
            if depth >= MAX_DEPTH:
                pass
            elif before.token_type in _COMMAND_TOKENS:
                # the tokenizer keeps the rest of `EXECUTE ...`, `CALL ...` as one string
                nested.extend(classify_text(f"{before.text} {token.text}", context, depth + 1))
            elif before.text.upper() == "IMMEDIATE":
                nested.extend(classify_text(token.text, context, depth + 1))
            continue
        if token.token_type in (TokenType.VAR, TokenType.IDENTIFIER):
            continue
        word = token.text.upper()
        following = tokens[index + 1].text.upper() if index + 1 < len(tokens) else ""
        if word == "USE" and following in ("ROLE", "SECONDARY"):
            nested.append(Statement(kind="USE", text=chunk.text, hidden=reason, context=context))
        elif word == "ALTER" and following == "USER" and _sets_default_roles(tokens[index:]):
            nested.append(
                Statement(
                    kind="ALTER",
                    text=chunk.text,
                    hidden=reason,
                    changes_default_roles=True,
                    context=context,
                )
            )
        inner_kind = SCRIPT_WRITE_WORDS.get(word)
        if inner_kind is not None:
            found[inner_kind] = None
    inner = tuple(
        Statement(kind=inner_kind, text=chunk.text, hidden=reason, context=context)
        for inner_kind in found
    )
    return Statement(
        kind="SCRIPT",
        text=chunk.text,
        reads=scan_objects(chunk.tokens[1:], chunk.sql, context),
        inner=inner + tuple(nested),
        hidden=reason,
        context=context,
    )


_COMMAND_TOKENS = frozenset(DIALECT.tokenizer_class.COMMANDS)
_DEFAULT_ROLE_PROPERTIES = frozenset({"DEFAULT_ROLE", "DEFAULT_SECONDARY_ROLES"})


def _sets_default_roles(tokens: Sequence[Token]) -> bool:
    """Whether an ALTER USER (up to its `;`) sets, unsets or resets a user's default roles."""
    for token in tokens:
        if token.token_type is TokenType.SEMICOLON:
            return False
        if token.token_type in (TokenType.STRING, TokenType.RAW_STRING):
            continue
        if token.text.strip().upper() in _DEFAULT_ROLE_PROPERTIES:
            return True
    return False


# --- statements sqlglot keeps as a generic Command ---------------------------


def _command(kind: str, rest: str, text: str, context: Context, depth: int) -> Statement:
    try:
        tokens = tokenize(rest)
    except TokenError:
        return _unknown(text, context, "cannot be tokenized")
    if kind == "EXECUTE":
        return _execute(tokens, rest, text, context, depth)
    if kind == "EXPLAIN":
        return _explain(tokens, rest, text, context, depth)
    words = [token.text.upper() for token in tokens[:2]]
    objects = scan_objects(tokens, rest, context, first_is_object=kind == "CALL")
    read_only = kind in READ_ONLY_KINDS and kind != "USE"
    sets_session = (
        kind == "ALTER" and words[:1] == ["SESSION"] and words[1:] in (["SET"], ["UNSET"])
    )
    if sets_session:
        read_only = True
        objects = tuple(dict.fromkeys((*objects, *_search_path_reads(tokens[2:], context))))
    keeps_reads = read_only or kind in ("CALL", "GET")
    calls = ()
    if kind == "CALL" and tokens:
        name = tokens[0].text.strip().upper()
        calls = (name,) if name.startswith("SYSTEM$") else ()
    return Statement(
        kind=kind,
        text=text,
        reads=objects if keeps_reads else (),
        writes=() if keeps_reads else objects,
        has_where=_where_at_top_level(tokens) if kind in ("DELETE", "UPDATE") else None,
        replaces=kind == "CREATE" and words == ["OR", "REPLACE"],
        read_only=read_only,
        calls=calls,
        changes_default_roles=kind == "ALTER"
        and words[:1] == ["USER"]
        and _sets_default_roles(tokens),
        context=context,
    )


def _search_path_reads(tokens: Sequence[Token], context: Context) -> list[str]:
    """The schemas `ALTER SESSION SET ... SEARCH_PATH = value ...` reads, from its tokens.

    Only a value of one string literal (quoted or `$$`) is read; any other spelling
    (an identifier, a concatenation, a variable) names an unknown schema.
    """
    for index, token in enumerate(tokens):
        if token.text.strip().upper() != "SEARCH_PATH" or token.token_type in (
            TokenType.STRING,
            TokenType.RAW_STRING,
        ):
            continue
        value = _parameter_value(tokens, index + 2)
        if len(value) == 1 and value[0].token_type in (TokenType.STRING, TokenType.RAW_STRING):
            return search_path_schemas(value[0].text, context)
        return [unknown_object(2)]
    return []


def _parameter_value(tokens: Sequence[Token], start: int) -> list[Token]:
    """The tokens of one `name = value` assignment's value: up to a comma, a `;`, or the
    next `name =`."""
    value: list[Token] = []
    for index in range(start, len(tokens)):
        token = tokens[index]
        if token.token_type in (TokenType.COMMA, TokenType.SEMICOLON):
            break
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if value and following is not None and following.token_type is TokenType.EQ:
            break
        value.append(token)
    return value


_RUN_TIME_SQL = "runs SQL the gateway cannot see (built at run time or read from a stage)"


def _execute(tokens: list[Token], rest: str, text: str, context: Context, depth: int) -> Statement:
    words = [token.text.upper() for token in tokens[:3]]
    if words[:1] == ["TASK"]:
        reads = scan_objects(tokens[1:], rest, context, first_is_object=True)
        return Statement(kind="EXECUTE", text=text, reads=reads, context=context)
    literal = (
        tokens[1]
        if words[:1] == ["IMMEDIATE"]
        and len(tokens) >= 2
        and tokens[1].token_type in (TokenType.STRING, TokenType.RAW_STRING)
        and (len(tokens) == 2 or words[2] == "USING")
        else None
    )
    if literal is None:
        return Statement(kind="EXECUTE", text=text, hidden=_RUN_TIME_SQL, context=context)
    if depth >= MAX_DEPTH:
        return Statement(
            kind="EXECUTE", text=text, hidden="nests EXECUTE IMMEDIATE too deeply", context=context
        )
    inner = tuple(classify_text(literal.text, context, depth + 1))
    problem = _first_problem(inner)
    return Statement(
        kind="EXECUTE",
        text=text,
        inner=inner,
        hidden=f"runs SQL that {_as_clause(problem)}" if problem else None,
        read_only=problem is None and all(s.read_only for s in inner),
        context=context,
        new_context=(
            context_after(inner, *context)
            if any(s.new_context is not None for s in inner)
            else None
        ),
    )


def _first_problem(statements: Iterable[Statement]) -> str | None:
    return next((s.parse_error or s.hidden for s in statements if s.parse_error or s.hidden), None)


def _as_clause(problem: str) -> str:
    """Parse errors read as nouns, hidden reasons as verb phrases; make both follow 'that'."""
    if problem.startswith(("is ", "runs ", "nests ")):
        return problem
    return f"cannot be parsed ({problem})"


def _explain(tokens: list[Token], rest: str, text: str, context: Context, depth: int) -> Statement:
    words = [token.text.upper() for token in tokens[:1]]
    start = 2 if words == ["USING"] and len(tokens) > 2 else 0
    explained_text = rest[tokens[start].start :] if len(tokens) > start else ""
    explained = list(classify_text(explained_text, context, depth + 1)) if depth < MAX_DEPTH else []
    names = [name for s in explained for name in s.objects]
    if len(explained) != 1 or explained[0].parse_error is not None:
        names.append(unknown_object(3))
    return Statement(
        kind="EXPLAIN",
        text=text,
        reads=tuple(dict.fromkeys(names)),
        read_only=True,
        context=context,
    )


def _where_at_top_level(tokens: list[Token]) -> bool:
    depth = 0
    for token in tokens:
        if token.token_type is _L_PAREN:
            depth += 1
        elif token.token_type is _R_PAREN:
            depth -= 1
        elif depth == 0 and token.token_type is _WHERE:
            return True
    return False
