"""The test rig: real components on loopback ports, started once per test session.

Fixtures
- `fakesnow_server`: the Snowflake upstream (`fakesnow -s`); `.url`, `.port`.
- `moto_s3`: moto's S3 server endpoint URL; AWS test credentials are in os.environ.
- `oidc`: oidc-provider-mock; `.issuer`, `.mint(subject, groups=[...]) -> ID token`.
- `gateway_options`: the options every test gateway gets unless a test overrides them.
- `gateway_factory`: starts `mitmdump -s addons/gateway.py` in reverse mode; torn down at the end.
- `gateway`: one shared gateway in front of fakesnow with the default options.
- `connect`: opens snowflake-connector-python connections through a gateway (or directly).
- `tls`: a throw-away CA and server certificate for the https tests.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from tests import stack
from tests.strict_upstream import StrictUpstream

pytest_plugins = ("tests.storage_fixtures",)

GatewayOptions = dict[str, str | int | bool | Sequence[str]]

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
UPSTREAM_PASSWORD_ENV = "HOOPGW_TEST_UPSTREAM_PASSWORD"
UPSTREAM_TEST_PASSWORD = "gateway-only-upstream-secret"


@dataclass(frozen=True)
class Upstream:
    url: str
    port: int
    proc: stack.Proc


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rig")


@pytest.fixture(scope="session", autouse=True)
def _aws_test_environment() -> Iterator[None]:
    """boto3 in the tests and in every gateway talks to moto, never to AWS."""
    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _sdk_logger_levels() -> Iterator[None]:
    """Each test starts with the AWS SDK loggers' levels as the process had them.

    `S3Store` quiets the SDK's debug records for mitmproxy's DEBUG root logger
    (recorder/store.py); a level one test's store set would otherwise make the
    SDK log in a later test, whose taddons master may have closed its loop.
    """
    loggers = [logging.getLogger(name) for name in ("boto3", "botocore", "s3transfer", "urllib3")]
    levels = [sdk_logger.level for sdk_logger in loggers]
    yield
    for sdk_logger, level in zip(loggers, levels, strict=True):
        sdk_logger.setLevel(level)


@pytest.fixture(scope="session")
def fakesnow_server(workdir: Path) -> Iterator[Upstream]:
    proc, url = stack.start_fakesnow(workdir)
    yield Upstream(url, int(url.rsplit(":", 1)[1]), proc)
    proc.stop()


@pytest.fixture(scope="session")
def moto_s3(workdir: Path) -> Iterator[str]:
    proc, url = stack.start_moto(workdir)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def oidc(workdir: Path) -> Iterator[stack.OidcProvider]:
    proc, provider = stack.start_oidc(workdir)
    yield provider
    proc.stop()


@pytest.fixture(scope="session")
def gateway_options(oidc: stack.OidcProvider) -> GatewayOptions:
    """Defaults for every test gateway; a test passes overrides to `gateway_factory`.

    Callers in `agents` or `readers` may log in; the gateway logs in to fakesnow
    as its own service user with a password only the gateway process holds.
    """
    return stack.embedded_gateway_options(oidc.issuer, UPSTREAM_PASSWORD_ENV)


class GatewayFactory:
    def __init__(self, workdir: Path, defaults: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.defaults = defaults
        self.started: list[stack.Gateway] = []

    def __call__(
        self,
        upstream: str,
        options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        certs: Path | None = None,
        name: str | None = None,
        extra_scripts: Sequence[Path] = (),
    ) -> stack.Gateway:
        home = self.workdir / (name or f"gateway-{uuid.uuid4().hex[:8]}")
        merged = {
            "hoopgw_store": f"file:{home / 'store'}",
            "hoopgw_spool_dir": str(home / "spool"),
            **self.defaults,
            **(options or {}),
        }
        environment = {UPSTREAM_PASSWORD_ENV: UPSTREAM_TEST_PASSWORD, **(env or {})}
        gateway = stack.start_gateway(
            home, upstream, merged, env=environment, certs=certs, extra_scripts=extra_scripts
        )
        self.started.append(gateway)
        return gateway

    def close(self) -> None:
        for gateway in self.started:
            gateway.stop()


@pytest.fixture(scope="session")
def gateway_factory(workdir: Path, gateway_options: GatewayOptions) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(workdir, gateway_options)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def strict(fakesnow_server: Upstream) -> Iterator[StrictUpstream]:
    """A strict upstream in front of fakesnow that takes only the gateway's password.

    Modules whose gateway logs in another way define their own `strict`."""
    upstream = StrictUpstream(
        fakesnow_server.url, "fakesnow", "HOOPGW_SVC", password=UPSTREAM_TEST_PASSWORD
    ).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def service_key(workdir: Path, request: pytest.FixtureRequest) -> Path:
    """The gateway's key-pair login key for a module's gateway (PKCS#8 PEM, 0600)."""
    from tests.bodies import write_service_key

    path = workdir / f"{request.module.__name__.rpartition('.')[2]}-{uuid.uuid4().hex[:6]}.p8"
    write_service_key(path)
    return path


@pytest.fixture(scope="module")
def key_pair_strict(
    fakesnow_server: Upstream, service_key: Path, request: pytest.FixtureRequest
) -> Iterator[StrictUpstream]:
    """A strict upstream taking the key-pair JWT of `service_key` for the module's
    `ACCOUNT` and `SERVICE_USER`."""
    from tests.bodies import key_pair_upstream

    module = request.module
    upstream = key_pair_upstream(
        fakesnow_server.url, service_key, module.ACCOUNT, module.SERVICE_USER
    )
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def gateway(gateway_factory: GatewayFactory, fakesnow_server: Upstream) -> stack.Gateway:
    return gateway_factory(fakesnow_server.url, name="shared-gateway")


Connect = Callable[..., snowflake.connector.SnowflakeConnection]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """`connect(target, token=None, **kwargs)`: target is a Gateway, an Upstream or a URL."""
    opened: list[snowflake.connector.SnowflakeConnection] = []

    def _connect(target: Any, token: str | None = None, **kwargs: Any):
        url = target.url if hasattr(target, "url") else str(target)
        protocol, rest = url.split("://", 1)
        host, port = rest.rsplit(":", 1)
        params: dict[str, Any] = {
            "account": "hoopgw",
            "user": "agent",
            "host": host,
            "port": int(port),
            "protocol": protocol,
            "paramstyle": "qmark",
            "login_timeout": 30,
            "network_timeout": 60,
        }
        if token is not None:
            params.update(authenticator="oauth", token=token)
        else:
            params["password"] = "unused-by-fakesnow"
        params.update(kwargs)
        connection = snowflake.connector.connect(**params)
        opened.append(connection)
        return connection

    yield _connect
    for connection in opened:
        # a test may have broken its connection on purpose
        with contextlib.suppress(Exception):
            connection.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Snowflake object names that no other test uses (fakesnow is shared)."""
    return lambda prefix: f"{prefix}_{uuid.uuid4().hex[:10]}".upper()


@dataclass(frozen=True)
class TlsMaterial:
    ca_bundle: Path
    server_pem: Path


@pytest.fixture(scope="session")
def tls(workdir: Path) -> TlsMaterial:
    """A CA and a server certificate for 127.0.0.1/localhost, as mitmproxy's --certs wants."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoopgw test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = workdir / "tls"
    folder.mkdir(exist_ok=True)
    ca_bundle = folder / "ca.pem"
    ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_pem = folder / "server.pem"
    server_pem.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + server_cert.public_bytes(serialization.Encoding.PEM)
    )
    return TlsMaterial(ca_bundle, server_pem)


@pytest.fixture
def s3_bucket(moto_s3: str) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"hoopgw-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=name)
    return name


@pytest.fixture
def agent_token(oidc: stack.OidcProvider) -> str:
    """An ID token for a caller in the `agents` group, for `connect(gateway, agent_token)`."""
    return oidc.mint("agent-1", ["agents"], email="agent-1@example.com")
