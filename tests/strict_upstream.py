"""A strict Snowflake front for fakesnow: it checks credentials the way Snowflake does.

fakesnow accepts any login, so a gateway that forwarded the caller's token, or
a malformed key-pair JWT, would pass every test against it. `StrictUpstream`
sits between the gateway and fakesnow and:

- accepts a login only with the configured account and a user it knows (the
  configured one, or one of `users`, each with its own registered public key)
  and either a key-pair JWT (AUTHENTICATOR=SNOWFLAKE_JWT: RS256, signature by the registered
  public key, `iss = ACCOUNT.USER.SHA256:<fingerprint>`, `sub = ACCOUNT.USER`,
  `iat`/`exp` at most an hour apart, as Snowflake's key-pair documentation
  states) or the configured password; anything else gets 390100;
- issues its own session and master tokens (mapped to fakesnow's token), serves
  `/session/token-request` renewals with the master token, and answers 390112
  once told to expire the current session tokens;
- checks SQL API v2 calls for a key-pair JWT bearer token, and so do the Cortex
  REST emulations it mounts (tests/cortex_upstream.py);
- records every request it receives, so tests can assert what upstream saw;
- keeps each session's QUERY_TAG (from the login's SESSION_PARAMETERS, a
  query's `parameters`, or `ALTER SESSION SET QUERY_TAG`, which fakesnow does
  not implement and this upstream answers itself), so tests read what it saw;
- answers `LAST_QUERY_ID()` (which fakesnow lacks) with the session's last
  query id, as Snowflake does inside the session;
- given a `CloudStorage` (tests/cloud_storage.py), answers a query whose text
  carries `/*chunks:N:json*/` or `/*chunks:N:arrow*/` the way Snowflake answers
  a large result: the first rows inline, the rest as N chunks on the storage,
  each behind a pre-signed URL and encrypted with the answer's `qrmk` (JSON
  chunks gzip'd rows without the outer brackets, served with Content-Encoding
  gzip; Arrow chunks IPC streams, gzip'd without the header, as S3 serves them);
  `/*chunks:0:json*/` answers the whole result inline as a JSON rowset (what
  Snowflake sends drivers that take no Arrow, such as Node's; fakesnow answers
  Arrow only); `/*chunks:N:json:noinline*/` puts every row in the chunks (Node
  reads no chunks when rows come inline); `/*chunks:N:json:BYTES*/` instead
  makes N synthetic chunks of about BYTES decoded bytes each, one shared blob
  (for benchmarks: scripts/bench_chunks.py);
- answers `PUT`/`GET` itself as Snowflake's first round of a file transfer:
  `stageInfo` with temporary cloud keys (`STAGE_CREDENTIALS`) and
  `encryptionMaterial`, without running anything.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.client
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pyarrow as pa
import pyarrow.ipc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests import cortex_upstream, mcp_upstream, stack
from tests.cloud_storage import CloudStorage

CHUNKED = re.compile(r"/\*chunks:(\d+):(json|arrow)(?::(\d+))?(:noinline)?\*/")
# a GET with this comment is answered as on GCP: N pre-signed URLs to the stage files
PRESIGNED = re.compile(r"/\*presigned:(\d+)\*/")
# a PUT with this comment is answered as on GCP: one pre-signed URL to upload its file to
PRESIGNED_PUT = re.compile(r"/\*presigned-put\*/")
_PUT_SOURCE = re.compile(r"file://(?:'([^']*)'|(\S+))", re.IGNORECASE)
STAGE_FILE = b"id,label\n%d,stage file\n"
# an SQL API statement with this comment is answered in N partitions of R rows each
PARTITIONED = re.compile(r"/\*partitions:(\d+):(\d+)\*/")
INLINE_ROWS = 10
SQL_API_HANDLE = "01b2c3d4-0000-0000-0000-000000000001"
"""The handle of every unpartitioned SQL API answer; GETs of any other are 404."""
STAGE_CREDENTIALS = {
    "AWS_KEY_ID": "ASIA-STRICT-STAGE-KEY-ID",
    "AWS_SECRET_KEY": "strict-stage-secret-key-0123456789",
    "AWS_TOKEN": "strict-stage-session-token-0123456789",
}
STAGE_MASTER_KEY = "c3RyaWN0LXN0YWdlLW1hc3Rlci1rZXk="
UPLOAD_MASTER_KEY = base64.b64encode(b"strict-upload-16").decode()
"""The stage master key of `/*presigned-put*/` answers: one the connector can encrypt with."""

BAD_CREDENTIALS = {
    "data": {"nextAction": None, "authnMethod": "PASSWORD"},
    "code": "390100",
    "message": "Incorrect username or password was specified.",
    "success": False,
    "headers": None,
}


@dataclass(frozen=True)
class Received:
    """One request as the upstream received it (body decoded)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{headers}\n\n{self.body.decode(errors='replace')}"


