"""Start the real components of a hoopgw stack as processes on loopback ports.

Used by the test fixtures (tests/conftest.py) and by the demo (scripts/demo.py),
so a person and the test suite run the very same stack: fakesnow as the
Snowflake upstream, moto's S3 server, oidc-provider-mock as the identity
provider, and `mitmdump -s addons/gateway.py` in reverse-proxy mode.

The servers the tests write themselves (a strict Snowflake front, faulty and
shaping upstreams, an OIDC issuer, a balancer) share one base here,
`LoopbackServer`, with `read_body`, `forward` and `send_answer` for their handlers.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_SCRIPT = REPO_ROOT / "addons" / "gateway.py"
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
READY_LINE = "hoopgw: gateway ready"


class StartupError(RuntimeError):
    """A component did not become ready; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class LoopbackServer:
    """A threaded HTTP/1.1 server on a free loopback port, written by a test.

    The upstreams, issuers and balancers the tests write themselves subclass
    this and implement `serve`, which gets every request (GET, POST, PUT,
    DELETE) and writes its answer; `start`, `stop`, `port` and `url` are here.
    """

    _server: ThreadingHTTPServer | None = None

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        serve = self.serve

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                serve(self)

            do_GET = do_PUT = do_DELETE = do_CONNECT = do_POST

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body a loopback server received, gunzipped when the client gzipped it."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    if handler.headers.get("Content-Encoding", "").lower() == "gzip" and body:
        body = gzip.decompress(body)
    return body


def forward(upstream: str, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes, str]:
    """Send a request a loopback server received on to `upstream`: status, body, content type."""
    parsed = urllib.parse.urlsplit(upstream)
    headers = {
        name: value
        for name, value in handler.headers.items()
        if name.lower() not in ("host", "content-length", "content-encoding", "connection")
    }
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        connection.request(handler.command, handler.path, body or None, headers)
        answer = connection.getresponse()
        return answer.status, answer.read(), answer.getheader("Content-Type") or ""
    finally:
        connection.close()


def send_answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    content: bytes,
    content_type: str,
    encoding: str | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    if encoding:
        handler.send_header("Content-Encoding", encoding)
    handler.send_header("Content-Length", str(len(content)))
    handler.end_headers()
    handler.wfile.write(content)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass
