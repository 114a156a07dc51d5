"""Secrets out of records: headers, JSON bodies, SQL text and body truncation.

Whitelist-minded: a field is dropped when its name looks like it could hold a
credential, even if this particular value is harmless, because a record is
kept for years and read by many. What is kept is what an investigator needs:
the shape of the exchange, the SQL, identities, result metadata and rows.
docs/record-format.md lists the rules; tests/test_recorder_redaction.py holds
an example of every one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

import orjson
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from hoopgw.recorder.statements import credentials
from hoopgw.recorder.statements import tokens as sql_tokens

REDACTED: Final = "[REDACTED]"
SQL_REDACTED_LITERAL: Final = "'[REDACTED]'"

# --- headers -------------------------------------------------------------------------

_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_SECRET_HEADER_PARTS: Final = (
    "token",
    "secret",
    "password",
    "passcode",
    "credential",
    "signature",
    "apikey",
    "api-key",
    "auth",
    "session",
)
# kept when they hold what their name says (a token type such as KEYPAIR_JWT), not a token
_KEPT_HEADERS: Final = frozenset({"x-snowflake-authorization-token-type"})
_TOKEN_TYPE: Final = re.compile(r"[A-Za-z_]{1,40}")


# Verdicts by name: header names and JSON keys repeat in every flow, so each is
# classified once. Bounded, so odd names a client makes up cannot grow them.
_NAME_CACHE_LIMIT: Final = 4096
_secret_headers_seen: dict[str, bool] = {}


def is_secret_header(name: str) -> bool:
    """Whether a header's name says it carries a credential, in any case."""
    secret = _secret_headers_seen.get(name)
    if secret is None:
        lowered = name.lower()
        secret = lowered not in _KEPT_HEADERS and (
            lowered in _SECRET_HEADERS or any(part in lowered for part in _SECRET_HEADER_PARTS)
        )
        if len(_secret_headers_seen) < _NAME_CACHE_LIMIT:
            _secret_headers_seen[name] = secret
    return secret


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Headers as `[[name, value], ...]` in wire order, credential values replaced.

    By name (`is_secret_header`), and by value: a JWT or `Bearer ...` under any
    name, and a kept header whose value is not the short word it should be.
    """
    return [
        [name, REDACTED if _secret_header_value(name, value) else value] for name, value in headers
    ]


def _secret_header_value(name: str, value: str) -> bool:
    if is_secret_header(name) or looks_like_credential(value):
        return True
    return _is_kept_header(name) and _TOKEN_TYPE.fullmatch(value.strip()) is None


_kept_headers_seen: dict[str, bool] = {}


def _is_kept_header(name: str) -> bool:
    """`name.lower() in _KEPT_HEADERS`, decided once per name as `is_secret_header` is."""
    kept = _kept_headers_seen.get(name)
    if kept is None:
        kept = name.lower() in _KEPT_HEADERS
        if len(_kept_headers_seen) < _NAME_CACHE_LIMIT:
            _kept_headers_seen[name] = kept
    return kept


def redact_path(path: str) -> str:
    """A request path with the values of credential-named query parameters masked.

    Names follow the JSON key rules (`token`, `*_token`, `*password*`, ...), and
    a JWT-shaped value is masked under any name; the rest of the path,
    including parameter order and encoding, is kept as sent.
    """
    route, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = []
    changed = False
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and (
            _key_rule(_unquoted(name)) == _SECRET or looks_like_credential(_unquoted(value))
        ):
            pairs.append(f"{name}={REDACTED}")
            changed = True
        else:
            pairs.append(pair)
    return f"{route}?{'&'.join(pairs)}" if changed else path


def _unquoted(text: str) -> str:
    """`unquote_plus(text)`, skipped for the usual parameter that has nothing to unquote."""
    return unquote_plus(text) if "%" in text or "+" in text else text


# --- JSON ----------------------------------------------------------------------------

_SECRET_KEYS: Final = frozenset(
    {
        "password",
        "passcode",
        "token",
        "qrmk",
        "chunkheaders",
        "creds",
        "privatekey",
        "private_key",
        "passphrase",
        "encryptionmaterial",
        "authorization",
        "cookie",
        "signature",
        "sig",
    }
)
_SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "passcode",
    "passphrase",
    "credential",
    "privatekey",
    "private_key",
    "masterkey",
    "master_key",
)
_SECRET_KEY_SUFFIXES: Final = ("token", "key", "key_id", "keyid")
_SQL_KEYS: Final = frozenset({"sqltext", "statement", "sql"})
# error messages quote (parts of) the statement, credential literals included
_MESSAGE_KEYS: Final = frozenset({"message", "errormessage"})
_URL_KEY_SUFFIXES: Final = ("url", "urls", "location", "uri")
_SIGNED_QUERY: Final = re.compile(
    r"(?:^|[?&])(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|signature|sig|se|sv|awsaccesskeyid|token|access_token|expires)=",
    re.IGNORECASE,
)


_SECRET_KEY_PART: Final = re.compile("|".join(map(re.escape, _SECRET_KEY_PARTS)))


def is_secret_key(key: str) -> bool:
    """Whether a JSON key (or form field, or `parameters[].name`) names a credential."""
    lowered = key.lower()
    return (
        lowered in _SECRET_KEYS
        or lowered.endswith(_SECRET_KEY_SUFFIXES)
        or _SECRET_KEY_PART.search(lowered) is not None
    )


def strip_url_query(url: str) -> str:
    """Scheme, host and path only: pre-signed URLs carry their signature in the query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_URL_PREFIXES: Final = ("https://", "http://", "azure://", "gcs://", "s3://")
