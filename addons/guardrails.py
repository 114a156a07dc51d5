"""Guardrails: a per-group statement policy, enforced before Snowflake sees a statement.

The policy is a TOML file of rules (docs/policy.md). Each statement of a query
is classified by recorder/statements/ (sqlglot, Snowflake dialect) and
checked against every rule that applies to one of the caller's groups; the
first rule that blocks a statement refuses the whole request with a Snowflake
query error (code 399003) naming the rule and the reason, and nothing of it
goes upstream. Allowed and blocked requests alike carry the decision, the
statement kinds and the objects on the flow's state for the recorder.

The policy file is polled in a worker thread and reloaded when it changes; a
file with an error is refused with one logged line and the last good policy
stays in force. The session's current database and schema, which relative
names resolve against, are tracked per session by addons/session_context.py;
this addon only reads them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import names, protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse
from hoopgw.recorder.masking import ACTIONS as MASK_ACTIONS
from hoopgw.recorder.masking import KINDS as MASK_KINDS
from hoopgw.recorder.masking import Action, ColumnPattern
from hoopgw.recorder.statements import (
    KINDS,
    READ_ONLY_KINDS,
    Statement,
    classify,
    split_name,
)

logger = logging.getLogger(__name__)

SOURCE = names.GUARDRAILS
GATEWAY_RULE = "hoopgw-built-in"
POLICY_SQL_STATE = "42501"
"""SQLSTATE of a refused statement: insufficient privilege."""
MAX_POLICY_BYTES = 1024 * 1024
INLINE_CLASSIFY_CHARS = 16 * 1024
"""Longer SQL texts are classified in a worker thread, off the event loop."""

REVIEW_KEYS = ("review_kinds", "review_objects", "approvers", "review_timeout")
"""Keys that send statements to a human (addons/approval.py) instead of refusing them."""
DEFAULT_REVIEW_TIMEOUT = 15 * 60.0
RULE_KEYS = frozenset(
    {
        "name",
        "description",
        "groups",
        "read_only",
        "deny_kinds",
        "allow_kinds",
        "deny_objects",
        "require_where",
        "deny_replace",
        "deny_role_change",
        "on_unparsable",
        "allow_stage_transfer",
        "allow_cortex",
        "mask_columns",
        "detect",
        "on_detect",
        "allow_mcp_tools",
        *REVIEW_KEYS,
    }
)
STAGE_TRANSFER_KINDS = frozenset({"PUT", "GET"})
"""Statements whose answer hands the client temporary cloud-storage credentials."""
POLICY_KINDS = KINDS - {"UNKNOWN"}
ANY_GROUP = "*"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message is one line naming file, rule and key."""


@dataclass(frozen=True, slots=True)
class ObjectPattern:
    """A `DATABASE.SCHEMA.OBJECT` glob, matched part by part and case-insensitively.

    A schema (two-part name) matches when the object part of the glob is `*`, a
    database (one part) when both schema and object parts are; a part the
    gateway cannot know (no current schema) matches any glob part.
    """

    text: str
    parts: tuple[re.Pattern[str], ...]
    covers_all: tuple[bool, ...]

    @classmethod
    def parse(cls, text: str) -> ObjectPattern:
        raw = split_name(text)
        parts = tuple("?" if part is None else part for part in raw)
        if len(parts) != 3 or any(part == "" for part in parts):
            raise ValueError(
                f"{text!r} must have three dot-separated parts DATABASE.SCHEMA.OBJECT, "
                "e.g. '*.PAYROLL.*'"
            )
        return cls(
            text=text,
            parts=tuple(re.compile(fnmatch.translate(part.upper())) for part in parts),
            covers_all=tuple(set(part) == {"*"} for part in parts),
        )

    def matches(self, name: str) -> bool:
        """Whether the object may be one the pattern denies (unknown parts match anything)."""
        parts = split_name(name)
        if not 1 <= len(parts) <= 3:
            return False
        for part, pattern in zip(parts, self.parts, strict=False):
            if part is not None and pattern.match(part.upper()) is None:
                return False
        return all(self.covers_all[len(parts) :])

    def surely_matches(self, name: str) -> bool:
        """Whether the object is denied whatever its unknown parts turn out to be."""
        parts = split_name(name)
        return self.matches(name) and all(
            self.covers_all[index] for index, part in enumerate(parts) if part is None
        )


ObjectVerdict = tuple[ObjectPattern, bool] | None
"""The first of a rule's object globs that may match a name, and whether it surely does."""
_UNSEEN: Any = object()
VERDICT_CACHE_SIZE = 4096
"""Object names whose verdict each rule remembers (agents name the same tables again)."""
VERDICT_MAX_NAME_CHARS = 1024


