"""SELECTs classified once per shape (recorder/statements/shapes.py).

A text served by its shape must classify exactly as it does on its own. The
corpus test changes every cut value of every text of the statement tests'
corpus and compares; the frames put compared values beside every construct
whose literals the classification reads; the cases are places where a
literal's value does change a classification, each of which must stay out of
a shared shape.
"""

from __future__ import annotations

import itertools

import pytest
from sqlglot.tokens import TokenType

from hoopgw.recorder import statements
from hoopgw.recorder.statements import Statement, classify
from hoopgw.recorder.statements.classification import classify_text
from hoopgw.recorder.statements.context import Context
from hoopgw.recorder.statements.shapes import SEEN_MAX, ShapeCache, shape_of
from tests.test_statements_golden import CONTEXTS, corpus

NUMBERS = ("0", "7", "1e3", "99999999999999999999", "3.5", "41")
STRINGS = ("''", "'x'", "'it''s'", "'1'", "'DB.S.OTHER'", "' @stage'")


def fresh(sql: str, context: Context) -> list[Statement]:
    """The classification of `sql` on its own: no classification cache in between."""
    return list(classify_text(sql, context, 0))


def variants(sql: str, context: Context, count: int) -> list[str]:
    """`count` texts of `sql`'s shape, each cut value replaced by another of its kind."""
    shape = shape_of(sql, context)
    assert shape is not None
    pieces = shape.key[1:]
    texts = []
    for offset in range(1, count + 1):
        parts: list[str] = []
        for position, piece in enumerate(pieces):
            if isinstance(piece, str):
                parts.append(piece)
            else:
                choices = NUMBERS if piece is TokenType.NUMBER else STRINGS
                parts.append(choices[(offset + position) % len(choices)])
        texts.append("".join(parts))
    return texts


def served(texts: list[str], context: Context) -> list[list[Statement]]:
    """Classify `texts` in order through `classify` (and so its caches), from empty caches."""
    statements.clear_cache()
    database, schema = context
    return [classify(sql, database=database, schema=schema) for sql in texts]


def test_every_corpus_text_with_its_values_changed_classifies_as_on_its_own() -> None:
    compared = hits = 0
    for sql, context in itertools.product(corpus(), CONTEXTS):
        if shape_of(sql, context) is None:
            continue
        texts = [sql, *variants(sql, context, 4)]
        answers = served(texts, context)
        hits += statements.shapes.hits
        for text, answer in zip(texts, answers, strict=True):
            assert answer == fresh(text, context), text
            compared += 1
    assert compared > 200
    assert hits > 0, "the shape cache served none of the corpus"


# SELECTs with a value compared with a name, `{v}`, beside the constructs whose literals
# the parser or the walk does read: stages, IDENTIFIER, TABLE, GET_DDL, INTERVAL, casts,
# adjacent strings, comments, calls that change state, SELECT INTO.
FRAMES = (
    "select * from t where a = {v}",
    "select * from t where a = {v}::date and b <> {v}",
    "select * from t where a = {v} 'adjacent' and b = {v} '@st/adjacent'",
    "select * from t where a = {v} || 'x' and b >= {v} + 1",
    "select * from t where a = {v} and b > current_date - interval '1 day'",
    "select * from table(result_scan(last_query_id())) where a = {v}",
    "select * from identifier('db.s.t') where a = {v}",
    "select * from identifier(a = {v})",
    "select * from table(a = {v})",
    "select get_ddl('table', a = {v})",
    "select get_ddl('table', 'db.s.t2') from t where a = {v}",
    "select * from @st/path where $1 = {v}",
    "select * from t at(offset => -60) where a = {v}",
    "select a = {v}, b <= {v} from t",
    "select * from t1 join s2.t2 on t1.a = t2.b and t2.c = {v} where t1.d < {v}",
    "select * from (select * from t where a = {v}) s where s.b = {v}",
    "with c as (select * from t where a = {v}) select * from c where b = {v}",
    "with c as (delete from t where a = {v}) select * from c",
    "select case when a = {v} then 1 else 0 end from t",
    "select * from t where exists (select 1 from u where u.a = {v}) order by b limit 10",
    "select * from t where a = {v} union all select * from u where b = {v}",
    "select * from t sample (10) where a = {v}",
    "select * from t, lateral flatten(input => t.j) f where f.value = {v}",
    "select * from t where a = /* c */ {v} -- trailing",
    "select * from t where a = {v} collate 'en-ci'",
    'select * from t where "A b" = {v} and "x"."y" != {v}',
    "select * from t where date = {v} and a = {v}",
    "select system$cancel_query(q = {v})",
    "select * from t where a = {v} and system$typeof(b) = {v}",
    "select * into t2 from t where a = {v}",
    "select * from t where a = {v};",
    "select * from t where a = {v}; select * from u where b = {v}",
    "explain select * from t where a = {v}",
    "select * from t changes(information => default) at(timestamp => {v}) where a = {v}",
    "select * from t where a = {v} and b = '@st/x'",
)
VALUES = (
    "1",
    "0",
    "1e5",
    "3.25",
    "99999999999999999999999",
    "'x'",
    "''",
    "'it''s'",
    "'@st/other'",
    "'db.s.t3'",
    "'1 day'",
    "'2020-01-01'",
    "'; drop table t'",
    "'a\\'b'",
    "'é'",
    "'  @st'",
)