# how a credential value begins whatever it is called: a JWT (`{"` in base64url), a scheme
_CREDENTIAL_PREFIXES: Final = ("eyJ", "Bearer ", "bearer ", "BEARER ", "Basic ", "Snowflake Token=")
_SCRUBBED_PREFIXES: Final = _URL_PREFIXES + _CREDENTIAL_PREFIXES
_CREDENTIAL_VALUE: Final = re.compile(
    r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-.]*"
    r"|\b(?:bearer|basic)\s+[A-Za-z0-9+/=_.~\-]{8,}"
    r"|snowflake\s+token\s*=\s*\S*",
    re.IGNORECASE,
)


def mask_credential_values(text: str) -> str:
    """`text` with every JWT and `Bearer ...` / `Basic ...` value in it masked."""
    return _CREDENTIAL_VALUE.sub(REDACTED, text) if _may_carry_credential(text) else text


def looks_like_credential(value: str) -> bool:
    """Whether a value whose name says nothing holds a JWT or an Authorization-style secret."""
    return _may_carry_credential(value) and _CREDENTIAL_VALUE.search(value) is not None


def _may_carry_credential(text: str) -> bool:
    """The words `_CREDENTIAL_VALUE` starts with, found by C substring search first
    (spelled out: a generator over them costs more than the searches)."""
    lowered = text.lower()
    return "eyj" in lowered or "bearer" in lowered or "basic" in lowered or "token" in lowered


def _is_url(value: str) -> bool:
    return value.startswith(_URL_PREFIXES)


def _scrub_string(value: str) -> str:
    """URLs anywhere keep their query unless it looks signed or they carry userinfo."""
    if _is_url(value) and (
        ("?" in value and _SIGNED_QUERY.search(value.partition("?")[2])) or "@" in value
    ):
        return strip_url_query(value)
    return value


def redact_json(obj: Any) -> Any:
    """A redacted copy of a decoded JSON value (the input is not modified).

    By key name, case-insensitive: credentials (PASSWORD, TOKEN, PASSCODE, any
    `*token`, `*key`, `*password*`, `*secret*`, qrmk, chunkHeaders, creds,
    encryptionMaterial, ...) become "[REDACTED]" whatever their value (objects
    included); null and booleans stay, they cannot be secrets. URL-valued keys
    (`url`, `presignedUrl(s)`, `location`, ...) lose their query string; other
    URL strings lose it when it looks signed. SQL under `sqlText` / `statement`
    goes through `redact_sql`; error messages (`message`, `errorMessage`)
    through `redact_message`. `{"name": N, "value": V}` pairs hide V when N
    names a credential.
    """
    return _redact_value(obj, False)