def first_match(
    patterns: tuple[ObjectPattern, ...], verdicts: dict[str, ObjectVerdict], name: str
) -> ObjectVerdict:
    """The first of `patterns` that matches `name` and whether it surely does, as the
    pattern-by-pattern test gives it; remembered in `verdicts`, which belongs to the
    (immutable) rule that holds `patterns`, so a verdict never outlives its patterns."""
    verdict = verdicts.get(name, _UNSEEN)
    if verdict is not _UNSEEN:
        return verdict  # type: ignore[no-any-return]
    verdict = None
    for pattern in patterns:
        if pattern.matches(name):
            verdict = (pattern, pattern.surely_matches(name))
            break
    if len(name) <= VERDICT_MAX_NAME_CHARS:
        if len(verdicts) >= VERDICT_CACHE_SIZE:
            verdicts.clear()
        verdicts[name] = verdict
    return verdict


@dataclass(frozen=True, slots=True)
class ToolPattern:
    """An `allow_mcp_tools` glob: `TOOL`, or `DATABASE.SCHEMA.SERVER/TOOL` for one server's tools.

    The server part is matched case-insensitively, as Snowflake resolves
    unquoted names; the tool part case-sensitively, as MCP names tools.
    """

    text: str
    server: re.Pattern[str] | None
    tool: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> ToolPattern:
        server, slash, tool = text.rpartition("/")
        parts = server.split(".")
        if not tool or (slash and (len(parts) != 3 or not all(parts))):
            raise ValueError(
                f"{text!r} must be a tool name glob, or DATABASE.SCHEMA.SERVER/TOOL "
                "(e.g. 'ANALYTICS.AGENTS.*/sql_*')"
            )
        return cls(
            text=text,
            server=re.compile(fnmatch.translate(server.upper())) if slash else None,
            tool=re.compile(fnmatch.translate(tool)),
        )

    def matches(self, server: str, tool: str) -> bool:
        if self.server is not None and self.server.match(server.upper()) is None:
            return False
        return self.tool.match(tool) is not None