@dataclass
class _Session:
    fakesnow_token: str
    master_token: str
    session_id: int
    expired: bool = False
    query_tag: str | None = None
    last_query_id: str | None = None


@dataclass
class _State:
    sessions: dict[str, _Session] = field(default_factory=dict)
    masters: dict[str, str] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    logins: list[dict[str, Any]] = field(default_factory=list)
    query_tags: list[str | None] = field(default_factory=list)
    renewals: int = 0
    answers: dict[str, bytes] = field(default_factory=dict)  # by query id, for /queries/{id}/result
    partitions: dict[str, list[list[list[str]]]] = field(default_factory=dict)


def snowflake_account(account: str) -> str:
    """Account as Snowflake's key-pair documentation wants it in JWT claims."""
    if ".global" in account:
        return account.split("-", 1)[0].upper()
    return account.split(".", 1)[0].upper()


def fingerprint(public_key: RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


class StrictUpstream(stack.LoopbackServer):
    """Run with `start()`; `url` is its base URL; `stop()` shuts it down."""

    def __init__(
        self,
        fakesnow_url: str,
        account: str,
        user: str,
        *,
        public_key: RSAPublicKey | None = None,
        password: str | None = None,
        users: dict[str, RSAPublicKey] | None = None,
        session_validity: int = 3600,
        master_validity: int = 14400,
        storage: CloudStorage | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(fakesnow_url)
        self.fakesnow = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.account = account
        self.user = user
        self.public_key = public_key
        self.password = password
        self.users = {name.upper(): key for name, key in (users or {}).items()}
        self.session_validity = session_validity
        self.master_validity = master_validity
        self.storage = storage
        self._state = _State()
        self._lock = threading.Lock()
        self._session_ids = itertools.count(1_000_001)

    # Control

    def expire_sessions(self) -> int:
        """Make every current session token answer 390112 (expired) until renewed."""
        with self._lock:
            for session in self._state.sessions.values():
                session.expired = True
            return len(self._state.sessions)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._state.received)

    def issued_tokens(self) -> set[str]:
        """Every session and master token this upstream (or fakesnow behind it) issued."""
        with self._lock:
            return set(self._state.issued)

    def logins(self) -> list[dict[str, Any]]:
        """Accepted logins: authenticator, login name, role and warehouse asked for."""
        with self._lock:
            return list(self._state.logins)

    def query_tags(self) -> list[str | None]:
        """The QUERY_TAG in force for each statement and login, in the order they came."""
        with self._lock:
            return list(self._state.query_tags)

    @property
    def renewals(self) -> int:
        with self._lock:
            return self._state.renewals

    def answered_query_ids(self) -> set[str]:
        """The ids of every query this upstream answered."""
        with self._lock:
            return set(self._state.answers)

    def mark(self) -> int:
        """A position in the request log; `received_since(mark)` lists what came after."""
        with self._lock:
            return len(self._state.received)

    def received_since(self, mark: int) -> list[Received]:
        with self._lock:
            return list(self._state.received[mark:])

    # Request handling (called from the server's threads)

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        if cortex_upstream.serves(handler.path):
            cortex_upstream.serve(self, handler)
            return
        body = stack.read_body(handler)
        headers = {_canonical_header(k): v for k, v in handler.headers.items()}
        answer = self.handle(handler.command, handler.path, headers, body)
        stack.send_answer(handler, answer.status, answer.body, answer.content_type)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        with self._lock:
            self._state.received.append(Received(method, path, headers, body))
        route = path.split("?", 1)[0]
        if route == "/session/v1/login-request":
            return self._login(path, body)
        if route == "/session/token-request":
            return self._renew(headers, body)
        if route.startswith("/api/v2/statements"):
            return self._sql_api(method, headers, body, path)
        if route.startswith("/api/v2/databases/") and "/mcp-servers/" in route:
            return _Answer(*mcp_upstream.answer(self, method, path, headers, body))
        if route.startswith("/fs_bucket/"):
            return self._forward(method, path, headers, body, None)
        token = _snowflake_token(headers)
        with self._lock:
            session = self._state.sessions.get(token or "")
        if session is None:
            return _Answer.json(_failure("390104", "User must login again to access the service."))
        if session.expired:
            return _Answer.json(_failure("390112", "Session token expired"))
        if route == "/telemetry/send":
            return _Answer.json({"success": True, "data": None, "code": None, "message": None})
        if method == "GET" and _RESULT_ROUTE.fullmatch(route):
            return self._result(route.split("/")[2])
        if route == "/queries/v1/query-request" and _file_transfer(body):
            return _Answer.json(self._presigned(body, _stage_answer(body)))
        if route == "/queries/v1/query-request":
            altered = self._query_tag(session, body)
            if altered is not None:
                return altered
            body = self._last_query_id(session, body)
        answer = self._forward(method, path, headers, body, session.fakesnow_token)
        if route == "/queries/v1/query-request":
            self._note_query_id(session, answer)
        if route == "/queries/v1/query-request" and self.storage is not None:
            answer = self._chunked(body, answer)
        if route == "/session" and "delete=true" in path:
            with self._lock:
                self._state.sessions.pop(token or "", None)
                self._state.masters.pop(session.master_token, None)
        return answer

    def _login(self, path: str, body: bytes) -> _Answer:
        try:
            data = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError):
            return _Answer.json(_failure("390100", "malformed login"))
        if not self._credentials_ok(data):
            return _Answer.json(BAD_CREDENTIALS)
        forwarded = {
            k: v for k, v in data.items() if k not in ("TOKEN", "PASSWORD", "AUTHENTICATOR")
        }
        answer = self._forward(
            "POST",
            path,
            {"Content-Type": "application/json"},
            json.dumps({"data": forwarded}).encode(),
            None,
        )
        payload = json.loads(answer.body)
        if not payload.get("success"):
            return answer
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        role = query.get("roleName", [None])[0]
        warehouse = query.get("warehouse", [None])[0]
        fakesnow_token = payload["data"]["token"]
        session_token = "ver:1-hint:strict-ST-" + secrets.token_urlsafe(24)
        master_token = "ver:1-hint:strict-MT-" + secrets.token_urlsafe(24)
        session_id = next(self._session_ids)
        with self._lock:
            session_tag = next(
                (
                    v
                    for k, v in (data.get("SESSION_PARAMETERS") or {}).items()
                    if k.upper() == "QUERY_TAG"
                ),
                None,
            )
            self._state.sessions[session_token] = _Session(
                fakesnow_token, master_token, session_id, query_tag=session_tag
            )
            self._state.query_tags.append(session_tag)
            self._state.masters[master_token] = session_token
            self._state.issued.update({session_token, master_token, fakesnow_token})
            self._state.logins.append(
                {
                    "authenticator": str(data.get("AUTHENTICATOR") or "SNOWFLAKE").upper(),
                    "login_name": data.get("LOGIN_NAME"),
                    "role": role,
                    "warehouse": warehouse,
                }
            )
        info = payload["data"].setdefault("sessionInfo", {})
        info["roleName"] = role
        info["warehouseName"] = warehouse
        payload["data"].update(
            token=session_token,
            masterToken=master_token,
            validityInSeconds=self.session_validity,
            masterValidityInSeconds=self.master_validity,
            sessionId=session_id,
            idToken="ver:1-hint:strict-ID-" + secrets.token_urlsafe(16),
        )
        return _Answer.json(payload)

    def _query_tag(self, session: _Session, body: bytes) -> _Answer | None:
        """Note the statement's QUERY_TAG; answer ALTER SESSION SET/UNSET QUERY_TAG here."""
        try:
            request = json.loads(body)
        except ValueError:
            return None
        parameters = request.get("parameters") or {}
        tags = [v for k, v in parameters.items() if k.upper() == "QUERY_TAG"]
        altered = _ALTER_QUERY_TAG.match(str(request.get("sqlText") or ""))
        with self._lock:
            if altered is not None:
                session.query_tag = (
                    None if altered["verb"].upper() == "UNSET" else _sql_string(altered["value"])
                )
            self._state.query_tags.append(tags[0] if tags else session.query_tag)
        if altered is None:
            return None
        return _Answer.json(
            {
                "data": {
                    "queryId": str(uuid.uuid4()),
                    "rowtype": [{"name": "status", "type": "text", "nullable": False}],
                    "rowset": [["Statement executed successfully."]],
                    "total": 1,
                    "returned": 1,
                    "queryResultFormat": "json",
                },
                "code": None,
                "message": None,
                "success": True,
            }
        )

    @staticmethod
    def _last_query_id(session: _Session, body: bytes) -> bytes:
        """LAST_QUERY_ID() runs inside Snowflake; fakesnow lacks it, so it is answered here."""
        try:
            request = json.loads(body)
        except ValueError:
            return body
        sql = request.get("sqlText")
        if not isinstance(sql, str) or not _LAST_QUERY_ID.search(sql):
            return body
        request["sqlText"] = _LAST_QUERY_ID.sub(f"'{session.last_query_id}'", sql)
        return json.dumps(request).encode()

    def _note_query_id(self, session: _Session, answer: _Answer) -> None:
        try:
            query_id = json.loads(answer.body).get("data", {}).get("queryId")
        except (ValueError, AttributeError):
            return
        if isinstance(query_id, str):
            with self._lock:
                session.last_query_id = query_id
                self._state.answers[query_id] = answer.body

    def _result(self, query_id: str) -> _Answer:
        """A query's answer again, as Snowflake serves it to any session of the user."""
        with self._lock:
            body = self._state.answers.get(query_id)
        if body is None:
            return _Answer.json(_failure("000709", f"Statement {query_id} not found"))
        return _Answer(200, body)

    def _credentials_ok(self, data: dict[str, Any]) -> bool:
        if data.get("ACCOUNT_NAME") != self.account:
            return False
        user = str(data.get("LOGIN_NAME") or "").upper()
        if user != self.user.upper() and user not in self.users:
            return False
        authenticator = str(data.get("AUTHENTICATOR") or "SNOWFLAKE").upper()
        if authenticator == "SNOWFLAKE_JWT":
            return (
                "PASSWORD" not in data and self._keypair_jwt_ok(data.get("TOKEN"), user) is not None
            )
        if authenticator == "SNOWFLAKE":
            return (
                user == self.user.upper()
                and self.password is not None
                and "TOKEN" not in data
                and data.get("PASSWORD") == self.password
            )
        return False

    def _keypair_jwt_ok(self, token: object, user: str | None = None) -> str | None:
        """The user a key-pair JWT signs in as, verified with that user's key; None if invalid.

        Like Snowflake: the user named in `sub` must carry the public key that
        signed, and `iss` must name that key's fingerprint.
        """
        user = (user or self._jwt_user(token) or "").upper()
        public_key = self.users.get(user) or (
            self.public_key if user == self.user.upper() else None
        )
        if public_key is None or not isinstance(token, str):
            return None
        try:
            if jws.extract_compact(token.encode()).protected.get("alg") != "RS256":
                return None
            claims = jwt.decode(token, RSAKey.import_key(public_key), ["RS256"]).claims
        except (JoseError, ValueError):
            return None
        qualified = f"{snowflake_account(self.account)}.{user}"
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        valid = (
            claims.get("iss") == f"{qualified}.{fingerprint(public_key)}"
            and claims.get("sub") == qualified
            and isinstance(iat, int)
            and isinstance(exp, int)
            and iat <= now + 60
            and exp > now
            and exp - iat <= 3600
        )
        return user if valid else None

    def _jwt_user(self, token: object) -> str | None:
        """The user part of an unverified JWT's `sub` (ACCOUNT.USER), to pick the key to check."""
        if not isinstance(token, str):
            return None
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return None
        subject = claims.get("sub") if isinstance(claims, dict) else None
        return subject.partition(".")[2] if isinstance(subject, str) else None

    def _renew(self, headers: dict[str, str], body: bytes) -> _Answer:
        master = _snowflake_token(headers) or ""
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
        with self._lock:
            current = self._state.masters.get(master)
            if current is None:
                return _Answer.json(_failure("390114", "Master token expired or invalid."))
            if request.get("oldSessionToken") != current:
                return _Answer.json(_failure("390104", "Old session token does not match."))
            old = self._state.sessions.pop(current)
            new_token = "ver:1-hint:strict-ST-" + secrets.token_urlsafe(24)
            self._state.sessions[new_token] = _Session(old.fakesnow_token, master, old.session_id)
            self._state.masters[master] = new_token
            self._state.issued.add(new_token)
            self._state.renewals += 1
        return _Answer.json(
            {
                "data": {
                    "sessionToken": new_token,
                    "validityInSecondsST": self.session_validity,
                    "masterToken": master,
                    "validityInSecondsMT": self.master_validity,
                    "sessionId": old.session_id,
                },
                "code": None,
                "message": None,
                "success": True,
            }
        )

    def _sql_api_partitioned(self, count: int, rows: int) -> _Answer:
        """Partition 0 inline, the others by `GET .../{handle}?partition=N`, as Snowflake does."""
        handle = str(uuid.uuid4())
        partitions = [
            [[str(number * rows + row), f"p{number}r{row}"] for row in range(rows)]
            for number in range(count)
        ]
        with self._lock:
            self._state.partitions[handle] = partitions
        info = [
            {"rowCount": rows, "uncompressedSize": len(json.dumps(part))} for part in partitions
        ]
        meta = {
            "numRows": rows * count,
            "format": "jsonv2",
            "rowType": [{"name": "N"}, {"name": "LABEL"}],
            "partitionInfo": info,
        }
        return _Answer.json(
            {
                "code": "090001",
                "message": "Statement executed successfully.",
                "statementHandle": handle,
                "resultSetMetaData": meta,
                "data": partitions[0],
            }
        )

    def _sql_api_partition(self, path: str) -> _Answer | None:
        """A partition of a partitioned statement's result; None for any other handle."""
        route, _, query = path.partition("?")
        handle = route.rstrip("/").rsplit("/", 1)[-1]
        number = urllib.parse.parse_qs(query).get("partition", ["0"])[0]
        with self._lock:
            partitions = self._state.partitions.get(handle)
        if partitions is None:
            return None
        if not number.isdigit() or int(number) >= len(partitions):
            return _Answer.json({"code": "000709", "message": "Partition not found."}, 404)
        return _Answer.json({"data": partitions[int(number)]})

    def _sql_api(self, method: str, headers: dict[str, str], body: bytes, path: str) -> _Answer:
        authorization = headers.get("Authorization", "")
        token_type = headers.get("X-Snowflake-Authorization-Token-Type", "")
        if (
            token_type.upper() != "KEYPAIR_JWT"
            or not authorization.startswith("Bearer ")
            or self._keypair_jwt_ok(authorization.removeprefix("Bearer ")) is None
        ):
            return _Answer.json(
                {"code": "390100", "message": "Incorrect username or password was specified."},
                status=401,
            )
        request = json.loads(body) if body.strip() else {}
        partition = self._sql_api_partition(path) if method == "GET" else None
        if partition is not None:
            return partition
        handle = path.split("?", 1)[0].rstrip("/").removeprefix("/api/v2/statements")
        if handle.strip("/").split("/", 1)[0] not in ("", SQL_API_HANDLE):
            # as Snowflake: a handle it never issued (a foreign id the gateway let through,
            # docs/identity.md), polled or cancelled
            return _Answer.json({"code": "000709", "message": "Statement not found."}, 404)
        marker = PARTITIONED.search(str(request.get("statement") or ""))
        if marker is not None:
            return self._sql_api_partitioned(int(marker.group(1)), int(marker.group(2)))
        return _Answer.json(
            {
                "code": "090001",
                "message": "Statement executed successfully.",
                "statementHandle": SQL_API_HANDLE,
                "resultSetMetaData": {"numRows": 1, "rowType": [{"name": "STATEMENT"}]},
                "data": [[request.get("statement"), request.get("role")]],
            }
        )

    def _forward(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        fakesnow_token: str | None,
    ) -> _Answer:
        forwarded = {
            k: v
            for k, v in headers.items()
            if k.lower()
            not in ("host", "authorization", "content-length", "content-encoding", "connection")
        }
        if fakesnow_token is not None:
            forwarded["Authorization"] = f'Snowflake Token="{fakesnow_token}"'
        connection = http.client.HTTPConnection(*self.fakesnow, timeout=60)
        try:
            connection.request(method, path, body if body else None, forwarded)
            response = connection.getresponse()
            content = response.read()
            return _Answer(
                response.status,
                content,
                response.getheader("Content-Type") or "application/json",
            )
        finally:
            connection.close()

    def _presigned(self, request: bytes, answer: dict[str, Any]) -> dict[str, Any]:
        """A GET marked `/*presigned:N*/` answered as on GCP: N pre-signed URLs, no keys.

        A PUT marked `/*presigned-put*/` likewise: `stageInfo.presignedUrl`, a
        URL signed for one PUT of its file, under a query id of its own.
        """
        sql = str(json.loads(request).get("sqlText") or "")
        if self.storage is None:
            return answer
        data = answer["data"]
        if PRESIGNED_PUT.search(sql):
            source = _PUT_SOURCE.search(sql)
            local = (source.group(1) or source.group(2)) if source else "file"
            name = local.rpartition("/")[2]
            data["queryId"] = f"01b2c3d4-0000-0000-0000-{uuid.uuid4().hex[:12]}"
            data["src_locations"] = [local]
            data["encryptionMaterial"] = {
                "queryStageMasterKey": UPLOAD_MASTER_KEY,
                "queryId": data["queryId"],
                "smkId": 1234,
            }
            url = self.storage.upload_url(f"stage/{data['queryId']}/{name}")
            data["stageInfo"].update(locationType="GCS", creds={}, presignedUrl=url)
            return answer
        marker = PRESIGNED.search(sql)
        if marker is None:
            return answer
        data["stageInfo"].update(locationType="GCS", creds={}, presignedUrl=None)
        data["presignedUrls"] = [
            self.storage.put(f"stage/{data['queryId']}/file_{index}.csv", STAGE_FILE % index, "")
            for index in range(int(marker.group(1)))
        ]
        return answer

    def _chunked(self, request: bytes, answer: _Answer) -> _Answer:
        """A result split the way Snowflake splits a large one, when the query asks for it."""
        try:
            marker = CHUNKED.search(json.loads(request).get("sqlText") or "")
            payload = json.loads(answer.body)
        except (ValueError, AttributeError):
            return answer
        data = payload.get("data") if isinstance(payload, dict) else None
        if marker is None or not isinstance(data, dict) or not payload.get("success"):
            return answer
        assert self.storage is not None
        chunk_count, result_format = int(marker.group(1)), marker.group(2)
        qrmk = base64.b64encode(secrets.token_bytes(32)).decode()
        if marker.group(3):
            return _Answer.json(self._synthetic(payload, chunk_count, int(marker.group(3)), qrmk))
        table = _arrow_table(data)
        if chunk_count == 0:
            data.pop("rowsetBase64", None)
            rows = _json_rows(table) if result_format == "json" else None
            data.update(
                rowset=rows,
                queryResultFormat=result_format,
                total=table.num_rows,
                returned=table.num_rows,
            )
            if rows is None:
                data["rowsetBase64"] = base64.b64encode(_arrow_bytes(table)).decode()
            return _Answer.json(payload)
        inline_rows = 0 if marker.group(4) else INLINE_ROWS
        inline, rest = table.slice(0, inline_rows), table.slice(inline_rows)
        step = -(-rest.num_rows // chunk_count)
        chunks = []
        for index in range(chunk_count):
            piece = rest.slice(index * step, step)
            name = f"{data.get('queryId')}/{result_format}_{index}"
            if result_format == "json":
                raw = json.dumps(_json_rows(piece))[1:-1].encode()
                stored = gzip.compress(raw)
                # Node parses a body labelled JSON as one document, which rows are not
                label = "application/octet-stream" if marker.group(4) else "application/json"
                url = self.storage.put(
                    name, stored, qrmk, content_type=label, content_encoding="gzip"
                )
            else:
                raw = _arrow_bytes(piece)
                stored = gzip.compress(raw)
                url = self.storage.put(name, stored, qrmk)
            chunks.append(
                {
                    "url": url,
                    "rowCount": piece.num_rows,
                    "uncompressedSize": len(raw),
                    "compressedSize": len(stored),
                }
            )
        data.pop("rowsetBase64", None)
        data.pop("rowset", None)
        if result_format == "json":
            data["rowset"] = _json_rows(inline)
        else:
            data["rowsetBase64"] = base64.b64encode(_arrow_bytes(inline)).decode()
        data.update(
            queryResultFormat=result_format,
            total=table.num_rows,
            returned=table.num_rows if marker.group(4) else inline.num_rows,
            chunks=chunks,
            qrmk=qrmk,
        )
        return _Answer.json(payload)

    def _synthetic(
        self, payload: dict[str, Any], chunk_count: int, size: int, qrmk: str
    ) -> dict[str, Any]:
        """N chunks of one shared synthetic blob of JSON rows: the answer keeps its inline rows."""
        assert self.storage is not None
        raw, stored, rows = _synthetic_blob(size)
        data = payload["data"]
        chunks = [
            {
                "url": self.storage.put(
                    f"{data.get('queryId')}/synthetic_{index}",
                    stored,
                    qrmk,
                    content_type="application/json",
                    content_encoding="gzip",
                ),
                "rowCount": rows,
                "uncompressedSize": raw,
                "compressedSize": len(stored),
            }
            for index in range(chunk_count)
        ]
        data.update(queryResultFormat="json", chunks=chunks, qrmk=qrmk)
        data["total"] = int(data.get("total") or 0) + rows * chunk_count
        return payload


@functools.cache
def _synthetic_blob(size: int) -> tuple[int, bytes, int]:
    """About `size` bytes of rows that compress as real data does (about 2:1): sizes and rows."""
    row = 43  # one row's bytes, comma included
    rows = max(1, size // row)
    text = secrets.token_hex(rows * 29 // 2 + 1)
    raw = ",".join(f'["{i % 1000000:06d}","{text[i * 29 : i * 29 + 29]}"]' for i in range(rows))
    encoded = raw.encode()
    return len(encoded), gzip.compress(encoded, compresslevel=1), rows


def _file_transfer(body: bytes) -> bool:
    try:
        sql = str(json.loads(body).get("sqlText") or "")
    except (ValueError, AttributeError):
        return False
    return sql.lstrip().lower().startswith(("put ", "get "))


def _stage_answer(body: bytes) -> dict[str, Any]:
    """Snowflake's answer to PUT/GET: where the stage is and the keys to reach it."""
    upload = str(json.loads(body).get("sqlText")).lstrip().lower().startswith("put ")
    return {
        "data": {
            "command": "UPLOAD" if upload else "DOWNLOAD",
            "src_locations": ["/tmp/data.csv"],
            "parallel": 4,
            "autoCompress": True,
            "sourceCompression": "auto_detect",
            "overwrite": False,
            "stageInfo": {
                "locationType": "S3",
                "location": "strict-stage-bucket/stages/abc/",
                "path": "stages/abc/",
                "region": "us-west-2",
                "endPoint": None,
                "creds": dict(STAGE_CREDENTIALS),
            },
            "encryptionMaterial": {
                "queryStageMasterKey": STAGE_MASTER_KEY,
                "queryId": "01b2c3d4-0000-0000-0000-00000000feed",
                "smkId": 1234,
            },
            "queryId": "01b2c3d4-0000-0000-0000-00000000feed",
        },
        "code": None,
        "message": None,
        "success": True,
    }


def _arrow_table(data: dict[str, Any]) -> Any:
    """The whole result as a pyarrow table, whichever format fakesnow answered in."""
    if data.get("rowsetBase64"):
        return pyarrow.ipc.open_stream(base64.b64decode(data["rowsetBase64"])).read_all()
    names = [column["name"] for column in data["rowtype"]]
    rows = data.get("rowset") or []
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})


def _arrow_bytes(table: Any) -> bytes:
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _json_rows(table: Any) -> list[list[str | None]]:
    """Snowflake's JSON rowset: every value as text (the tests chunk integer and text columns)."""
    columns = table.to_pydict()
    names = list(columns)
    return [
        [None if columns[n][i] is None else str(columns[n][i]) for n in names]
        for i in range(table.num_rows)
    ]


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200) -> _Answer:
        return cls(status, json.dumps(payload).encode())