# What a JSON key's value gets, decided once per key name (`_key_rule`).
_KEEP: Final = 0
_SECRET: Final = 1
_SQL: Final = 2
_MESSAGE: Final = 3
_URL: Final = 4
_key_rules: dict[str, int] = {}


def _key_rule(key: str) -> int:
    rule = _key_rules.get(key)
    if rule is None:
        lowered = key.lower()
        if is_secret_key(key):
            rule = _SECRET
        elif lowered in _SQL_KEYS:
            rule = _SQL
        elif lowered in _MESSAGE_KEYS:
            rule = _MESSAGE
        elif lowered.endswith(_URL_KEY_SUFFIXES):
            rule = _URL
        else:
            rule = _KEEP
        if len(_key_rules) < _NAME_CACHE_LIMIT:
            _key_rules[key] = rule
    return rule


def _redact_value(value: Any, url_key: bool) -> Any:
    """`url_key`: the value sits under a URL-valued key (`chunks[].url`, `presignedUrls`)."""
    if isinstance(value, str):
        return _redact_url(value, url_key) if _scrubbed(value) else value
    if isinstance(value, dict):
        return _redact_dict(value)
    if isinstance(value, list):
        return _redact_list(value, url_key)
    return value


def _scrubbed(value: str) -> bool:
    """Whether a JSON string needs a closer look: a URL, or a credential under any key."""
    return value.startswith(_SCRUBBED_PREFIXES) or (
        "eyJ" in value if len(value) < _LONG_STRING else _JWT_START.search(value) is not None
    )


# `"eyJ" in value`, for a long string (a base64 Arrow rowset) by the regex engine's literal
# search, which takes half the time of `in` on such text; written out where it is used.
_JWT_START: Final = re.compile("eyJ")
_LONG_STRING: Final = 1024


def _redact_url(value: str, url_key: bool) -> str:
    """A string starting with one of `_SCRUBBED_PREFIXES`: a URL, or perhaps a credential."""
    if not value.startswith(_URL_PREFIXES):
        return mask_credential_values(value)
    return strip_url_query(value) if url_key else _scrub_string(value)


def _redact_list(items: list[Any], url_key: bool) -> list[Any]:
    """Rows of results are most of what passes here: plain strings and numbers stay as they are."""
    return [
        (_redact_url(item, url_key) if _scrubbed(item) else item)
        if item.__class__ is str
        else item
        if item is None or item.__class__ is int or item.__class__ is float
        else _redact_list(item, url_key)
        if item.__class__ is list
        else _redact_dict(item)
        if item.__class__ is dict
        else _redact_value(item, url_key)
        for item in items
    ]


def _redact_dict(obj: dict[Any, Any]) -> dict[Any, Any]:
    """Every answer's objects pass here (its `parameters` alone are dozens of pairs): the
    common cases (a plain key with a short plain string, a number, null) take the fewest
    steps, and a nested object or array is walked without `_redact_value`'s dispatch."""
    out: dict[Any, Any] = {}
    rules = _key_rules
    for key, value in obj.items():
        kind = value.__class__
        if value is None or kind is bool:
            out[key] = value
            continue
        rule = rules.get(key)
        if rule is None:
            rule = _key_rule(key if isinstance(key, str) else str(key))
        if kind is str:
            if rule == _KEEP or rule == _URL:  # noqa: SIM109 (no tuple built per key)
                if value.startswith(_SCRUBBED_PREFIXES) or (
                    "eyJ" in value
                    if len(value) < _LONG_STRING
                    else _JWT_START.search(value) is not None
                ):
                    value = _redact_url(value, rule == _URL)
            elif rule == _SECRET:
                value = REDACTED
            elif rule == _SQL:
                value = redact_sql(value)
            else:
                value = redact_message(value)
        elif rule == _SECRET:
            value = REDACTED
        elif kind is dict:
            value = _redact_dict(value)
        elif kind is list:
            value = _redact_list(value, rule == _URL)
        elif kind is not int and kind is not float:
            value = _redact_value(value, rule == _URL)
        out[key] = value
    if "value" in out:
        name = obj.get("name")
        if name.__class__ is str and _key_rule(name) == _SECRET:
            value = out["value"]
            if value is not None and not isinstance(value, bool):
                out["value"] = REDACTED
    return out


