"""The gateway's upstream credential: key-pair JWTs as Snowflake checks them, secret references."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws, jwt
from joserfc.jwk import RSAKey
from mitmproxy import exceptions
from mitmproxy.test import taddons
from snowflake.connector.auth import AuthByKeyPair

from hoopgw.addons.credentials import (
    KeyPairCredential,
    OAuthCredential,
    PasswordCredential,
    UpstreamCredentials,
    keypair_jwt,
    snowflake_account_identifier,
)
from hoopgw.recorder.upstream_users import load_private_key, public_key_fingerprint
from tests import strict_upstream

PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt=None, password=None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, fmt or serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ("xy12345", "XY12345"),
        ("xy12345.eu-west-1", "XY12345"),
        ("xy12345.us-east-2.aws", "XY12345"),
        ("myorg-myaccount", "MYORG-MYACCOUNT"),
        ("xy12345-abc.global", "XY12345"),
    ],
)
def test_account_is_normalised_like_snowflake_and_its_connector(account, expected) -> None:
    assert snowflake_account_identifier(account) == expected
    assert strict_upstream.snowflake_account(account) == expected


def test_fingerprint_matches_the_snowflake_connector(rsa_key) -> None:
    assert public_key_fingerprint(rsa_key) == AuthByKeyPair.calculate_public_key_fingerprint(
        rsa_key
    )


def test_keypair_jwt_claims_and_signature(rsa_key) -> None:
    token = keypair_jwt("xy12345.eu-west-1", "svc_hoopgw", rsa_key, now=1_700_000_000)
    assert jws.extract_compact(token.encode()).protected["alg"] == "RS256"
    claims = jwt.decode(token, RSAKey.import_key(rsa_key.public_key()), ["RS256"]).claims
    assert claims == {
        "iss": f"XY12345.SVC_HOOPGW.{public_key_fingerprint(rsa_key)}",
        "sub": "XY12345.SVC_HOOPGW",
        "iat": 1_700_000_000,
        "exp": 1_700_000_060,
    }
    with pytest.raises(ValueError, match="at most one hour"):
        keypair_jwt("a", "b", rsa_key, lifetime=3601)


def test_private_key_formats(rsa_key) -> None:
    public = public_key_fingerprint(rsa_key)
    der = rsa_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for data, passphrase in [
        (pem(rsa_key), None),
        (pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL), None),
        (pem(rsa_key, password=b"s3cret"), b"s3cret"),
        (base64.b64encode(der), None),
    ]:
        assert public_key_fingerprint(load_private_key(data, passphrase)) == public


@pytest.mark.parametrize(
    ("make", "passphrase", "reason"),
    [
        (
            lambda k: pem(k, password=b"s3cret"),
            None,
            "needs hoopgw_upstream_private_key_passphrase",
        ),
        (lambda k: pem(k, password=b"s3cret"), b"wrong", "not a readable private key"),
        (lambda k: pem(ec.generate_private_key(ec.SECP256R1())), None, "needs an RSA key"),
        (
            lambda k: pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            None,
            "requires 2048 or more",
        ),
        (
            lambda k: b"-----BEGIN PRIVATE KEY-----\nMIIgarbage\n-----END PRIVATE KEY-----",
            None,
            "not a readable",
        ),
    ],
)
def test_unusable_private_keys_are_explained_without_the_key(
    rsa_key, make, passphrase, reason
) -> None:
    data = make(rsa_key)
    with pytest.raises(ValueError) as failure:
        load_private_key(data, passphrase)
    assert reason in str(failure.value)
    assert data.decode()[40:80] not in str(failure.value)


def test_credentials_never_show_in_reprs(rsa_key) -> None:
    for credential in (
        PasswordCredential(PASSWORD),
        OAuthCredential(PASSWORD),
        KeyPairCredential(rsa_key),
    ):
        assert PASSWORD not in repr(credential)
        assert "BEGIN" not in repr(credential)


def configure(addon: UpstreamCredentials, **options: object) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options)


def test_password_from_a_file_and_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key
) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD + "\n")
    credentials = UpstreamCredentials()
    configure(
        credentials,
        hoopgw_upstream_account="xy12345",
        hoopgw_upstream_user="svc",
        hoopgw_upstream_password=f"file:{secret_file}",
    )
    assert credentials.missing() == []
    assert credentials.login_fields() == {
        "ACCOUNT_NAME": "xy12345",
        "LOGIN_NAME": "svc",
        "AUTHENTICATOR": "SNOWFLAKE",
        "PASSWORD": PASSWORD,
    }
    assert credentials.sql_api_authorization() is None

    monkeypatch.setenv("HOOPGW_TEST_KEY", pem(rsa_key).decode())
    keyed = UpstreamCredentials()
    configure(
        keyed,
        hoopgw_upstream_account="xy12345",
        hoopgw_upstream_user="svc",
        hoopgw_upstream_private_key="env:HOOPGW_TEST_KEY",
    )
    fields = keyed.login_fields()
    assert fields["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
    assert "PASSWORD" not in fields
    header, token_type = keyed.sql_api_authorization() or ("", "")
    assert header.startswith("Bearer ") and token_type == "KEYPAIR_JWT"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {
                "hoopgw_upstream_password": "env:HOOPGW_TEST_PASSWORD",
                "hoopgw_upstream_oauth_token": "env:X",
            },
            "set only one upstream credential, not hoopgw_upstream_password and "
            "hoopgw_upstream_oauth_token",
        ),
        (
            {"hoopgw_upstream_password": "env:HOOPGW_TEST_UNSET"},
            "hoopgw_upstream_password: environment variable HOOPGW_TEST_UNSET is not set",
        ),
        (
            {"hoopgw_upstream_password": PASSWORD},
            "hoopgw_upstream_password is not a secret reference",
        ),
        (
            {"hoopgw_upstream_private_key": "env:HOOPGW_TEST_PASSWORD"},
            "hoopgw_upstream_private_key: not a readable private key",
        ),
        (
            {"hoopgw_upstream_private_key": "file:/nonexistent/key.p8"},
            "hoopgw_upstream_private_key: cannot read /nonexistent/key.p8",
        ),
        (
            {
                "hoopgw_upstream_password": "env:HOOPGW_TEST_PASSWORD",
                "hoopgw_upstream_private_key_passphrase": "env:X",
            },
            "passphrase is set without hoopgw_upstream_private_key",
        ),
        ({"hoopgw_upstream_user": "two words"}, "hoopgw_upstream_user: 'two words' is not"),
    ],
)
def test_bad_credential_options_name_the_option_not_the_secret(
    options: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOPGW_TEST_PASSWORD", PASSWORD)
    with pytest.raises(exceptions.OptionsError) as failure:
        configure(UpstreamCredentials(), **options)
    assert message in str(failure.value)
    assert PASSWORD not in str(failure.value)


def test_aws_secrets_manager_reference_resolves_against_moto(
    moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_s3)
    name = f"hoopgw/test/{uuid.uuid4().hex}"
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=PASSWORD)
    credentials = UpstreamCredentials()
    configure(
        credentials,
        hoopgw_upstream_account="xy12345",
        hoopgw_upstream_user="svc",
        hoopgw_upstream_password=f"aws-secretsmanager:{name}",
    )
    assert credentials.login_fields()["PASSWORD"] == PASSWORD

    with pytest.raises(exceptions.OptionsError) as failure:
        configure(
            UpstreamCredentials(),
            hoopgw_upstream_password=f"aws-secretsmanager:{name}-missing",
        )
    assert "hoopgw_upstream_password: AWS Secrets Manager refused" in str(failure.value)
    assert "ResourceNotFoundException" in str(failure.value)