@dataclass(frozen=True, slots=True)
class Review:
    """What a rule holds for a human's decision, who may decide, and for how long."""

    kinds: frozenset[str]
    objects: tuple[ObjectPattern, ...]
    approvers: frozenset[str]
    timeout: float = DEFAULT_REVIEW_TIMEOUT
    _verdicts: dict[str, ObjectVerdict] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def reason(self, rule: str, statement: Statement) -> str | None:
        if statement.kind in self.kinds:
            return f"rule '{rule}' sends {statement.kind} to review"
        if not self.objects:
            return None
        for name in statement.reads + statement.writes:
            verdict = first_match(self.objects, self._verdicts, name)
            if verdict is not None:
                pattern = verdict[0]
                return f"rule '{rule}' sends statements on {pattern.text} to review ({name})"
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    groups: frozenset[str]
    description: str | None = None
    read_only: bool = False
    deny_kinds: frozenset[str] = frozenset()
    allow_kinds: frozenset[str] | None = None
    deny_objects: tuple[ObjectPattern, ...] = ()
    require_where: bool = False
    deny_replace: bool = False
    deny_role_change: bool = False
    on_unparsable: Literal["deny", "allow"] = "deny"
    allow_stage_transfer: bool = False
    mask_columns: tuple[ColumnPattern, ...] = ()
    detect: frozenset[str] = frozenset()
    on_detect: Action = "mask"
    review: Review | None = None
    allow_cortex: tuple[re.Pattern[str], ...] | None = None
    """Globs over agent surface names (`protocol.AgentSurface.label`); None: key not set."""
    restricts: bool = False
    """Whether the rule restricts statements: such a rule denies every unlisted surface."""
    allow_mcp_tools: tuple[ToolPattern, ...] | None = None
    """None: MCP tools are not this rule's concern; otherwise only matching tools are allowed."""
    _deny_verdicts: dict[str, ObjectVerdict] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def applies_to(self, groups: Iterable[str]) -> bool:
        return ANY_GROUP in self.groups or not self.groups.isdisjoint(groups)

    def violation(self, statement: Statement) -> str | None:
        """Why this rule blocks the statement, or None when it allows it."""
        return self._violation(statement, None)

    def mcp_tool_violation(self, server: str, tool: str) -> str | None:
        """Why this rule refuses a call of `tool` on the MCP server `server` (DB.SCHEMA.NAME)."""
        if self.allow_mcp_tools is None:
            return None
        if any(pattern.matches(server, tool) for pattern in self.allow_mcp_tools):
            return None
        if not self.allow_mcp_tools:
            return (
                f"rule '{self.name}' restricts what your groups may do and allows no MCP "
                "tools (it has no allow_mcp_tools)"
            )
        allowed = ", ".join(pattern.text for pattern in self.allow_mcp_tools)
        return f"rule '{self.name}' allows only the MCP tools {allowed}, not {server}/{tool}"

    def review_reason(self, statement: Statement) -> str | None:
        """Why this rule sends the statement (or one it runs) to a human, or None."""
        if self.review is None:
            return None
        reason = self.review.reason(self.name, statement)
        if reason is None:
            for inner in statement.inner:
                reason = self.review_reason(inner)
                if reason is not None:
                    return f"{reason} (inside {statement.kind})"
        return reason

    def _violation(self, statement: Statement, outer: Statement | None) -> str | None:
        reason = self._own_violation(statement)
        if reason is None:
            for inner in statement.inner:
                reason = self._violation(inner, statement)
                if reason is not None:
                    return reason
            return None
        if outer is not None:
            return f"{reason} (inside {outer.kind})"
        return reason

    def _own_violation(self, statement: Statement) -> str | None:
        rule = f"rule '{self.name}'"
        kind = statement.kind
        if statement.parse_error is not None:
            if self.on_unparsable == "deny":
                return f"{rule} refuses statements it cannot parse ({statement.parse_error})"
            return None
        if self.allow_kinds is not None and kind not in self.allow_kinds:
            allowed = ", ".join(sorted(self.allow_kinds)) or "no"
            return f"{rule} allows only {allowed} statements, not {kind}"
        if kind in self.deny_kinds:
            return f"{rule} denies {kind}"
        if self.read_only and not statement.read_only and not _inner_explains(statement):
            if statement.calls:
                return (
                    f"{rule} is read-only and this {kind} calls {statement.calls[0]}, "
                    "which can change state"
                )
            return f"{rule} is read-only and {kind} can change data or privileges"
        if self.deny_replace and statement.replaces:
            what = "INSERT OVERWRITE" if kind == "INSERT" else "CREATE OR REPLACE"
            return f"{rule} denies {what}"
        if self.deny_role_change and kind == "USE" and not statement.read_only:
            return f"{rule} denies changing the role (USE ROLE, USE SECONDARY ROLES)"
        if self.require_where and statement.has_where is False:
            target = f" {statement.writes[0]}" if statement.writes else ""
            if kind == "MERGE":
                return (
                    f"{rule} requires MERGE INTO{target} to restrict the rows it updates or "
                    "deletes (an ON or WHEN MATCHED AND condition on the target's columns)"
                )
            verb = "DELETE FROM" if kind == "DELETE" else "UPDATE"
            return f"{rule} requires a WHERE clause on {verb}{target}"
        if self.deny_objects:
            for name in statement.reads + statement.writes:
                verdict = first_match(self.deny_objects, self._deny_verdicts, name)
                if verdict is None:
                    continue
                pattern, surely = verdict
                if surely:
                    return f"{rule} denies access to {name} ({pattern.text})"
                return (
                    f"{rule} denies access to {pattern.text} and cannot tell whether {name} "
                    "is one of those objects: name it literally and fully qualified"
                )
        if statement.hidden is not None and self.on_unparsable == "deny":
            return (
                f"{rule} refuses statements it cannot see through: this {kind} {statement.hidden}"
            )
        return None