_RESULT_ROUTE = re.compile(r"/queries/[0-9a-fA-F-]{36}/result")


def _failure(code: str, message: str) -> dict[str, Any]:
    return {
        "data": {"errorCode": code, "sqlState": "08001"},
        "code": code,
        "message": message,
        "success": False,
        "headers": None,
    }


_ALTER_QUERY_TAG = re.compile(
    r"^\s*alter\s+session\s+(?P<verb>set|unset)\s+query_tag\s*(?:=\s*(?P<value>'.*'))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


_LAST_QUERY_ID = re.compile(r"last_query_id\s*\(\s*\)", re.IGNORECASE)


def _sql_string(literal: str | None) -> str | None:
    """A Snowflake string literal's value: '' and backslash escapes undone."""
    if literal is None:
        return None
    return re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", literal[1:-1])


def _snowflake_token(headers: dict[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    prefix, suffix = 'Snowflake Token="', '"'
    if value.startswith(prefix) and value.endswith(suffix):
        return value[len(prefix) : -len(suffix)]
    return None


def _canonical_header(name: str) -> str:
    """`authorization` and `Authorization` alike: clients differ in header case."""
    return "-".join(part.capitalize() for part in name.split("-"))


def contains_any(received: Iterable[Received], needles: Iterable[str]) -> list[str]:
    """The needles found anywhere in the received requests (headers or bodies)."""
    haystack = "\n".join(r.text() for r in received)
    return [needle for needle in needles if needle and needle in haystack]
