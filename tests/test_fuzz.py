"""Fuzzing the code that reads what clients, upstreams and stores send: only the expected errors.

Every parser here faces bytes an attacker (or a broken disk) chose. Each may
answer or refuse with its own documented error type; anything else (a
KeyError, a UnicodeError, a zlib.error...) would reach a hook as a crash.

Hypothesis runs a bounded number of examples per test in CI; set
HOOPGW_FUZZ_EXAMPLES (e.g. 20000) for a longer run.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import Caller, SessionContext
from hoopgw.addons.protocol import ALLOWED_METHODS, Endpoint, ProtocolError
from hoopgw.addons.session_tokens import (
    TOKEN_PREFIX,
    SealedSession,
    TokenError,
    TokenKind,
    TokenSealer,
)
from hoopgw.recorder import ids
from hoopgw.recorder.redaction import body_for_record, redact_sql
from hoopgw.recorder.schema import FIELDS, GENESIS_HASH, KINDS, chain_record, validate_record
from hoopgw.recorder.segment import SegmentError, compress_lines, decode_segment, encode_segment

EXAMPLES = int(os.environ.get("HOOPGW_FUZZ_EXAMPLES", "150"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Protocol: endpoints

PATH_PARTS = [
    "/",
    "//",
    "session",
    "v1",
    "login-request",
    "queries",
    "query-request",
    "abort-request",
    "token-request",
    "heartbeat",
    "monitoring",
    "result",
    "api",
    "v2",
    "statements",
    "cancel",
    "telemetry",
    "send",
    "01b2c3d4-0000",
    "..",
    ".",
    "%2F",
    "%2e",
    ";x",
    "?",
    "&",
    "delete=true",
    "delete=false",
    "#",
    "\x00",
    "\xff",
    "\u2215",
]
paths = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(PATH_PARTS), max_size=12).map("".join),
    st.lists(st.sampled_from(PATH_PARTS), max_size=12).map(lambda parts: "/" + "/".join(parts)),
)
# The only spelling of each endpoint whose body carries a statement or a credential.
EXACT_ROUTES = {
    Endpoint.LOGIN: "/session/v1/login-request",
    Endpoint.QUERY: "/queries/v1/query-request",
    Endpoint.TOKEN_REQUEST: "/session/token-request",
    Endpoint.HEARTBEAT: "/session/heartbeat",
    Endpoint.TELEMETRY: "/telemetry/send",
    Endpoint.AUTHENTICATOR: "/session/authenticator-request",
    Endpoint.LOGOUT: "/session",
}


@fuzz
@given(path=paths)
@example(path="/queries/v1/query-request;x")
@example(path="/monitoring/queries//01b2c3d4-0000-0000-0000-000000000001")
def test_classify_names_an_endpoint_only_for_its_exact_spelling(path: str) -> None:
    endpoint = protocol.classify(path)
    assert isinstance(endpoint, Endpoint)
    allowed = protocol.allowed_methods(endpoint, path)
    assert allowed <= {"GET", "POST"}
    route = path.partition("?")[0]
    if endpoint in EXACT_ROUTES:
        assert route == EXACT_ROUTES[endpoint]
    if endpoint is not Endpoint.OTHER:
        assert route.startswith("/") and not {".", "%", ";", "#", "\\"} & set(route)
        assert allowed
    else:
        assert allowed == ALLOWED_METHODS[Endpoint.OTHER] == frozenset()


# Protocol: bodies

ENCODINGS = ["", "identity", "gzip", "x-gzip", "deflate", "GZIP ", "br", "gzip, gzip", "zstd"]


def _message(raw: bytes, encoding: str) -> http.Request:
    request = http.Request.make("POST", "http://snowflake.invalid/queries/v1/query-request")
    if encoding:
        request.headers["content-encoding"] = encoding
    request.raw_content = raw
    return request


def _compressed(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "deflate":
        return zlib.compress(data)
    return data


bodies = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda data, cut: gzip.compress(data)[:cut],
        st.binary(max_size=2048),
        st.integers(0, 2100),
    ),
    st.builds(
        lambda data, position, flip: _flip(gzip.compress(data), position, flip),
        st.binary(max_size=512),
        st.integers(0, 600),
        st.integers(1, 255),
    ),
)


def _flip(data: bytes, position: int, flip: int) -> bytes:
    if not data:
        return data
    index = position % len(data)
    return data[:index] + bytes([data[index] ^ flip]) + data[index + 1 :]


@fuzz
@given(raw=bodies, encoding=st.one_of(st.sampled_from(ENCODINGS), st.text(max_size=12)))
@example(raw=gzip.compress(b"{}") + gzip.compress(b"{}"), encoding="gzip")
def test_decode_body_answers_within_its_limit_or_refuses(raw: bytes, encoding: str) -> None:
    limit = 1024
    try:
        decoded = protocol.decode_body(_message(raw, encoding), limit)
    except ProtocolError:
        return
    assert len(decoded) <= limit


@fuzz
@given(data=st.binary(max_size=1024), kind=st.sampled_from(["gzip", "deflate", "identity"]))
def test_decode_body_round_trips_what_fits(data: bytes, kind: str) -> None:
    message = _message(_compressed(data, kind), kind)
    assert protocol.decode_body(message, 1024) == data


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@fuzz
@given(data=st.one_of(st.binary(max_size=512), JSON.map(orjson.dumps)))
@example(data=b'{"a": "\\ud800"}')
@example(data=b"\xef\xbb\xbf{}")
def test_parse_json_object_returns_an_object_or_refuses(data: bytes) -> None:
    try:
        parsed = protocol.parse_json_object(data)
    except ProtocolError:
        return
    assert parsed is None or isinstance(parsed, dict)
    if parsed is not None:
        orjson.dumps(parsed)  # a parsed body can always be written back (and recorded)


header_names = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "X-Other"])
header_values = st.one_of(
    st.text(max_size=80),
    st.builds(lambda token: f'Snowflake Token="{token}"', st.text(max_size=40)),
    st.builds(lambda token: f"Bearer {token}", st.text(max_size=40)),
)


@fuzz
@given(pairs=st.lists(st.tuples(header_names, header_values), max_size=4))
def test_session_token_is_read_from_exactly_one_snowflake_authorization(
    pairs: list[tuple[str, str]],
) -> None:
    headers = http.Headers(
        [(name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in pairs]
    )
    token = protocol.session_token_from(headers)
    authorizations = [value for name, value in pairs if name.lower() == "authorization"]
    if token is not None:
        assert len(authorizations) == 1
        assert '"' not in token and token not in ("", "None")
        assert f'"{token}"' in authorizations[0]


@fuzz
@given(path=st.binary(max_size=200), name=st.binary(max_size=20), value=st.binary(max_size=80))
def test_unreadable_heads_are_named_and_printable_text_is_always_printable(
    path: bytes, name: bytes, value: bytes
) -> None:
    problem = protocol.unreadable_head(path, [(name, value)])
    assert problem is None or isinstance(problem, str)
    for data in (path, name, value):
        text = protocol.printable(data)
        text.encode("utf-8")
        assert not any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in text)
        if problem is None:
            assert data.decode("utf-8") == text


# Sealed tokens

SEALER = TokenSealer(bytes(range(32)))
LIVE_TOKEN = SEALER.seal(
    SealedSession(
        kind=TokenKind.SESSION,
        session_id="0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f",
        upstream_token="ver:1-hint:upstream",
        caller=Caller("ada", "ada@example.com", ("agents",), "AGENT"),
        context=SessionContext("DB", "S", "WH", "AGENT"),
        issued_at=0,
        expires_at=4_000_000_000,
        session_expires_at=4_000_000_000,
    )
)


def _edit(token: str, position: int, text: str, cut: int) -> str:
    index = position % (len(token) + 1)
    return token[:index] + text + token[index + cut :]


tokens = st.one_of(
    st.text(max_size=300),
    st.text(max_size=300).map(lambda text: TOKEN_PREFIX + text),
    st.builds(
        _edit, st.just(LIVE_TOKEN), st.integers(0, 2000), st.text(max_size=4), st.integers(0, 3)
    ),
    st.lists(st.text("ABCxyz019-_", max_size=30), min_size=5, max_size=5).map(
        lambda parts: TOKEN_PREFIX + ".".join(parts)
    ),
)


@fuzz
@given(token=tokens)
def test_sealed_tokens_open_only_unaltered(token: str) -> None:
    try:
        opened = SEALER.open(token)
    except TokenError:
        return
    assert token == LIVE_TOKEN
    assert opened.upstream_token == "ver:1-hint:upstream"


# Records

SESSION_ID = ids.new_session_id()


def _valid_record(kind: str) -> dict[str, Any]:
    record: dict[str, Any] = {"v": 1, "kind": kind, "session_id": SESSION_ID, "ts": 1.5}
    record.update(writer="w1", seq=0)
    for name, spec in FIELDS[kind].items():
        if spec.required and name not in record and name not in ("prev_hash", "hash"):
            record[name] = {dict: {}, str: "x", int: 1, list: [], bool: True}.get(
                spec.types[0], "x"
            )
    chain_record(record, GENESIS_HASH)
    return record


@fuzz
@given(kind=st.sampled_from(KINDS))
def test_well_formed_records_validate(kind: str) -> None:
    assert validate_record(_valid_record(kind)) == []


field_names = st.sampled_from(sorted({name for fields in FIELDS.values() for name in fields}))
records = st.one_of(
    JSON,
    st.dictionaries(st.one_of(field_names, st.text(max_size=8)), JSON, max_size=12),
    st.builds(
        lambda kind, name, value: {**_valid_record(kind), name: value},
        st.sampled_from(KINDS),
        field_names,
        JSON,
    ),
)


@fuzz
@given(record=records)
def test_validate_record_reports_problems_never_raises(record: Any) -> None:
    problems = validate_record(record)
    assert isinstance(problems, list)
    assert all(isinstance(problem, str) for problem in problems)


SEGMENT = encode_segment([_valid_record(kind) for kind in KINDS])


@fuzz
@given(
    data=st.one_of(
        st.binary(max_size=1024),
        st.builds(_flip, st.just(SEGMENT), st.integers(0, 4096), st.integers(1, 255)),
        st.integers(0, len(SEGMENT)).map(lambda cut: SEGMENT[:cut]),
        st.binary(max_size=16).map(lambda tail: SEGMENT + tail),
        st.lists(JSON, max_size=5).map(
            lambda values: encode_segment([]) if not values else _lines_segment(values)
        ),
    )
)
def test_decode_segment_returns_records_or_a_segment_error(data: bytes) -> None:
    try:
        decoded = decode_segment(data)
    except SegmentError:
        return
    assert all(isinstance(record, dict) for record in decoded)
    for record in decoded:
        assert isinstance(validate_record(record), list)


def _lines_segment(values: list[Any]) -> bytes:
    return compress_lines(b"".join(orjson.dumps(value) + b"\n" for value in values))


def test_an_intact_segment_round_trips() -> None:
    assert [validate_record(record) for record in decode_segment(SEGMENT)] == [[]] * len(KINDS)


# Record bodies and SQL: what the recorder does with a refused request's content


@fuzz
@given(
    raw=st.one_of(st.binary(max_size=2048), JSON.map(orjson.dumps)),
    limit=st.integers(0, 512),
)
def test_body_for_record_never_raises(raw: bytes, limit: int) -> None:
    body = body_for_record(raw, limit)
    assert body["size"] == len(raw)
    orjson.dumps(body)


@fuzz
@given(sql=st.text(max_size=300))
@example(sql="create user u password = 'x")
@example(sql="select $$")
def test_redact_sql_never_raises(sql: str) -> None:
    assert isinstance(redact_sql(sql), str)


@fuzz
@given(data=st.one_of(st.binary(max_size=512), JSON.map(orjson.dumps)))
@example(data=b'{"a": "\\ud800"}')
@example(data=b'{"a": 1, "A": 2}')
@example(data=b'{"a": NaN}')
@example(data=b'{"a": 1e400, "b": 123456789012345678901234567890}')
@example(data=b'{"b": 123456789012345678901234567890, "c": -9223372036854775809}')
def test_parse_request_json_agrees_with_orjson_or_refuses(data: bytes) -> None:
    """What the gateway checks is what any parser keeps: no repeated key, strict JSON."""
    try:
        parsed = protocol.parse_request_json(data)
    except ProtocolError:
        return
    assert parsed is None or parsed == orjson.loads(data)
