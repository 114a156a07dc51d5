"""Redaction: no secret survives into a record, everything else stays readable."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest

from hoopgw.recorder.redaction import (
    REDACTED,
    body_for_record,
    redact_headers,
    redact_json,
    redact_message,
    redact_path,
    redact_sql,
    strip_url_query,
)

SECRET = "s3cr3t-VALUE-7781"


def _dump(value: object) -> str:
    return orjson.dumps(value).decode()


# --- headers -------------------------------------------------------------------------


def test_redact_headers_hides_credentials_and_keeps_the_rest_in_order() -> None:
    headers = [
        ("Host", "acme.snowflakecomputing.com"),
        ("Authorization", f'Snowflake Token="{SECRET}"'),
        ("proxy-authorization", f"Basic {SECRET}"),
        ("Cookie", f"session={SECRET}"),
        ("Set-Cookie", f"sid={SECRET}; HttpOnly"),
        ("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT"),
        ("X-Amz-Security-Token", SECRET),
        ("X-Client-Secret", SECRET),
        ("X-Db-Password", SECRET),
        ("X-Api-Key", SECRET),
        ("Content-Type", "application/json"),
    ]
    redacted = redact_headers(headers)
    assert [name for name, _ in redacted] == [name for name, _ in headers]
    assert SECRET not in _dump(redacted)
    as_dict = dict((name, value) for name, value in redacted)
    assert as_dict["Authorization"] == REDACTED
    assert as_dict["X-Snowflake-Authorization-Token-Type"] == "KEYPAIR_JWT"
    assert as_dict["Host"] == "acme.snowflakecomputing.com"
    assert as_dict["Content-Type"] == "application/json"
    assert all(isinstance(pair, list) for pair in redacted)


def test_redact_path_masks_credential_query_parameters() -> None:
    path = (
        f"/session/v1/login-request?request_id=abc&token={SECRET}&databaseName=DB"
        f"&master%5Ftoken={SECRET}&flag&warehouse=WH"
    )
    assert redact_path(path) == (
        "/session/v1/login-request?request_id=abc&token=[REDACTED]&databaseName=DB"
        "&master%5Ftoken=[REDACTED]&flag&warehouse=WH"
    )
    assert redact_path("/queries/v1/query-request?requestId=1") == (
        "/queries/v1/query-request?requestId=1"
    )
    assert redact_path("/monitoring/queries//01b2") == "/monitoring/queries//01b2"


# --- JSON ----------------------------------------------------------------------------


def test_login_request_secrets_are_redacted() -> None:
    body = {
        "data": {
            "ACCOUNT_NAME": "ACME",
            "LOGIN_NAME": "agent",
            "AUTHENTICATOR": "OAUTH",
            "TOKEN": SECRET,
            "PASSWORD": SECRET,
            "PASSCODE": 123456,
            "PRIVATE_KEY": SECRET,
            "EXT_AUTHN_DUO_METHOD": "push",
            "CLIENT_APP_ID": "PythonConnector",
            "SESSION_PARAMETERS": {"CLIENT_STORE_TEMPORARY_CREDENTIAL": True, "QUERY_TAG": "x"},
        }
    }
    redacted = redact_json(body)
    data = redacted["data"]
    for key in ("TOKEN", "PASSWORD", "PASSCODE", "PRIVATE_KEY"):
        assert data[key] == REDACTED, key
    assert data["LOGIN_NAME"] == "agent"
    assert data["AUTHENTICATOR"] == "OAUTH"
    assert data["SESSION_PARAMETERS"]["CLIENT_STORE_TEMPORARY_CREDENTIAL"] is True
    assert SECRET not in _dump(redacted)
    assert "123456" not in _dump(redacted)
    assert body["data"]["TOKEN"] == SECRET, "the input must not be modified"


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "masterToken",
        "sessionToken",
        "idToken",
        "mfaToken",
        "oldSessionToken",
        "remMeToken",
        "qrmk",
        "QRMK",
        "privateKey",
        "private_key",
        "AWS_SECRET_KEY",
        "AZURE_SAS_TOKEN",
        "AWS_KEY_ID",
        "clientSecret",
        "client_password",
        "dbPassword",
        "queryStageMasterKey",
        "refresh_token",
    ],
)
def test_secret_keys_are_redacted_at_any_depth(key: str) -> None:
    body = {"data": {"nested": [{key: SECRET, "name": "kept"}]}}
    redacted = redact_json(body)
    assert redacted["data"]["nested"][0][key] == REDACTED
    assert redacted["data"]["nested"][0]["name"] == "kept"


def test_whole_objects_are_redacted_for_creds_chunk_headers_and_encryption_material() -> None:
    body = {
        "data": {
            "chunkHeaders": {"x-amz-server-side-encryption-customer-key": SECRET},
            "stageInfo": {
                "locationType": "S3",
                "location": "bucket/stage/path/",
                "region": "us-west-2",
                "creds": {"AWS_KEY_ID": "AKIA", "AWS_SECRET_KEY": SECRET, "AWS_TOKEN": SECRET},
            },
            "encryptionMaterial": {"queryStageMasterKey": SECRET, "queryId": "q", "smkId": 1},
        }
    }
    data = redact_json(body)["data"]
    assert data["chunkHeaders"] == REDACTED
    assert data["stageInfo"]["creds"] == REDACTED
    assert data["encryptionMaterial"] == REDACTED
    assert data["stageInfo"]["location"] == "bucket/stage/path/"
    assert data["stageInfo"]["region"] == "us-west-2"


def test_renew_response_tokens_are_redacted_and_validity_kept() -> None:
    body = {
        "data": {
            "sessionToken": SECRET,
            "validityInSecondsST": 3600,
            "masterToken": SECRET,
            "validityInSecondsMT": 14400,
            "sessionId": 1234,
        },
        "success": True,
    }
    data = redact_json(body)["data"]
    assert data == {
        "sessionToken": REDACTED,
        "validityInSecondsST": 3600,
        "masterToken": REDACTED,
        "validityInSecondsMT": 14400,
        "sessionId": 1234,
    }


def test_null_and_boolean_secret_fields_stay_as_they_are() -> None:
    body = {"token": None, "PASSWORD": False, "masterToken": ""}
    assert redact_json(body) == {"token": None, "PASSWORD": False, "masterToken": REDACTED}


def test_presigned_urls_lose_their_query() -> None:
    signed = (
        "https://sfc-prod.s3.us-west-2.amazonaws.com/results/01b2/main/data_0_0_1?"
        f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature={SECRET}"
    )
    body = {
        "data": {
            "chunks": [
                {"url": signed, "rowCount": 10, "uncompressedSize": 100, "compressedSize": 50},
                {"url": signed, "rowCount": 5, "uncompressedSize": 60, "compressedSize": 30},
            ],
            "stageInfo": {"presignedUrl": signed, "location": signed},
            "presignedUrls": [signed, signed],
            "rowset": [["https://example.com/page?utm_source=x", signed]],
        }
    }
    data = redact_json(body)["data"]
    bare = "https://sfc-prod.s3.us-west-2.amazonaws.com/results/01b2/main/data_0_0_1"
    assert [chunk["url"] for chunk in data["chunks"]] == [bare, bare]
    assert data["chunks"][0]["rowCount"] == 10
    assert data["stageInfo"]["presignedUrl"] == bare
    assert data["stageInfo"]["location"] == bare
    assert data["presignedUrls"] == [bare, bare]
    assert data["rowset"][0] == ["https://example.com/page?utm_source=x", bare]
    assert SECRET not in _dump(data)


def test_strip_url_query_drops_userinfo_and_fragment() -> None:
    assert strip_url_query(f"https://user:{SECRET}@h.example:8443/p/a?x=1#f") == (
        "https://h.example:8443/p/a"
    )


def test_name_value_pairs_hide_secret_values() -> None:
    body = {
        "parameters": [
            {"name": "TIMEZONE", "value": "UTC"},
            {"name": "CLIENT_SECRET_THING", "value": SECRET},
        ]
    }
    params = redact_json(body)["parameters"]
    assert params[0] == {"name": "TIMEZONE", "value": "UTC"}
    assert params[1] == {"name": "CLIENT_SECRET_THING", "value": REDACTED}


def test_sql_inside_json_bodies_is_redacted() -> None:
    body = {"sqlText": f"ALTER USER bob SET PASSWORD = '{SECRET}'", "sequenceId": 3}
    redacted = redact_json(body)
    assert redacted["sqlText"] == "ALTER USER bob SET PASSWORD = '[REDACTED]'"
    api_v2 = {"statement": f"create user x password='{SECRET}'", "timeout": 60}
    assert SECRET not in _dump(redact_json(api_v2))


# --- SQL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            f"ALTER USER bob SET PASSWORD = '{SECRET}'",
            "ALTER USER bob SET PASSWORD = '[REDACTED]'",
        ),
        (
            f"alter user bob set password='{SECRET}' must_change_password = true",
            "alter user bob set password='[REDACTED]' must_change_password = true",
        ),
        (
            f"CREATE USER x PassWord = 'it''s{SECRET}' COMMENT = 'kept'",
            "CREATE USER x PassWord = '[REDACTED]' COMMENT = 'kept'",
        ),
        (
            f"CREATE USER x PASSWORD = 'a\\'b{SECRET}' DEFAULT_ROLE = analyst",
            "CREATE USER x PASSWORD = '[REDACTED]' DEFAULT_ROLE = analyst",
        ),
        (
            f"create user x password /* the password */ = -- really\n '{SECRET}'",
            "create user x password /* the password */ = -- really\n '[REDACTED]'",
        ),
        (
            f"CREATE STAGE s URL = 's3://bucket/path/' CREDENTIALS = (AWS_KEY_ID = 'AKIA1' "
            f"AWS_SECRET_KEY = '{SECRET}') FILE_FORMAT = (TYPE = CSV)",
            "CREATE STAGE s URL = 's3://bucket/path/' CREDENTIALS = ([REDACTED]) "
            "FILE_FORMAT = (TYPE = CSV)",
        ),
        (
            f"COPY INTO t FROM 'azure://acct.blob.core.windows.net/c/' "
            f"credentials=(azure_sas_token='{SECRET}') encryption=(type='AZURE_CSE' "
            f"master_key='{SECRET}')",
            "COPY INTO t FROM 'azure://acct.blob.core.windows.net/c/' "
            "credentials=([REDACTED]) encryption=([REDACTED])",
        ),
        (
            f"ALTER USER svc SET RSA_PUBLIC_KEY='MIIBIjANBgkq{SECRET}', RSA_PUBLIC_KEY_2 = "
            f"$${SECRET}$$",
            "ALTER USER svc SET RSA_PUBLIC_KEY='[REDACTED]', RSA_PUBLIC_KEY_2 = '[REDACTED]'",
        ),
        (
            f"CREATE SECRET s TYPE = PASSWORD USERNAME = 'svc' PASSWORD = '{SECRET}'",
            "CREATE SECRET s TYPE = PASSWORD USERNAME = 'svc' PASSWORD = '[REDACTED]'",
        ),
        (
            f"CREATE SECRET g TYPE = GENERIC_STRING SECRET_STRING = '{SECRET}'",
            "CREATE SECRET g TYPE = GENERIC_STRING SECRET_STRING = '[REDACTED]'",
        ),
        (
            f"CREATE SECRET o TYPE = OAUTH2 OAUTH_REFRESH_TOKEN = '{SECRET}' "
            f"OAUTH_REFRESH_TOKEN_EXPIRY_TIME = '2025-01-01'",
            "CREATE SECRET o TYPE = OAUTH2 OAUTH_REFRESH_TOKEN = '[REDACTED]' "
            "OAUTH_REFRESH_TOKEN_EXPIRY_TIME = '2025-01-01'",
        ),
        (
            f"CREATE INTEGRATION i TYPE = API OAUTH_CLIENT_SECRET = '{SECRET}' ENABLED = TRUE",
            "CREATE INTEGRATION i TYPE = API OAUTH_CLIENT_SECRET = '[REDACTED]' ENABLED = TRUE",
        ),
        (
            f"SELECT * FROM api_keys WHERE token = '{SECRET}' AND owner = 'bob'",
            "SELECT * FROM api_keys WHERE token = '[REDACTED]' AND owner = 'bob'",
        ),
        (
            f"CALL connect(user => 'bob', password => '{SECRET}')",
            "CALL connect(user => 'bob', password => '[REDACTED]')",
        ),
        (
            f"let secret := '{SECRET}'",
            "let secret := '[REDACTED]'",
        ),
        (
            f"EXECUTE IMMEDIATE 'ALTER USER x SET PASSWORD = ''{SECRET}'''; SELECT 1",
            "EXECUTE IMMEDIATE 'ALTER USER x SET PASSWORD = ''[REDACTED]'''; SELECT 1",
        ),
        (
            f"CREATE PROCEDURE p() RETURNS STRING LANGUAGE SQL AS $$ BEGIN "
            f"ALTER USER x SET PASSWORD = '{SECRET}'; RETURN 'ok'; END $$",
            "CREATE PROCEDURE p() RETURNS STRING LANGUAGE SQL AS $$ BEGIN "
            "ALTER USER x SET PASSWORD = '[REDACTED]'; RETURN 'ok'; END $$",
        ),
    ],
)
def test_redact_sql_masks_credential_literals_only(sql: str, expected: str) -> None:
    assert redact_sql(sql) == expected
    assert SECRET not in redact_sql(sql)


def test_redact_sql_masks_pem_private_keys_anywhere() -> None:
    pem = (
        f"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE{SECRET}\nabc=\n"
        "-----END ENCRYPTED PRIVATE KEY-----"
    )
    sql = f"SELECT '{pem}' AS k, 1"
    masked = redact_sql(sql)
    assert SECRET not in masked
    assert masked == "SELECT '[REDACTED PRIVATE KEY]' AS k, 1"
    unterminated = f"select '-----BEGIN RSA PRIVATE KEY-----\n{SECRET}"
    assert SECRET not in redact_sql(unterminated)


def test_redact_sql_leaves_ordinary_statements_byte_for_byte() -> None:
    statements = [
        "SELECT order_id, customer_key, SUM(amount) FROM orders WHERE customer_key = 'C-1'",
        "select 'PASSWORD' as label, token_count from t where token_count = 5",
        "CREATE TABLE t (id INT PRIMARY KEY, api_token_hash VARCHAR)",
        "INSERT INTO t VALUES ('it''s', 'a\\'b') -- password is not here",
        "ALTER USER bob SET MUST_CHANGE_PASSWORD = TRUE",
        "",
    ]
    for sql in statements:
        assert redact_sql(sql) == sql


def test_redact_sql_untokenizable_statement_is_cut_at_the_first_secret_name() -> None:
    sql = f"ALTER USER bob SET PASSWORD = '{SECRET}"
    masked = redact_sql(sql)
    assert SECRET not in masked
    assert masked.startswith("ALTER USER bob SET ")


def test_redact_sql_is_fast() -> None:
    """It runs on every statement: plain ones skip the tokenizer altogether."""
    plain = "SELECT a, b, c FROM analytics.public.orders WHERE status = 'NEW' LIMIT 10"
    secret = f"ALTER USER bob SET PASSWORD = '{SECRET}' DEFAULT_ROLE = analyst"

    def each(sql: str, runs: int) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(runs):
                redact_sql(sql)
            best = min(best, (time.perf_counter() - started) / runs)
        return best

    plain_each, secret_each = each(plain, 2000), each(secret, 200)
    assert plain_each < 20e-6, f"{plain_each * 1e6:.1f} us for a statement without secrets"
    assert secret_each < 2e-3, f"{secret_each * 1e6:.1f} us for a statement with a password"


# --- bodies --------------------------------------------------------------------------


def test_body_for_record_small_json_is_redacted_without_hash() -> None:
    raw = orjson.dumps({"data": {"TOKEN": SECRET, "LOGIN_NAME": "bob"}})
    body = body_for_record(raw, 1024)
    assert body == {"size": len(raw), "json": {"data": {"TOKEN": REDACTED, "LOGIN_NAME": "bob"}}}


def test_body_for_record_truncates_large_json_keeping_structure() -> None:
    rows = [[str(i), f"name-{i}", "x" * 40] for i in range(5000)]
    answer = {"data": {"queryId": "01b2", "rowset": rows, "total": 5000, "qrmk": SECRET}}
    raw = orjson.dumps(answer)
    limit = 20_000
    body = body_for_record(raw, limit)
    assert body["truncated"] is True
    assert body["size"] == len(raw)
    assert body["sha256"] == hashlib.sha256(raw).hexdigest()
    assert body["trimmed"] == {"data.rowset": 5000}
    kept = body["json"]["data"]
    assert kept["queryId"] == "01b2" and kept["total"] == 5000
    assert kept["qrmk"] == REDACTED
    assert 0 < len(kept["rowset"]) < 5000
    assert kept["rowset"][0] == ["0", "name-0", "x" * 40]
    assert len(orjson.dumps(body["json"])) <= limit


def test_body_for_record_truncates_large_strings_and_top_level_arrays() -> None:
    raw = orjson.dumps({"data": {"rowsetBase64": "A" * 100_000, "queryId": "q"}})
    body = body_for_record(raw, 10_000)
    assert body["trimmed"] == {"data.rowsetBase64": 100_000}
    assert len(body["json"]["data"]["rowsetBase64"]) < 10_000
    listing = orjson.dumps([{"i": i} for i in range(10_000)])
    body = body_for_record(listing, 5_000)
    assert body["trimmed"] == {"$": 10_000}
    assert body["json"][:2] == [{"i": 0}, {"i": 1}]


def test_body_for_record_text_form_binary_and_empty() -> None:
    assert body_for_record(b"", 10) == {"size": 0}
    text = body_for_record(b"<html>error 502</html>", 100)
    assert text == {"size": 22, "omitted": "unparsable", "sample": "<html>error 502</html>"}
    cut = body_for_record(b"abcdefghi " * 10, 15)
    assert cut["omitted"] == "unparsable" and cut["truncated"] is True
    assert "sample" in cut and len(cut["sample"]) <= 256
    form = body_for_record(
        f"grant_type=refresh_token&refresh_token={SECRET}&client_id=app".encode(), 1000
    )
    assert form["form"] == [
        ["grant_type", "refresh_token"],
        ["refresh_token", REDACTED],
        ["client_id", "app"],
    ]
    binary = body_for_record(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", 1000)
    assert binary == {"size": 11, "omitted": "binary"}


def test_body_for_record_keeps_no_text_of_invalid_json() -> None:
    """Broken JSON cannot be redacted by key, so only a scrubbed sample is kept."""
    body = body_for_record(b'{"data": {"TOKEN": "eyJ.secret', 100)
    assert body == {"size": 30, "omitted": "unparsable", "sample": f'{{"data": {{"TOKEN {REDACTED}'}


def test_error_messages_are_cut_at_credential_words():
    quoted = "syntax error near 'create user x password = 'hunter2-never"
    assert "hunter2" not in str(redact_json({"message": quoted}))
    assert redact_json({"message": "Object 'T' does not exist"}) == {
        "message": "Object 'T' does not exist"
    }


@pytest.mark.parametrize(
    "message",
    [
        "Invalid value 'hunter2-never' for property PASSWORD",
        'Invalid value "hunter2-never" for property password',
        "unexpected `hunter2-never` near TOKEN = ...",
        "syntax error near 'hunter2-never and then SECRET",
        "'a' 'hunter2-never' 'b' credentials 'c'",
        "near 'my passphrase is hunter2-never' at position 12",
    ],
)
def test_error_messages_keep_no_quoted_fragment_of_a_message_naming_a_credential(
    message: str,
) -> None:
    """The value can come before the word that names it; a message naming one keeps no quote."""
    redacted = redact_message(message)
    assert "hunter2" not in redacted
    assert REDACTED in redacted
    assert "hunter2" not in str(redact_json({"message": message}))


def test_error_messages_without_credential_words_keep_their_quotes() -> None:
    message = "SQL compilation error: Object 'BENCH.PUBLIC.ORDERS' does not exist"
    assert redact_message(message) == message


def test_redacting_one_sql_text_twice_gives_its_redaction_and_the_next_text_its_own() -> None:
    """A record redacts a statement's text twice (body and `sql`); the second is remembered."""
    first = f"alter user ada set password = '{SECRET}'"
    second = f"alter user bob set password = '{SECRET}-2'"
    assert redact_sql(first) == redact_sql(first) == "alter user ada set password = '[REDACTED]'"
    assert redact_sql(second) == "alter user bob set password = '[REDACTED]'"
    same_text = "".join(["alter user ada set ", f"password = '{SECRET}'"])
    assert same_text is not first and SECRET not in redact_sql(same_text)
    assert redact_sql("select 1") == "select 1" and SECRET not in redact_sql(first)