def frame_texts(frame: str) -> list[str]:
    """Texts of `frame` with values from VALUES, most in runs of one kind, so shapes repeat."""
    slots = frame.count("{v}")
    texts = []
    for start, step in itertools.product(range(len(VALUES)), (1, 5)):
        chosen = [VALUES[(start + step * slot) % len(VALUES)] for slot in range(slots)]
        texts.append(frame.replace("{v}", "{}").format(*chosen))
    return texts


@pytest.mark.parametrize("frame", FRAMES)
def test_every_value_beside_a_literal_read_classifies_as_on_its_own(frame: str) -> None:
    texts = frame_texts(frame)
    for context in CONTEXTS:
        answers = served(texts, context)
        for text, answer in zip(texts, answers, strict=True):
            assert answer == fresh(text, context), text


def test_the_frames_are_served_by_their_shapes() -> None:
    """The test above compares texts the shape cache served, not only ones it declined."""
    hits = 0
    for frame in FRAMES:
        served(frame_texts(frame), (None, None))
        hits += statements.shapes.hits
    assert hits > 10 * len(FRAMES)


@pytest.mark.parametrize(
    ("texts", "differ"),
    [
        # a string that names a stage is read as the stage: never cut
        (
            [
                "select * from t where p = 'a'",
                "select * from t where p = 'b'",
                "select * from t where p = '@st/x'",
            ],
            True,
        ),
        # a constant condition: a literal compared with a literal is never cut
        (
            [
                "select * from t where 1 = 2 and id = 3",
                "select * from t where 1 = 2 and id = 4",
                "select * from t where 1 = 1 and id = 5",
            ],
            False,
        ),
        (
            [
                "delete from t where id = 1",
                "delete from t where id = 2",
                "delete from t where 1 = 1",
            ],
            True,
        ),
        (
            [
                "update t set a = 1 where id = 2",
                "update t set a = 1 where id = 3",
                "update t set a = 1 where id = id",
            ],
            True,
        ),
        (
            [
                "select * from t where id = 1",
                "select * from t where id = 2",
                "select * from t where id = 3; delete from t",
            ],
            True,
        ),
        (
            [
                "select * from t where id = 1;",
                "select * from t where id = 2;",
                "select * from t where id = 3 ;  ",
            ],
            False,
        ),
        (
            [
                "alter session set search_path = 'A.B'",
                "alter session set search_path = 'C.D'",
                "alter session set search_path = 'E.F'",
            ],
            True,
        ),
        (["set v = 1", "set v = 2", "set v = 'DB.S.T'"], False),
        (
            [
                "select get_ddl('table', x = 'A.B.C')",
                "select get_ddl('table', x = 'D.E.F')",
                "select get_ddl('table', 'G.H.I')",
            ],
            True,
        ),
        (
            [
                "select * from identifier(x = 'A.B.C')",
                "select * from identifier(x = 'D.E.F')",
                "select * from identifier('G.H.I')",
            ],
            True,
        ),
        (
            [
                "select * from table(x = 'A.B.C')",
                "select * from table(x = 'D.E.F')",
                "select * from table('G.H.I')",
            ],
            True,
        ),
        (
            [
                "select system$cancel_query(q = '1')",
                "select system$cancel_query(q = '2')",
                "select system$cancel_query(q = '3')",
            ],
            False,
        ),
        (
            [
                "select * from t where a = 1 -- one",
                "select * from t where a = 2 -- one",
                "select * from t where a = 3 -- two",
            ],
            False,
        ),
        (
            [
                "select * from t where a = 1 and b = 'x'",
                "select * from t where a = 2 and b = 'y'",
                "select * from t where a = 3 and b = '@y'",
            ],
            True,
        ),
        (["use database d1", "use database d2", "use database d3"], True),
        (
            [
                'select * from t where "Id" >= 1',
                'select * from t where "Id" >= 2',
                'select * from t where "Id" >= -3',
            ],
            False,
        ),
    ],
)
def test_values_that_change_a_classification_do_not_share_a_shape(
    texts: list[str], differ: bool
) -> None:
    """Each text classifies as on its own, primed in turn by the ones before it; `differ`
    says whether the last one's classification differs from the first's (so the case
    tests a literal that matters, not one that does not)."""
    for context in CONTEXTS:
        answers = served([*texts, texts[-1]], context)
        for text, answer in zip([*texts, texts[-1]], answers, strict=True):
            assert answer == fresh(text, context), text
        first, last = fresh(texts[0], context), fresh(texts[-1], context)
        assert [s.as_record() for s in first] != [s.as_record() for s in last] or not differ