class Proc:
    """A component running as a child process, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `ready()`; a process that does not get there (or whose wait is
        interrupted, by Ctrl-C or a bench's SIGTERM) is stopped, as no caller holds it yet."""
        try:
            self._wait_ready(ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        def check() -> bool:
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited with status {self.process and self.process.returncode}"
                    f" before it was ready; its log ends:\n{self.log()[-3000:]}"
                )
            return ready()

        try:
            wait_until(check, timeout, f"{self.name} to be ready")
        except TimeoutError as exc:
            raise StartupError(f"{exc}; its log ends:\n{self.log()[-3000:]}") from None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown hook runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def start_fakesnow(workdir: Path, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    proc = Proc(
        "fakesnow",
        [str(BIN / "fakesnow"), "-s", "--host", LOOPBACK, "-p", str(port)],
        workdir / f"fakesnow-{port}.log",
        cwd=workdir,
    ).start()
    proc.wait_ready(lambda: port_open(port))
    return proc, f"http://{LOOPBACK}:{port}"


def start_moto(workdir: Path, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    proc = Proc(
        "moto_server",
        [str(BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)],
        workdir / f"moto-{port}.log",
        cwd=workdir,
    ).start()
    url = f"http://{LOOPBACK}:{port}"
    proc.wait_ready(lambda: _http_ok(LOOPBACK, port, "/moto-api/data.json"))
    return proc, url


def start_oidc(workdir: Path, port: int | None = None) -> tuple[Proc, OidcProvider]:
    port = port or free_port()
    proc = Proc(
        "oidc-provider-mock",
        [str(BIN / "oidc-provider-mock"), "-H", LOOPBACK, "-p", str(port)],
        workdir / f"oidc-{port}.log",
        cwd=workdir,
    ).start()
    proc.wait_ready(lambda: _http_ok(LOOPBACK, port, "/.well-known/openid-configuration"))
    return proc, OidcProvider(f"http://{LOOPBACK}:{port}")


def _http_ok(host: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status < 500
        conn.close()
        return ok
    except OSError:
        return False


@dataclass(frozen=True)
class OidcProvider:
    """oidc-provider-mock, driven without a browser through its authorization-code endpoints."""

    issuer: str
    redirect_uri: str = "http://127.0.0.1/callback"

    def _connection(self) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(self.issuer)
        return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)

    def mint(
        self,
        subject: str,
        groups: Sequence[str] | None = ("agents",),
        *,
        email: str | None = None,
        audience: str = "hoopgw",
        **claims: object,
    ) -> str:
        """A real ID token for `subject`; `groups=None` leaves the groups claim out."""
        user_claims: dict[str, object] = {"email": email or f"{subject}@example.com", **claims}
        if groups is not None:
            user_claims["groups"] = list(groups)
        conn = self._connection()
        try:
            conn.request(
                "PUT",
                f"/users/{urllib.parse.quote(subject, safe='')}",
                json.dumps(user_claims),
                {"Content-Type": "application/json"},
            )
            _expect(conn.getresponse(), 204, "store the user")
            query = urllib.parse.urlencode(
                {
                    "client_id": audience,
                    "redirect_uri": self.redirect_uri,
                    "response_type": "code",
                    "scope": "openid email profile",
                    "state": "hoopgw",
                }
            )
            conn.request(
                "POST",
                f"/oauth2/authorize?{query}",
                urllib.parse.urlencode({"sub": subject}),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            answer = conn.getresponse()
            answer.read()
            location = answer.getheader("Location") or ""
            code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("code")
            if answer.status != 302 or not code:
                raise StartupError(f"the identity provider issued no code ({answer.status})")
            conn.request(
                "POST",
                "/oauth2/token",
                urllib.parse.urlencode(
                    {
                        "grant_type": "authorization_code",
                        "code": code[0],
                        "redirect_uri": self.redirect_uri,
                        "client_id": audience,
                    }
                ),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            tokens = json.loads(_expect(conn.getresponse(), 200, "issue the token"))
            return tokens["id_token"]
        finally:
            conn.close()


def _expect(response: http.client.HTTPResponse, status: int, what: str) -> bytes:
    body = response.read()
    if response.status != status:
        raise StartupError(f"the identity provider did not {what}: HTTP {response.status}")
    return body


@dataclass
class Gateway:
    proc: Proc
    port: int
    protocol: str
    workdir: Path
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> int | None:
        return self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()


def embedded_gateway_options(
    issuer: str, password_env: str
) -> dict[str, str | int | bool | Sequence[str]]:
    """Identity options for a gateway in front of fakesnow with a local IdP (tests and demo)."""
    return {
        "hoopgw_oidc_issuer": issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": ["agents", "readers"],
        "hoopgw_role_map": ["agents=AGENT", "readers=READER"],
        "hoopgw_upstream_account": "fakesnow",
        "hoopgw_upstream_user": "HOOPGW_SVC",
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_password": f"env:{password_env}",
    }


def gateway_argv(
    upstream: str,
    port: int,
    options: Mapping[str, str | int | bool | Sequence[str]],
    *,
    confdir: Path,
    certs: Path | None = None,
    listen_host: str = LOOPBACK,
    extra_scripts: Sequence[Path] = (),
    script: Path = GATEWAY_SCRIPT,
    run_under: Sequence[str] = (),
) -> list[str]:
    """The mitmdump command line for a gateway in front of `upstream`, after `run_under`
    (e.g. valgrind's, for scripts/bench_instructions.py)."""
    argv = [
        *run_under,
        str(BIN / "mitmdump"),
        "-s",
        str(script),
        *(arg for extra in extra_scripts for arg in ("-s", str(extra))),
        "--mode",
        f"reverse:{upstream}@{port}",
        "--listen-host",
        listen_host,
        "--set",
        f"confdir={confdir}",
        "--set",
        "termlog_verbosity=info",
        "--set",
        "flow_detail=0",
    ]
    if certs is not None:
        argv += ["--certs", f"*={certs}"]
    for name, value in options.items():
        values = [value] if isinstance(value, str | int | bool) else list(value)
        if not values:
            argv += ["--set", f"{name}="]
        for item in values:
            text = str(item).lower() if isinstance(item, bool) else str(item)
            argv += ["--set", f"{name}={text}"]
    return argv


def start_gateway(
    workdir: Path,
    upstream: str,
    options: Mapping[str, str | int | bool | Sequence[str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    certs: Path | None = None,
    port: int | None = None,
    timeout: float = 30.0,
    extra_scripts: Sequence[Path] = (),
    script: Path = GATEWAY_SCRIPT,
    run_under: Sequence[str] = (),
) -> Gateway:
    """Start `mitmdump -s addons/gateway.py` and wait until the gateway says it is ready."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    confdir = workdir / "mitmproxy"
    argv = gateway_argv(
        upstream,
        port,
        options or {},
        confdir=confdir,
        certs=certs,
        extra_scripts=extra_scripts,
        script=script,
        run_under=run_under,
    )
    proc = Proc(
        "gateway",
        argv,
        workdir / f"gateway-{port}.log",
        env={**os.environ, **(env or {})},
        cwd=workdir,
    ).start()
    proc.wait_ready(lambda: READY_LINE in proc.log() and port_open(port), timeout)
    return Gateway(proc, port, "https" if certs else "http", workdir)
