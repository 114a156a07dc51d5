"""SELECTs that differ only in the values they compare columns to, classified once.

An agent's statements are mostly new texts, and many differ from one it sent
before only in a value: `WHERE id = 41`, then `WHERE id = 42`. sqlglot's parse
is most of classifying such a text. A text's shape is the text with those
values cut out; the shape of a plain SELECT, once classified, stands for every
text of that shape, each with its own text.

Why that holds, and why only this far:
- Only a number, or a string in single quotes, that directly follows a
  comparison operator that directly follows a name (`id = 42`,
  `t."Kind" <> 'click'`) is cut out. Everything else, whitespace and comments
  too, is the shape, so two texts of one shape have the same tokens but for
  those values, and sqlglot's parser makes a plain literal of a value there
  (it reads inside literals after INTERVAL or a type name, or as a
  function's arguments: never in that place).
- Of a literal in that place the classification reads one thing: whether a
  string names a stage (`'@stage/path'`). A string starting with `@` stays in
  the shape. (Literals it reads as names, in IDENTIFIER, TABLE and GET_DDL,
  are arguments, not compared values.)
- `restriction` folds constant conditions (`WHERE 1 = 1`), so it depends on
  values; it runs only for UPDATE, DELETE and MERGE. Only a classification
  with nothing but reads is kept: one statement of kind SELECT, read-only,
  parsed, nothing hidden or nested, no state-changing call, the context
  unchanged. Anything else is classified every time.
- The key is the text's pieces between the cut values and the kind of each
  value, with the context: exact, so no two different shapes share an entry.

`tests/test_statements_shapes.py` checks every text of the statement tests' corpus,
and SELECTs built around each construct whose literals are read, with their values
changed, against the text's classification on its own.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements.context import Context
from hoopgw.recorder.statements.seen import SeenOnce
from hoopgw.recorder.statements.statement import Statement
from hoopgw.recorder.statements.tokens import tokenize

SHAPES_MAX: Final = 512
"""Shapes kept. Each is one Statement and its key; a shape repeats where a text does not,
so a few hundred cover an agent's templates without giving the collector much to walk."""
SEEN_MAX: Final = 4 * SHAPES_MAX
"""Shapes remembered as seen once (by hash) before the memory starts afresh."""
SHAPE_MAX_CHARS: Final = 4096
"""Longer texts are classified every time: a long text is rarely repeated with new values."""

_COMPARISONS: Final = frozenset(
    {TokenType.EQ, TokenType.NEQ, TokenType.LT, TokenType.LTE, TokenType.GT, TokenType.GTE}
)
_NAMES: Final = frozenset({TokenType.VAR, TokenType.IDENTIFIER})
_VALUES: Final = frozenset({TokenType.NUMBER, TokenType.STRING})
_SEPARATORS: Final = frozenset({TokenType.SEMICOLON, TokenType.DARROW})
STAGE_MARK: Final = "@"

Key = tuple[object, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """A text's shape (`key`) and the text its statement would carry (`text`)."""

    key: Key
    text: str


def shape_of(sql: str, context: Context) -> Shape | None:
    """`sql`'s shape, or None when it has no value to cut or is not one statement."""
    if len(sql) > SHAPE_MAX_CHARS:
        return None
    try:
        tokens = tokenize(sql)
    except TokenError:
        return None
    end = _statement_end(tokens, len(sql))
    if end is None:
        return None
    pieces: list[object] = [context]
    cut_from = 0
    for index in range(2, len(tokens)):
        token = tokens[index]
        if token.token_type not in _VALUES or not _is_compared_value(tokens, index):
            continue
        pieces.append(sql[cut_from : token.start])
        pieces.append(token.token_type)
        cut_from = token.end + 1
    if cut_from == 0:
        return None
    pieces.append(sql[cut_from:])
    return Shape(tuple(pieces), sql[tokens[0].start : end].strip())


def _is_compared_value(tokens: Sequence[Token], index: int) -> bool:
    token = tokens[index]
    if token.token_type is TokenType.STRING and token.text.startswith(STAGE_MARK):
        return False
    return tokens[index - 1].token_type in _COMPARISONS and tokens[index - 2].token_type in _NAMES


def _statement_end(tokens: Sequence[Token], length: int) -> int | None:
    """Where the text's one statement ends (a trailing `;` allowed); None for several."""
    if not tokens:
        return None
    for index, token in enumerate(tokens):
        if token.token_type in _SEPARATORS:
            if any(rest.token_type not in _SEPARATORS for rest in tokens[index + 1 :]):
                return None
            return token.start if index else None
    return length


def stands_for_its_shape(statements: Sequence[Statement]) -> bool:
    """A classification that no cut value can have changed (the module's reasons)."""
    if len(statements) != 1:
        return False
    statement = statements[0]
    return (
        statement.kind == "SELECT"
        and statement.read_only
        and not statement.writes
        and statement.has_where is None
        and statement.parse_error is None
        and statement.hidden is None
        and not statement.inner
        and not statement.calls
        and not statement.changes_default_roles
        and statement.new_context is None
    )


class ShapeCache:
    """Classifications by shape, bounded (least recently used first out), thread-safe.

    A shape is kept on its second sight, as the text cache keeps texts: a shape
    seen once is remembered by its hash only.
    """

    def __init__(self, size: int = SHAPES_MAX, seen_max: int = SEEN_MAX) -> None:
        self.size = size
        self.hits = 0
        self._kept: OrderedDict[Key, Statement] = OrderedDict()
        self._seen_once = SeenOnce(seen_max)
        self._lock = threading.Lock()

    @property
    def seen_max(self) -> int:
        """Shapes remembered as seen once before the memory starts afresh."""
        return self._seen_once.limit

    def get(self, shape: Shape) -> Statement | None:
        """The statement of `shape`'s text, if a text of that shape was classified."""
        with self._lock:
            statement = self._kept.get(shape.key)
            if statement is None:
                return None
            self._kept.move_to_end(shape.key)
            self.hits += 1
        return dataclasses.replace(statement, text=shape.text)

    def put(self, shape: Shape, statements: Sequence[Statement]) -> None:
        """Keep `statements` (the classification of a text of `shape`) if it stands for it."""
        if not stands_for_its_shape(statements):
            return
        with self._lock:
            if not self._seen_once.seen_before(hash(shape.key)):
                return
            self._kept[shape.key] = statements[0]
            self._kept.move_to_end(shape.key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._seen_once.clear()
            self.hits = 0

    def __len__(self) -> int:
        return len(self._kept)
