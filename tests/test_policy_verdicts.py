"""The remembered object verdicts of a policy rule are the pattern-by-pattern ones.

`guardrails.first_match` replaces, for speed, the loop that tried each of a rule's
`deny_objects` (or `review_objects`) globs on each name with `surely_matches` and
`matches`; these tests generate names and globs (quoted parts, dots, quotes and `?`
inside quotes, unknown parts, case) and compare the two, first asked and remembered.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopgw.addons import guardrails
from hoopgw.addons.guardrails import ObjectPattern, ObjectVerdict, Review, Rule, first_match
from hoopgw.recorder.statements import Statement, render_name

checks = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAME_PART = st.one_of(
    st.none(),
    st.text(alphabet='aAbB_1."? *', min_size=0, max_size=4),
    st.sampled_from(["PAYROLL", "payroll", "Payroll", "SECRET_X", "secret", "PUBLIC"]),
)
NAMES = st.one_of(
    st.lists(NAME_PART, min_size=1, max_size=3).map(render_name),
    st.text(alphabet='aAB."?*', max_size=12),  # whatever a name string may hold
)
GLOB_PART = st.one_of(
    st.text(alphabet="aAbB_*?[]!", min_size=1, max_size=4),
    st.sampled_from(["*", "**", "PAYROLL", "payroll", "SECRET*", "Pay*", "[pP]*"]),
    st.text(alphabet='aB.?*" ', min_size=1, max_size=3).map(lambda part: render_name([part])),
)
GLOBS = st.lists(GLOB_PART, min_size=3, max_size=3).map(".".join)


def patterns_of(globs: list[str]) -> tuple[ObjectPattern, ...]:
    parsed = []
    for glob in globs:
        try:
            parsed.append(ObjectPattern.parse(glob))
        except ValueError:
            continue
    return tuple(parsed)


def one_by_one(patterns: tuple[ObjectPattern, ...], name: str) -> ObjectVerdict:
    """The loop the rules ran before verdicts were remembered."""
    for pattern in patterns:
        if pattern.surely_matches(name):
            return (pattern, True)
        if pattern.matches(name):
            return (pattern, False)
    return None


@checks
@given(globs=st.lists(GLOBS, min_size=1, max_size=4), names=st.lists(NAMES, max_size=12))
def test_remembered_verdicts_are_the_pattern_by_pattern_ones(
    globs: list[str], names: list[str]
) -> None:
    patterns = patterns_of(globs)
    verdicts: dict[str, ObjectVerdict] = {}
    for name in names + names:  # each name asked, then remembered
        assert first_match(patterns, verdicts, name) == one_by_one(patterns, name)


@checks
@given(globs=st.lists(GLOBS, min_size=1, max_size=3), names=st.lists(NAMES, max_size=6))
def test_a_rule_refuses_as_the_pattern_by_pattern_loop(globs: list[str], names: list[str]) -> None:
    patterns = patterns_of(globs)
    rule = Rule(name="r", groups=frozenset({"g"}), deny_objects=patterns)
    review = Review(kinds=frozenset(), objects=patterns, approvers=frozenset({"a"}))
    statement = Statement(kind="SELECT", text="", reads=tuple(names), read_only=True)
    expected = next(
        ((name, verdict) for name in names if (verdict := one_by_one(patterns, name)) is not None),
        None,
    )
    for _ in range(2):
        reason = rule.violation(statement)
        held = review.reason("r", statement)
        if expected is None:
            assert reason is None
            assert held is None
            continue
        name, (pattern, surely) = expected
        assert reason is not None
        assert pattern.text in reason and name in reason
        assert ("cannot tell whether" not in reason) is surely
        assert held == f"rule 'r' sends statements on {pattern.text} to review ({name})"


def test_quoting_and_case_decide_as_snowflake_resolves_names() -> None:
    patterns = patterns_of(["*.PAYROLL.*", '*."Secret".*'])
    verdicts: dict[str, ObjectVerdict] = {}
    for _ in range(2):
        assert first_match(patterns, verdicts, "DB.PAYROLL.T") == (patterns[0], True)
        assert first_match(patterns, verdicts, "DB.payroll.T") == (patterns[0], True)
        assert first_match(patterns, verdicts, "DB.Secret.T") == (patterns[1], True)
        assert first_match(patterns, verdicts, "DB.SECRET.T") == (patterns[1], True)
        assert first_match(patterns, verdicts, '"a.b".PAYROLL.T') == (patterns[0], True)
        assert first_match(patterns, verdicts, "?.?.T") == (patterns[0], False)
        assert first_match(patterns, verdicts, "DB.SALES.T") is None


def test_the_remembered_verdicts_are_bounded() -> None:
    patterns = patterns_of(["*.PAYROLL.*"])
    verdicts: dict[str, ObjectVerdict] = {}
    for number in range(guardrails.VERDICT_CACHE_SIZE + 10):
        first_match(patterns, verdicts, f"DB.S.T{number}")
        assert len(verdicts) <= guardrails.VERDICT_CACHE_SIZE
    long_name = "DB.PAYROLL." + "T" * guardrails.VERDICT_MAX_NAME_CHARS
    assert first_match(patterns, verdicts, long_name) == (patterns[0], True)
    assert long_name not in verdicts


def test_each_rule_remembers_its_own_verdicts() -> None:
    """Two rules (or a reloaded policy's rule) never share remembered verdicts."""
    first = Rule(name="r", groups=frozenset({"g"}), deny_objects=patterns_of(["*.PAYROLL.*"]))
    second = Rule(name="r", groups=frozenset({"g"}), deny_objects=patterns_of(["*.SALES.*"]))
    statement = Statement(kind="SELECT", text="", reads=("DB.SALES.T",), read_only=True)
    assert first.violation(statement) is None
    assert second.violation(statement) is not None
    assert first.violation(statement) is None