def _inner_explains(statement: Statement) -> bool:
    """Whether a statement is not read-only only because of statements it runs; those are named."""
    return (
        bool(statement.inner)
        and statement.kind in READ_ONLY_KINDS | {"EXECUTE"}
        and not statement.calls
        and statement.hidden is None
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of checking one request's statements."""

    decision: Literal["allow", "block", "review"]
    rule: str | None = None
    reason: str | None = None
    statement_index: int | None = None
    kinds: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    policy: str | None = None
    review: Review | None = None

    @property
    def blocked(self) -> bool:
        return self.decision == "block"

    @property
    def held(self) -> bool:
        """The statements wait for a human's decision (addons/approval.py)."""
        return self.decision == "review"

    def as_record(self) -> dict[str, Any]:
        """What the recorder stores; `policy` identifies the policy file version (sha256 prefix)."""
        return {
            "decision": self.decision,
            "rule": self.rule,
            "reason": self.reason,
            "statement_index": self.statement_index,
            "kinds": list(self.kinds),
            "objects": list(self.objects),
            "policy": self.policy,
            **(
                {"approvers": sorted(self.review.approvers), "review_timeout": self.review.timeout}
                if self.review is not None and self.held
                else {}
            ),
        }


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    source: str | None = None
    digest: str | None = None
    _by_groups: dict[frozenset[str], tuple[Rule, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def rules_for(self, groups: Sequence[str]) -> tuple[Rule, ...]:
        key = frozenset(groups)
        rules = self._by_groups.get(key)
        if rules is None:
            rules = tuple(rule for rule in self.rules if rule.applies_to(key))
            if len(self._by_groups) < 1024:
                self._by_groups[key] = rules
        return rules

    def check(self, statements: Sequence[Statement], groups: Sequence[str]) -> Decision:
        """Allow, or block with the first statement and rule that refuse it."""
        if len(statements) == 1:  # a statement's kinds and objects are unique already
            kinds, objects = statements[0].kinds, statements[0].objects
        else:
            kinds = tuple(dict.fromkeys(kind for s in statements for kind in s.kinds))
            objects = tuple(dict.fromkeys(name for s in statements for name in s.objects))
        version = self.digest[:16] if self.digest else None
        rules = self.rules_for(groups)
        for index, statement in enumerate(statements):
            for rule in rules:
                reason = rule.violation(statement)
                if reason is not None:
                    return Decision("block", rule.name, reason, index, kinds, objects, version)
        for index, statement in enumerate(statements):  # deny wins over review
            for rule in rules:
                reason = rule.review_reason(statement)
                if reason is not None:
                    return Decision(
                        "review", rule.name, reason, index, kinds, objects, version, rule.review
                    )
        return Decision("allow", None, None, None, kinds, objects, version)

    def surface_refusal(self, surface: str, groups: Sequence[str]) -> Decision | None:
        """The block of an agent surface (`allow_cortex`), or None when every rule allows it.

        A rule with `allow_cortex` allows the surfaces its globs match; a rule
        that restricts statements but has no `allow_cortex` allows none. A rule
        that only masks answers leaves surfaces alone, and so does no policy.
        """
        version = self.digest[:16] if self.digest else None
        for rule in self.rules_for(groups):
            if rule.allow_cortex is None and not rule.restricts:
                continue
            if any(glob.fullmatch(surface.upper()) for glob in rule.allow_cortex or ()):
                continue
            reason = f"rule '{rule.name}' does not list {surface} in allow_cortex"
            return Decision("block", rule.name, reason, policy=version)
        return None

    def check_mcp_tool(self, server: str, tool: str, groups: Sequence[str]) -> Decision:
        """Allow, or block with the first rule that does not allow the tool (allow_mcp_tools)."""
        version = self.digest[:16] if self.digest else None
        for rule in self.rules_for(groups):
            reason = rule.mcp_tool_violation(server, tool)
            if reason is not None:
                return Decision("block", rule.name, reason, policy=version)
        return Decision("allow", policy=version)

    def allows_stage_transfer(self, groups: Sequence[str]) -> bool:
        """Whether a rule for these groups lets PUT/GET hand out temporary stage credentials."""
        return any(rule.allow_stage_transfer for rule in self.rules_for(groups))


NO_POLICY = Policy()
"""In force when hoopgw_policy is unset: every statement is allowed."""


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; raises PolicyError with a one-line message."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_policy(data, str(path))


def parse_policy(data: bytes, source: str) -> Policy:
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from None
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise PolicyError(
            f"{source}: unknown top-level key {unknown[0]!r}; rules are [[rule]] tables"
        )
    entries = document.get("rule", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise PolicyError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules: list[Rule] = []
    names: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        rule = _parse_rule(entry, number, source)
        if rule.name in names:
            raise PolicyError(f"{source}: rule '{rule.name}': name: used by an earlier rule")
        names.add(rule.name)
        rules.append(rule)
    return Policy(tuple(rules), source, hashlib.sha256(data).hexdigest())


def _parse_rule(entry: dict[str, Any], number: int, source: str) -> Rule:
    name = entry.get("name")
    label = f"rule '{name}'" if isinstance(name, str) and name else f"rule #{number}"

    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(f"{source}: {label}: {key}: {problem}")

    unknown = sorted(set(entry) - RULE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(RULE_KEYS))})")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "required, a non-empty string")
    groups = _strings(entry, "groups", fail, required=True)
    if not groups:
        raise fail("groups", "must name at least one group")
    flags = {}
    for key in (
        "read_only",
        "require_where",
        "deny_replace",
        "deny_role_change",
        "allow_stage_transfer",
    ):
        value = entry.get(key, False)
        if not isinstance(value, bool):
            raise fail(key, f"must be true or false, not {value!r}")
        flags[key] = value
    deny_kinds = _kinds(entry, "deny_kinds", fail)
    allow_kinds = _kinds(entry, "allow_kinds", fail) if "allow_kinds" in entry else None
    patterns: list[ObjectPattern] = []
    for text in _strings(entry, "deny_objects", fail):
        try:
            patterns.append(ObjectPattern.parse(text))
        except ValueError as exc:
            raise fail("deny_objects", str(exc)) from None
    review = _review(entry, fail)
    restricts = bool(
        review is not None
        or flags["read_only"]
        or flags["require_where"]
        or flags["deny_replace"]
        or flags["deny_role_change"]
        or deny_kinds
        or allow_kinds is not None
        or patterns
    )
    allow_cortex = (
        tuple(
            re.compile(fnmatch.translate(glob.upper()))
            for glob in _strings(entry, "allow_cortex", fail)
        )
        if "allow_cortex" in entry
        else None
    )
    allow_mcp_tools: tuple[ToolPattern, ...] | None = None
    if "allow_mcp_tools" in entry:
        tools: list[ToolPattern] = []
        for text in _strings(entry, "allow_mcp_tools", fail):
            try:
                tools.append(ToolPattern.parse(text))
            except ValueError as exc:
                raise fail("allow_mcp_tools", str(exc)) from None
        allow_mcp_tools = tuple(tools)
    elif restricts:
        allow_mcp_tools = ()  # deny by default, like every other surface of a restricting rule
    on_unparsable = entry.get("on_unparsable", "deny" if restricts else "allow")
    if on_unparsable not in ("deny", "allow"):
        raise fail("on_unparsable", f'must be "deny" or "allow", not {on_unparsable!r}')
    description = entry.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", "must be a string")
    mask_columns, detect, on_detect = _masking(entry, fail)
    return Rule(
        name=name,
        groups=frozenset(groups),
        description=description,
        read_only=flags["read_only"],
        deny_kinds=deny_kinds,
        allow_kinds=allow_kinds,
        deny_objects=tuple(patterns),
        require_where=flags["require_where"],
        deny_replace=flags["deny_replace"],
        deny_role_change=flags["deny_role_change"],
        on_unparsable=on_unparsable,
        allow_stage_transfer=flags["allow_stage_transfer"],
        mask_columns=mask_columns,
        detect=detect,
        on_detect=on_detect,
        review=review,
        allow_cortex=allow_cortex,
        restricts=restricts,
        allow_mcp_tools=allow_mcp_tools,
    )


def _masking(
    entry: dict[str, Any], fail: Any
) -> tuple[tuple[ColumnPattern, ...], frozenset[str], Action]:
    """The rule's result masking keys (docs/masking.md): column globs, kinds, action."""
    patterns: list[ColumnPattern] = []
    for text in _strings(entry, "mask_columns", fail):
        try:
            patterns.append(ColumnPattern.parse(text))
        except ValueError as exc:
            raise fail("mask_columns", str(exc)) from None
    detect = frozenset(kind.lower() for kind in _strings(entry, "detect", fail))
    for kind in sorted(detect - MASK_KINDS):
        raise fail("detect", f"unknown kind {kind!r} (known: {', '.join(sorted(MASK_KINDS))})")
    on_detect = entry.get("on_detect", "mask")
    if on_detect not in MASK_ACTIONS:
        raise fail("on_detect", f'must be "mask", "record" or "withhold", not {on_detect!r}')
    if "on_detect" in entry and not detect:
        raise fail("on_detect", "has no effect without detect")
    return tuple(patterns), detect, on_detect


def _review(entry: dict[str, Any], fail: Any) -> Review | None:
    """The rule's review keys as one `Review`, or None when it sends nothing to review."""
    if not any(key in entry for key in REVIEW_KEYS):
        return None
    kinds = _kinds(entry, "review_kinds", fail)
    patterns: list[ObjectPattern] = []
    for text in _strings(entry, "review_objects", fail):
        try:
            patterns.append(ObjectPattern.parse(text))
        except ValueError as exc:
            raise fail("review_objects", str(exc)) from None
    if not kinds and not patterns:
        raise fail("review_kinds", "a rule with approvers must name review_kinds or review_objects")
    approvers = _strings(entry, "approvers", fail, required=True)
    if not approvers:
        raise fail("approvers", "must name at least one group")
    timeout = entry.get("review_timeout", DEFAULT_REVIEW_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise fail("review_timeout", f"must be a positive number of seconds, not {timeout!r}")
    return Review(frozenset(kinds), tuple(patterns), frozenset(approvers), float(timeout))


def _strings(entry: dict[str, Any], key: str, fail: Any, *, required: bool = False) -> list[str]:
    if key not in entry:
        if required:
            raise fail(key, "required, a list of strings")
        return []
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise fail(key, "must be a list of non-empty strings")
    return value


def _kinds(entry: dict[str, Any], key: str, fail: Any) -> frozenset[str]:
    kinds = [kind.upper() for kind in _strings(entry, key, fail)]
    for kind in kinds:
        if kind == "UNKNOWN":
            raise fail(key, "'UNKNOWN' is not a kind to list; use on_unparsable")
        if kind not in POLICY_KINDS:
            raise fail(
                key,
                f"unknown statement kind {kind!r} (known: {', '.join(sorted(POLICY_KINDS))})",
            )
    return frozenset(kinds)


class PolicyFile:
    """A policy file and the last good policy read from it.

    `refresh` is blocking (it reads and hashes the file): call it from a worker
    thread. It installs a changed file only when it is valid; otherwise it logs
    why once per version and keeps the last good policy.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.policy = load_policy(path)
        self._digest = self.policy.digest
        self._missing_logged = False

    def refresh(self) -> bool:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            if not self._missing_logged:
                logger.error(
                    "hoopgw: policy file %s cannot be read (%s); keeping the policy in force",
                    self.path,
                    exc.strerror or exc,
                )
                self._missing_logged = True
            return False
        self._missing_logged = False
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            policy = parse_policy(data, str(self.path))
        except PolicyError as exc:
            logger.error("hoopgw: policy change refused, the previous policy stays: %s", exc)
            return False
        self.policy = policy
        logger.info(
            "hoopgw: policy reloaded from %s (%d rules, sha256 %s)",
            self.path,
            len(policy.rules),
            digest[:16],
        )
        return True


class Guardrails:
    """Checks every statement against the group policy before it goes upstream."""

    def __init__(self) -> None:
        self.file: PolicyFile | None = None
        self.reload_seconds = 2.0
        self._watcher: asyncio.Task[None] | None = None

    @property
    def policy(self) -> Policy:
        return self.file.policy if self.file is not None else NO_POLICY

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_policy",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Path of the guardrails policy file (TOML, see docs/policy.md): rules
            per group that deny statement kinds or objects, require a WHERE on
            DELETE and UPDATE, or allow only reads. Unset, every statement is
            allowed and still classified for the recording. The file is watched
            and reloaded when it changes; a version with an error is refused and
            the previous policy stays in force.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_secondary_roles",
            str | None,  # type: ignore[arg-type]
            None,
            """
            The DEFAULT_SECONDARY_ROLES of the gateway's Snowflake user
            (hoopgw_upstream_user), as the operator has set it: "none" once
            `ALTER USER <user> SET DEFAULT_SECONDARY_ROLES = ()` has run (see
            docs/identity.md). Since Snowflake's 2024_08 behaviour change a new
            user's sessions hold every role granted to it, whatever role the
            gateway picked; with an upstream user configured, the gateway does
            not start until this says "none".
            """,
        )
        loader.add_option(
            "hoopgw_policy_reload_ms",
            int,
            2000,
            """
            How often, in milliseconds, the gateway checks the policy file for
            changes (hoopgw_policy). A changed file takes effect for statements
            that arrive after the check that sees it.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if updated & {"hoopgw_upstream_secondary_roles", "hoopgw_upstream_user"}:
            _check_secondary_roles()
        if "hoopgw_policy_reload_ms" in updated:
            interval = ctx.options.hoopgw_policy_reload_ms
            if interval < 50:
                raise exceptions.OptionsError(
                    f"hoopgw_policy_reload_ms must be at least 50, got {interval}"
                )
            self.reload_seconds = interval / 1000
        if "hoopgw_policy" in updated:
            option = ctx.options.hoopgw_policy
            if not option:
                self.file = None
                return
            path = Path(option).expanduser()
            if not path.is_file():
                raise exceptions.OptionsError(f"hoopgw_policy: {path} does not exist")
            try:
                self.file = PolicyFile(path)
            except PolicyError as exc:
                raise exceptions.OptionsError(f"hoopgw_policy: {exc}") from None
            logger.info("hoopgw: policy %s loaded (%d rules)", path, len(self.file.policy.rules))

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_seconds)
            policy_file = self.file
            if policy_file is None:
                continue
            try:
                await asyncio.to_thread(policy_file.refresh)
            except Exception:
                logger.exception("hoopgw: checking the policy file failed")

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        if state.endpoint is Endpoint.LOGIN:
            self._check_login(flow, state)
        elif state.endpoint in protocol.CORTEX_ENDPOINTS:
            self._check_surface(flow, state)
        else:
            await self._check_statements(flow, state)
        state.passed.add(SOURCE)

    def _check_surface(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """A Cortex REST surface only where the caller's rules' `allow_cortex` lets it run."""
        surface = protocol.agent_surface(state.endpoint, flow.request.path)
        if surface is None or state.caller is None:
            return  # routed by the exact path patterns; authentication names the caller
        decision = self.policy.surface_refusal(surface.label, state.caller.groups)
        if decision is None:
            return
        state.guardrail = {**decision.as_record(), "surface": surface.label}
        reason = decision.reason or "refused by policy"
        message = f"Request refused by hoopgw policy: {reason}."
        refuse(
            flow,
            state,
            protocol.CODE_GATEWAY_POLICY,
            reason,
            SOURCE,
            message=message,
            sql_api_status=403,
        )
        logger.info("hoopgw: guardrails refused %s for %s", surface.label, state.caller.subject)

    async def _check_statements(self, flow: http.HTTPFlow, state: FlowState) -> None:
        try:
            sql = _statement_text(flow, state)
        except _NotText as exc:
            refuse(flow, state, protocol.CODE_GATEWAY_PROTOCOL, str(exc), SOURCE)
            return
        if sql is None:
            return
        decision = await self.check_sql(state, sql)
        if decision.blocked:
            self._refuse(flow, state, decision, len(state.classified or ()))

    async def check_sql(self, state: FlowState, sql: str) -> Decision:
        """Classify `sql` in the flow's context and check it against the caller's rules.

        The one check every statement goes through, whatever carried it (a
        query, an SQL API call, an MCP tool call): it puts the statements and
        the decision on `state` for the recorder and returns the decision; the
        caller answers a blocked one in its client's shape.
        """
        database, schema = state.context.database, state.context.schema
        if len(sql) <= INLINE_CLASSIFY_CHARS:
            statements = classify(sql, database=database, schema=schema)
        else:
            statements = await asyncio.to_thread(classify, sql, database=database, schema=schema)
        policy = self.policy
        decision = policy.check(statements, state.caller.groups if state.caller else ())
        if state.caller is None and policy.rules:
            reason = "the gateway knows no verified caller for this statement"
            decision = replace(decision, decision="block", rule=None, reason=reason)
        if not decision.blocked:
            decision = _gateway_rules(decision, statements, state.request_json)
        if not decision.blocked and not policy.allows_stage_transfer(
            state.caller.groups if state.caller else ()
        ):
            decision = _stage_transfer_rule(decision, statements)
        state.classified = statements
        state.statements = [statement.as_record() for statement in statements]
        state.guardrail = decision.as_record()
        return decision

    def _check_login(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """A login that asks for a database or schema uses it, as USE would."""
        parameters = (state.request_json or {}).get("data", {}).get("SESSION_PARAMETERS")
        if _sets_search_path(parameters):
            reason = f"{GATEWAY_RULE} does not let a login set SEARCH_PATH"
            decision = Decision("block", GATEWAY_RULE, reason)
            state.guardrail = decision.as_record()
            self._refuse(flow, state, decision, 1)
            return
        database, schema = state.context.database, state.context.schema
        if state.caller is None or not (database or schema):
            return
        if database and schema:
            sql = f"use schema {database}.{schema}"
        else:
            sql = f"use database {database}" if database else f"use schema {schema}"
        decision = self.policy.check(classify(sql, database=None, schema=None), state.caller.groups)
        if decision.blocked:
            state.guardrail = decision.as_record()
            self._refuse(flow, state, decision, 1)

    @staticmethod
    def _refuse(flow: http.HTTPFlow, state: FlowState, decision: Decision, count: int) -> None:
        reason = decision.reason or "refused by policy"
        message = f"Statement refused by hoopgw policy: {reason}."
        if count > 1 and decision.statement_index is not None:
            message += f" (statement {decision.statement_index + 1} of {count}; none of them ran)"
        if state.endpoint is Endpoint.LOGIN:
            message = f"Login refused by hoopgw policy: {reason}."
        refuse(
            flow,
            state,
            protocol.CODE_GATEWAY_POLICY,
            reason,
            SOURCE,
            message=message,
            sql_state=POLICY_SQL_STATE,
            sql_api_status=422,
        )
        subject = state.caller.subject if state.caller else "an unknown caller"
        logger.info("hoopgw: guardrails refused a statement of %s: %s", subject, reason)


SECONDARY_ROLES_NONE = "none"


def _check_secondary_roles() -> None:
    """Refuse to start when the shared Snowflake user may bring every granted role along.

    The gateway chooses one role per caller; secondary roles would add all the
    others to each session, and USE SECONDARY ROLES is refused, so only the user's
    default can bring them. Only the operator can set it, so the operator states it.
    """
    user = getattr(ctx.options, "hoopgw_upstream_user", None)
    stated = ctx.options.hoopgw_upstream_secondary_roles
    if stated is not None and stated.strip().lower() != SECONDARY_ROLES_NONE:
        raise exceptions.OptionsError(
            f"hoopgw_upstream_secondary_roles: {stated[:40]!r} is not supported; the only "
            'value is "none" (the user\'s DEFAULT_SECONDARY_ROLES is ())'
        )
    if user and stated is None:
        raise exceptions.OptionsError(
            f"hoopgw_upstream_secondary_roles: run `ALTER USER {user} SET "
            "DEFAULT_SECONDARY_ROLES = ()` in Snowflake, then set "
            "hoopgw_upstream_secondary_roles=none: otherwise every session holds all the "
            "roles granted to the gateway's user, not only the caller's (docs/identity.md)"
        )


def _gateway_rules(
    decision: Decision, statements: Sequence[Statement], request: dict[str, Any] | None
) -> Decision:
    """Checks that hold for every caller, policy file or not.

    The gateway picks the caller's role from its groups, and its Snowflake user
    holds every mapped role: a `USE ROLE` (or secondary roles) would undo that
    choice, at any depth (inside EXECUTE IMMEDIATE, a scripting block, a
    procedure body), and so would changing the service user's default secondary
    roles, for every caller at once. SEARCH_PATH sent as a request parameter
    would change how names resolve without a statement the policy could see.
    """
    for index, statement in enumerate(statements):
        reason = _role_change(statement)
        if reason is not None:
            return replace(
                decision, decision="block", rule=GATEWAY_RULE, reason=reason, statement_index=index
            )
    if isinstance(request, dict) and _sets_search_path(request.get("parameters")):
        reason = f"{GATEWAY_RULE} does not let a request set SEARCH_PATH as a parameter"
        return replace(decision, decision="block", rule=GATEWAY_RULE, reason=reason)
    return decision


def _role_change(statement: Statement, outer: Statement | None = None) -> str | None:
    """Why the built-in role lock refuses this statement or one it runs, if it does."""
    where = f" (inside {outer.kind})" if outer is not None else ""
    if statement.kind == "USE" and not statement.read_only:
        return (
            f"{GATEWAY_RULE} does not let a session change its role (USE ROLE, USE "
            f"SECONDARY ROLES){where}: the gateway chose it from your groups; log in with "
            "another role you are entitled to instead"
        )
    if statement.changes_default_roles:
        return (
            f"{GATEWAY_RULE} does not let a session change a user's DEFAULT_ROLE or "
            f"DEFAULT_SECONDARY_ROLES{where}: the gateway's Snowflake user is shared"
        )
    for inner in statement.inner:
        reason = _role_change(inner, outer or statement)
        if reason is not None:
            return reason
    return None


def _stage_transfer_rule(decision: Decision, statements: Sequence[Statement]) -> Decision:
    """PUT and GET hand the client temporary cloud keys: only where a rule allows it."""
    for index, statement in enumerate(statements):
        if STAGE_TRANSFER_KINDS.intersection(statement.kinds):
            reason = (
                f"{GATEWAY_RULE} does not hand out stage credentials for PUT/GET: no policy "
                "rule for your groups sets allow_stage_transfer"
            )
            return replace(
                decision, decision="block", rule=GATEWAY_RULE, reason=reason, statement_index=index
            )
    return decision


def _sets_search_path(parameters: object) -> bool:
    """Whether parameters name SEARCH_PATH in any spelling Snowflake might accept."""
    return isinstance(parameters, dict) and any(
        _parameter_name(name) == "SEARCH_PATH" for name in parameters
    )


def _parameter_name(name: object) -> str:
    return "".join(str(name).split()).strip('"').upper()


_SENSITIVE_FIELDS: dict[Endpoint, dict[str, str]] = {
    endpoint: {name.casefold(): name for name in names}
    for endpoint, names in (
        (Endpoint.QUERY, ("sqlText", "parameters", "bindings", "bindStage")),
        (
            Endpoint.SQL_API,
            ("statement", "parameters", "bindings", "database", "schema", "role", "warehouse"),
        ),
    )
}
"""Body fields that decide what runs and where; another spelling might be the one read."""


class _NotText(ValueError):
    """A statement body the policy cannot check as Snowflake would read it: a statement field
    that is not a string, or a field that decides what runs spelled in another case."""


def _statement_text(flow: http.HTTPFlow, state: FlowState) -> str | None:
    """The SQL a request asks Snowflake to run, or None for requests that run none.

    Raises _NotText when the field is there but not a string (an array, an object,
    null, a number): what the policy would check is then not what Snowflake reads.
    """
    body = state.request_json
    if not isinstance(body, dict):
        return None
    if state.endpoint is Endpoint.QUERY:
        field_name = "sqlText"
    elif (
        state.endpoint is Endpoint.SQL_API
        and flow.request.method == "POST"
        and flow.request.path.partition("?")[0].rstrip("/") == "/api/v2/statements"
    ):
        field_name = "statement"
    else:
        return None
    for key in body:
        canonical = _SENSITIVE_FIELDS[state.endpoint].get(str(key).casefold())
        if canonical is not None and key != canonical:
            raise _NotText(
                f"the body spells {canonical} as {str(key)[:40]!a}; only {canonical} is read"
            )
    if field_name not in body:
        return None
    sql = body[field_name]
    if not isinstance(sql, str):
        raise _NotText(f"{field_name} must be a string of SQL, not {_json_type(sql)}")
    return sql


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"