# --- SQL -----------------------------------------------------------------------------

_SNOWFLAKE_TOKENIZER: Final = Snowflake.tokenizer_class
_SQL_TRIGGER_WORDS: Final = (
    "PASSWORD",
    "PASSCODE",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "CREDENTIALS",
    "ENCRYPTION",
    "PRIVATE",
    "RSA_PUBLIC_KEY",
    "MASTER_KEY",
    "AWS_KEY_ID",
    "API_KEY",
    "IDENTIFIED",
    "-----BEGIN",
)
_SQL_TRIGGER: Final = re.compile("|".join(map(re.escape, _SQL_TRIGGER_WORDS)), re.IGNORECASE)
_PEM_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL | re.IGNORECASE,
)
_PEM_REDACTED: Final = "[REDACTED PRIVATE KEY]"
_SQL_SECRET_NAMES: Final = frozenset(
    {
        "TOKEN",
        "MASTER_KEY",
        "PRIVATE_KEY",
        "RSA_PUBLIC_KEY",
        "RSA_PUBLIC_KEY_2",
        "RSA_PRIVATE_KEY",
        "AWS_KEY_ID",
        "API_KEY",
    }
)
_SQL_SECRET_NAME_PARTS: Final = ("PASSWORD", "PASSCODE", "PASSPHRASE", "SECRET")
_SQL_SECRET_LISTS: Final = frozenset({"CREDENTIALS", "ENCRYPTION"})
_SQL_ASSIGN: Final = frozenset({TokenType.EQ, TokenType.FARROW, TokenType.COLON_EQ})
_SQL_STRINGS: Final = frozenset(
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
_SQL_HARMLESS: Final = frozenset(
    {
        TokenType.PLACEHOLDER,
        TokenType.TRUE,
        TokenType.FALSE,
        TokenType.NULL,
        TokenType.L_PAREN,
        TokenType.R_PAREN,
    }
)
_SQL_COMMANDS: Final = frozenset(_SNOWFLAKE_TOKENIZER.COMMANDS)
_SQL_MAX_DEPTH: Final = 3


def redact_message(text: str) -> str:
    """An error message, cut at the first credential word, its quotes before it masked.

    Messages quote fragments of the statement (often cut mid-literal, so the
    SQL tokenizer cannot see the literal's extent): everything after a word
    such as PASSWORD or CREDENTIALS is dropped rather than parsed, and a
    message naming such a word keeps none of its quoted fragments either,
    since the value can come first ("invalid value 'x' for PASSWORD"). JWTs
    and `Bearer ...` values a message echoes from the request are masked.
    """
    match = _SQL_TRIGGER.search(text)
    if match is not None:
        head = _MESSAGE_QUOTE.sub(_masked_quote, text[: match.start()])
        text = f"{head}{match.group()} {REDACTED}"
    return mask_credential_values(text)


_MESSAGE_QUOTE: Final = re.compile(r"""(['"`])(?:(?!\1).)*(?:\1|$)""", re.DOTALL)
"""A quoted fragment, or an opening quote left unclosed before the credential word."""


def _masked_quote(match: re.Match[str]) -> str:
    quote, fragment = match.group(1), match.group()
    closed = len(fragment) > 1 and fragment.endswith(quote)
    return f"{quote}{REDACTED}{quote}" if closed else f"{quote}{REDACTED} "


def _is_secret_sql_name(upper: str) -> bool:
    return (
        upper in _SQL_SECRET_NAMES
        or upper.endswith(("TOKEN", "PRIVATE_KEY"))
        or any(part in upper for part in _SQL_SECRET_NAME_PARTS)
    )


def redact_sql(sql: str) -> str:
    """`sql` with credential literals masked and everything else byte-for-byte intact.

    `PASSWORD = '...'`, `TOKEN = '...'`, `SECRET = '...'`, key literals
    (`RSA_PUBLIC_KEY`, `MASTER_KEY`, `PRIVATE_KEY`, ...) and any name containing
    PASSWORD/SECRET/PASSCODE or ending in TOKEN get `'[REDACTED]'` for their
    value; `CREDENTIALS = (...)` and `ENCRYPTION = (...)` lose their whole
    parenthesised list; PEM private key blocks are masked wherever they are.
    SQL nested in string literals (`EXECUTE IMMEDIATE '...'`, procedure bodies
    in `$$...$$`) and in the arguments of commands such as `CALL` is redacted
    the same way. Statements naming none of these skip tokenizing altogether. A
    statement the tokenizer cannot read (unterminated quote) is cut at the
    first such name.
    """
    global _last_redacted
    last = _last_redacted
    if last[0] is sql:
        return last[1]
    redacted = _redact_sql(sql, 0)
    _last_redacted = (sql, redacted)
    return redacted


_last_redacted: tuple[str | None, str] = (None, "")
"""The last SQL text redacted, by identity: a statement's record redacts the same text
twice (the request body's `sqlText` and the record's `sql`), and a text that names a
credential costs a tokenization each time. One entry: no statement outlives its flow here."""


def _may_hold_secrets(sql: str) -> bool:
    """The fast path for most statements: upper() and substring search run in C."""
    upper = sql.upper()
    return any(word in upper for word in _SQL_TRIGGER_WORDS)


def _redact_sql(sql: str, depth: int) -> str:
    if not _may_hold_secrets(sql):
        return sql
    if "-----" in sql:
        sql = _PEM_PRIVATE_KEY.sub(_PEM_REDACTED, sql)
    try:
        tokens = sql_tokens.tokenize(sql)
    except SqlglotError:
        match = _SQL_TRIGGER.search(sql)
        if match is None:
            return sql
        return sql[: match.start()] + "[REDACTED: unreadable remainder]"
    spans = _secret_spans(sql, tokens, depth)
    if not spans:
        return sql
    pieces: list[str] = []
    cursor = 0
    for start, end, replacement in spans:
        pieces.append(sql[cursor:start])
        pieces.append(replacement)
        cursor = end
    pieces.append(sql[cursor:])
    return "".join(pieces)


def _secret_spans(sql: str, tokens: list[Token], depth: int) -> list[tuple[int, int, str]]:
    """Character spans `[start, end)` to replace, in order and not overlapping."""
    spans: list[tuple[int, int, str]] = []
    length = len(sql)
    count = len(tokens)
    index = 0
    while index < count:
        token = tokens[index]
        if token.token_type in _SQL_STRINGS:
            nested = _nested_literal(sql, token, depth)
            if nested is not None:
                spans.append(nested)
            index += 1
            continue
        if (
            token.token_type in _SQL_COMMANDS
            and index + 1 < count
            and tokens[index + 1].token_type == TokenType.STRING
            and depth < _SQL_MAX_DEPTH
        ):
            start, end = token.end + 1, tokens[index + 1].end + 1
            remainder = sql[start:end]
            redacted = _redact_sql(remainder, depth + 1)
            if redacted != remainder:
                spans.append((start, end, redacted))
            index += 2
            continue
        upper = token.text.upper()
        is_list = upper in _SQL_SECRET_LISTS
        identified = (
            upper == "IDENTIFIED" and index + 1 < count and tokens[index + 1].text.upper() == "BY"
        )
        if not (is_list or identified or _is_secret_sql_name(upper)):
            index += 1
            continue
        value_index = index + 2 if identified else index + 1
        assigned = identified or (
            value_index < count and tokens[value_index].token_type in _SQL_ASSIGN
        )
        if assigned and not identified:
            value_index += 1
        if value_index >= count:
            break
        value = tokens[value_index]
        if is_list and value.token_type == TokenType.L_PAREN:
            close = credentials.matching_paren(tokens, value_index)
            if close is None:
                spans.append((value.end + 1, length, REDACTED))
                break
            spans.append((value.end + 1, tokens[close].start, REDACTED))
            index = close + 1
            continue
        if assigned:
            # the whole expression: `CONCAT('a', 'b')` or `'a' || 'b'` hides as much as `'ab'`
            end = credentials.value_end(tokens, value_index)
            if end > value_index and not _harmless_value(tokens, value_index, end):
                spans.append((value.start, tokens[end - 1].end + 1, SQL_REDACTED_LITERAL))
                index = end
            else:
                index = value_index
            continue
        if value.token_type in _SQL_STRINGS:
            spans.append((value.start, value.end + 1, SQL_REDACTED_LITERAL))
            index = value_index + 1
            continue
        index += 1
    return spans


def _nested_literal(sql: str, token: Token, depth: int) -> tuple[int, int, str] | None:
    """A string literal holding SQL with secrets, re-quoted with them masked."""
    if depth >= _SQL_MAX_DEPTH or not _may_hold_secrets(token.text):
        return None
    source = sql[token.start : token.end + 1]
    inner = _redact_sql(token.text, depth + 1)
    if inner == token.text:
        return None
    if source.startswith("$$") and source.endswith("$$") and "$$" not in inner:
        return token.start, token.end + 1, f"$${inner}$$"
    quoted = inner.replace("\\", "\\\\").replace("'", "''")
    return token.start, token.end + 1, f"'{quoted}'"


def _harmless_value(tokens: list[Token], start: int, end: int) -> bool:
    """A value that shows no secret: bind placeholders, booleans and NULL (`PASSWORD = ?`)."""
    index = start
    while index < end:
        kind = tokens[index].token_type
        if kind in (TokenType.COLON, TokenType.PARAMETER) and index + 1 < end:
            index += 2
        elif kind in _SQL_HARMLESS:
            index += 1
        else:
            return False
    return True


# --- bodies --------------------------------------------------------------------------

_TRIM_ROUNDS: Final = 12
_NOT_PARSED: Final[Any] = object()


def body_for_record(raw: bytes, limit: int, *, parsed: Any = _NOT_PARSED) -> dict[str, Any]:
    """The record's view of a decoded body: redacted, and bounded by `limit` bytes.

    What the bytes are decides, never the `Content-Type` label (which the
    sender chooses, so this takes none): bytes that parse as JSON (after a
    UTF-8 BOM, if any) are redacted as JSON; bytes that parse as a form
    (`a=b&c=d`, strictly) are redacted per field; anything else is not kept,
    because redaction cannot see into it: `omitted` is "unparsable" (text) or "binary", with a
    `sample` of at most 256 characters of text cut at the first credential
    word and with token-shaped runs masked (`scrub_sample`).

    Returns `{"size": N}` plus one of `json` (redacted value), `form` (redacted
    `[[name, value], ...]`), or `omitted` (also "too large"). Above `limit`,
    also `truncated: true` and `sha256` of the full original bytes; JSON keeps
    its structure with its largest arrays and strings cut, listed in `trimmed`
    (path -> original length). Small bodies get no hash: a hash of a short body
    holding a password would let anyone test password guesses.

    `parsed` is `orjson.loads(raw)` when the caller has it already (the gateway
    parses every Snowflake body once); it is read, never modified. A large
    JSON body is cut before it is redacted, so only what the record keeps is
    copied and walked.
    """
    size = len(raw)
    out: dict[str, Any] = {"size": size}
    if size == 0:
        return out
    over = size > limit
    if over:
        out["truncated"] = True
        out["sha256"] = hashlib.sha256(raw).hexdigest()
    value = parsed if parsed is not _NOT_PARSED else _parse_json(raw)
    if value is not _NOT_PARSED:
        if isinstance(value, str):
            value = scrub_sample(value, len(value))
        if not over:
            out["json"] = redact_json(value)
            return out
        redacted, trimmed = _bounded_json(value, limit)
        if trimmed is None:
            out["omitted"] = "too large"
            return out
        if trimmed:
            out["trimmed"] = trimmed
        out["json"] = redacted
        return out
    pairs = _parse_form(_form_region(raw, limit) if over else _utf8(raw))
    if pairs is not None:
        redacted_pairs = [[_scrub_form_text(name), _form_value(name, item)] for name, item in pairs]
        if over:
            redacted_pairs = _trim_pairs(redacted_pairs, limit)
        out["form"] = redacted_pairs
        return out
    if not _textual(raw):
        out["omitted"] = "binary"
        return out
    out["omitted"] = "unparsable"
    head = raw[3:] if raw.startswith(_BOM) else raw
    sample = scrub_sample(head[: _SAMPLE_BYTES + 1].decode("utf-8", "ignore"), _SAMPLE_CHARS)
    if sample:
        out["sample"] = sample
    return out


def _form_region(raw: bytes, limit: int) -> str | None:
    """The fields of an over-limit body that the record can keep: only those are read."""
    region = raw[:limit]
    end = region.rfind(b"&")
    return _utf8(region[:end] if end > 0 else region)


_BOM: Final = b"\xef\xbb\xbf"
_JSON_STARTS: Final = frozenset(b'{["-0123456789tfn')
_SAMPLE_CHARS: Final = 256
_SAMPLE_BYTES: Final = 4 * _SAMPLE_CHARS
_FORM_NAME: Final = re.compile(r"[\w.\-\[\]%+~*:]+")
_SAMPLE_STOP: Final = re.compile(
    r"pass|pwd|secret|token|credential|auth|bearer|key|private|cookie|signature|session"
    r"|identified|-----",
    re.IGNORECASE,
)
_WORD_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
_TOKEN_RUN: Final = re.compile(r"[A-Za-z0-9+/=_.~%\-]{20,}")


def _parse_json(raw: bytes) -> Any:
    """The JSON value of `raw`, or `_NOT_PARSED`; a UTF-8 BOM is skipped (orjson refuses it)."""
    data = raw[3:] if raw.startswith(_BOM) else raw
    first = data.lstrip()[:1]
    if not first or first[0] not in _JSON_STARTS:
        return _NOT_PARSED
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_PARSED


def _utf8(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


def _textual(raw: bytes) -> bool:
    """UTF-8 without NULs, judged on the start (a body cut mid-character still counts)."""
    head = raw[:_SAMPLE_BYTES]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and len(raw) > len(head)
    return True


def _parse_form(text: str | None) -> list[tuple[str, str]] | None:
    """`name=value&...` read strictly: every field has `=` and a name of URL-safe characters."""
    if text is None or "=" not in text:
        return None
    fields = text.strip().split("&")
    for field in fields:
        name, eq, _ = field.partition("=")
        if not eq or _FORM_NAME.fullmatch(name) is None:
            return None
    try:
        return parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None


def _form_value(name: str, value: str) -> str:
    if is_secret_key(name):
        return REDACTED
    return _scrub_form_text(_scrub_string(value))


def _scrub_form_text(text: str) -> str:
    """A form name or value: nothing token-shaped, SQL with its credential literals masked,
    and free text cut after a credential word that something follows (`pwd is ...`)."""
    if looks_like_credential(text):
        return REDACTED
    if _may_hold_secrets(text):
        text = redact_sql(text)
    stop = _SAMPLE_STOP.search(text)
    if stop is not None and text[stop.end() :].strip(_WORD_CHARS):
        return f"{text[: stop.end()]} {REDACTED}"
    return text


def scrub_sample(text: str, limit: int) -> str:
    """At most `limit` characters of text that did not parse, with nothing credential-like.

    Text is cut at the first word that may introduce a credential (PASSWORD,
    TOKEN, KEY, AUTH, SECRET, ...) and at `limit`; what is left has every run of
    20 or more token characters (a JWT, a key, a signature) masked.
    """
    head = text[:limit]
    stop = _SAMPLE_STOP.search(head)
    if stop is not None:
        head = f"{head[: stop.end()]} {REDACTED}"
    elif len(text) > limit:
        # a word cut at the limit may be the start of a credential word
        head = head.rsplit(None, 1)[0] if " " in head else ""
    return _TOKEN_RUN.sub(REDACTED, head)


def _trim_pairs(pairs: list[list[str]], limit: int) -> list[list[str]]:
    kept: list[list[str]] = []
    used = 0
    for pair in pairs:
        used += len(pair[0]) + len(pair[1]) + 8
        if used > limit:
            break
        kept.append(pair)
    return kept


def _bounded_json(value: Any, limit: int) -> tuple[Any, dict[str, int] | None]:
    """Redacted `value` cut to fit `limit` bytes, and the cut paths (None: it cannot fit).

    Cutting first and redacting what is left costs a walk of about `limit`
    bytes instead of the whole body (a 100k-row JSON rowset). Secret values are
    never cut (they become "[REDACTED]" anyway); since redaction can change
    sizes a little, what it returns is measured and cut again if needed.
    """
    cut, trimmed = _trim_json(_copy_objects(value), limit)
    redacted = redact_json(cut)
    if trimmed is None:
        return redacted, None
    redacted, again = _trim_json(redacted, limit)
    if again is None:
        return redacted, None
    for path, length in again.items():
        trimmed.setdefault(path, length)
    return redacted, trimmed


def _copy_objects(value: Any) -> Any:
    """Copies of the objects `_trim_json` may change (reached through objects only);
    arrays and strings stay shared with `value`."""
    if isinstance(value, dict):
        return {key: _copy_objects(child) for key, child in value.items()}
    return value


def _trim_json(value: Any, limit: int) -> tuple[Any, dict[str, int] | None]:
    """Cut the largest arrays and strings until the encoding fits `limit` bytes.

    Changes the objects of `value` in place. Returns the cut value and
    `{path: original length}`, or None for the paths when even cutting
    everything cuttable does not fit.
    """
    trimmed: dict[str, int] = {}
    box = {"$": value}
    for _ in range(_TRIM_ROUNDS):
        encoded_size = len(orjson.dumps(box["$"]))
        if encoded_size <= limit:
            return box["$"], trimmed
        candidates = _cuttable(box)
        if not candidates:
            break
        size, path, parent, key = max(candidates, key=lambda item: item[0])
        target = parent[key]
        if isinstance(target, str) and target.startswith(_URL_PREFIXES):
            # a URL cut inside its query could hide the parameter that marks it signed
            target = strip_url_query(target)
        keep_fraction = max(0.0, (size - (encoded_size - limit) - 64) / size)
        keep = int(len(target) * keep_fraction)
        if keep >= len(target):
            keep = len(target) - 1
        trimmed.setdefault(path, len(target))
        parent[key] = target[:keep]
    if len(orjson.dumps(box["$"])) <= limit:
        return box["$"], trimmed
    return box["$"], None


def _cuttable(box: dict[str, Any]) -> list[tuple[int, str, Any, Any]]:
    """(encoded size, path, parent, key) of every non-empty array and long string
    reachable through objects only; arrays are cut as a whole, never inside.
    Values under credential keys are left out: redaction replaces them whole.

    `box` is `{"$": value}`; paths are relative to the value (`$` is the value).
    """
    found: list[tuple[int, str, Any, Any]] = []
    stack: list[tuple[Any, str]] = [(box, "")]
    while stack:
        node, prefix = stack.pop()
        secret_pair = isinstance(node.get("name"), str) and _key_rule(node["name"]) == _SECRET
        for key, child in node.items():
            if not prefix:
                path = "$"
            elif prefix == "$":
                path = str(key)
            else:
                path = f"{prefix}.{key}"
            if (prefix and _key_rule(str(key)) == _SECRET) or (secret_pair and key == "value"):
                continue
            if isinstance(child, dict):
                stack.append((child, path))
            elif isinstance(child, list) and child:
                found.append((len(orjson.dumps(child)), path, node, key))
            elif isinstance(child, str) and len(child) > 256:
                found.append(
                    (len(child) if child.isascii() else len(child.encode()), path, node, key)
                )
    return found


# --- streamed bodies -----------------------------------------------------------------


def streamed_body_for_record(
    facts: dict[str, Any], outline: Any, elided: dict[str, int], limit: int
) -> dict[str, Any]:
    """The record's view of a body that went to the client as it arrived.

    `facts` are what was counted and hashed on the way (`size`, `sha256`, and
    `wire_size`, `wire_sha256` for an encoded body); `outline` is
    `outline.JsonOutline.close()`. The body is marked `streamed` and `truncated`, and
    carries the redacted outline as `json` (bounded by `limit` like any cut
    body, with `trimmed` and `elided` paths) or, without an outline,
    `omitted: "streamed"`.
    """
    body: dict[str, Any] = {**facts, "streamed": True, "truncated": True}
    if outline is None:
        body["omitted"] = "streamed"
        return body
    redacted, trimmed = _bounded_json(outline, limit)
    if trimmed is None:
        body["omitted"] = "streamed"
        return body
    body["json"] = redacted
    if trimmed:
        body["trimmed"] = trimmed
    if elided:
        body["elided"] = dict(elided)
    return body