def test_a_jwt_deep_in_a_long_string_is_masked_like_one_in_a_short_string() -> None:
    """Long strings (Arrow rowsets) are searched another way; what they hide is masked alike."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"
    for padding in (10, 5000):
        text = "x" * padding + " " + jwt
        redacted = redact_json({"note": text, "rows": [[text]]})
        assert jwt not in orjson.dumps(redacted).decode(), padding
        assert redacted["note"].startswith("x" * padding)


def test_redact_json_bytes_are_pinned_across_every_branch_of_the_walk() -> None:
    """The walk was restructured for speed; its output for each branch (nested arrays,
    name/value pairs, URL keys, secret keys over any value, SQL, messages) stays byte-equal."""
    answer = {
        "data": {
            "parameters": [
                {"name": "TIMEZONE", "value": "Etc/UTC"},
                {"name": "CLIENT_PRIVATE_KEY", "value": 7},
                {"name": "PASSWORD", "value": None},
            ],
            "rowset": [
                ["1", "eyJhbGciOi.eyJzdWIi.sig"],
                [None, 2.5, True],
                [["nested", "Bearer abcdefgh12345"]],
            ],
            "chunks": [{"url": "https://b.s3.example/k?X-Amz-Signature=abc", "rowCount": 3}],
            "presignedUrls": ["https://h/p?part=1"],
            "masterToken": {"any": "thing"},
            "sqlText": "alter user u set password = 'hunter2'",
            "errorMessage": "failed: password = 'x'",
            "location": "s3://bucket/path?token=abc",
            "plain": "https://example.com/a?b=c",
            "count": 3,
            "flag": False,
            "none": None,
            "token": 12,
        },
        "message": None,
        "success": True,
    }
    expected = (
        b'{"data":{"chunks":[{"rowCount":3,"url":"https://b.s3.example/k"}],"count":3,'
        b'"errorMessage":"failed: password [REDACTED]","flag":false,"location":"s3://bucket/path",'
        b'"masterToken":"[REDACTED]","none":null,"parameters":[{"name":"TIMEZONE",'
        b'"value":"Etc/UTC"},{"name":"CLIENT_PRIVATE_KEY","value":"[REDACTED]"},'
        b'{"name":"PASSWORD","value":null}],"plain":"https://example.com/a?b=c",'
        b'"presignedUrls":["https://h/p"],"rowset":[["1","[REDACTED]"],[null,2.5,true],'
        b'[["nested","[REDACTED]"]]],"sqlText":"alter user u set password = \'[REDACTED]\'",'
        b'"token":"[REDACTED]"},"message":null,"success":true}'
    )
    assert orjson.dumps(redact_json(answer), option=orjson.OPT_SORT_KEYS) == expected