def test_a_shape_is_served_from_its_third_text() -> None:
    texts = [f"select id from orders where id > {n} and kind = 'k{n}'" for n in range(5)]
    context = (None, None)
    served(texts[:2], context)
    assert (statements.shapes.hits, len(statements.shapes)) == (0, 1)
    third = classify(texts[2], database=None, schema=None)
    assert statements.shapes.hits == 1
    assert third == fresh(texts[2], context)
    assert third[0].text == texts[2]
    again = classify(texts[0], database=None, schema=None)
    assert statements.shapes.hits == 2, "a text seen before is served by its shape too"
    assert again == fresh(texts[0], context)


@pytest.mark.parametrize(
    ("sql", "cut"),
    [
        ("select * from t where id = 5", ["5"]),
        ("select * from t where t.id <> 'a' and \"B\" <= 2.5", ["'a'", "2.5"]),
        ("select * from t where x = -5", []),
        ("select * from t where 5 = x", []),
        ("select * from t where f(x) = 5", []),
        ("select * from t where x = '@s'", []),
        ("select * from t where x = $$a$$", []),
        ("select * from t where x = 0x1F", []),
        ("select * from t where x in (1, 2)", []),
        ("select * from t where x between 1 and 2 limit 5", []),
        ("select * from t where x = 1; select 2", None),
        (";select * from t where x = 1", None),
        ("select 'unterminated", None),
    ],
)
def test_only_values_compared_with_a_name_are_cut(sql: str, cut: list[str] | None) -> None:
    shape = shape_of(sql, (None, None))
    if cut is None or not cut:
        assert shape is None
        return
    assert shape is not None
    texts = [piece for piece in shape.key[1:] if isinstance(piece, str)]
    assert len(texts) == len(cut) + 1
    remaining = sql
    for text, value in zip(texts, cut, strict=False):
        assert remaining.startswith(text + value)
        remaining = remaining[len(text) + len(value) :]
    assert remaining == texts[-1]


def test_the_context_is_part_of_the_shape() -> None:
    texts = ["select * from t where id = 1", "select * from t where id = 2"]
    served(texts, ("A", "B"))
    assert classify("select * from t where id = 3", database="C", schema="D")[0].reads == ("C.D.T",)


def test_the_shape_cache_and_its_memory_are_bounded() -> None:
    cache = ShapeCache(size=4, seen_max=8)
    context = (None, None)
    for table in range(10):
        for value in (1, 2):
            sql = f"select * from t{table} where id = {value}"
            shape = shape_of(sql, context)
            assert shape is not None
            cache.put(shape, fresh(sql, context))
    assert len(cache) == 4
    assert len(cache._seen_once) <= 8
    assert ShapeCache().seen_max == SEEN_MAX
