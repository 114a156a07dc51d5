"""Secret references: where the gateway and the replay tool read credentials from.

A reference names a place, never the secret itself, so option values and
command lines can be logged safely:

- ``env:NAME``: the environment variable NAME;
- ``file:/path``: the file's content (trailing newline removed);
- ``aws-secretsmanager:NAME_OR_ARN``: the secret's SecretString (or SecretBinary)
  from AWS Secrets Manager through boto3 (endpoint, region and credentials come
  from the usual AWS environment, e.g. ``AWS_ENDPOINT_URL_SECRETS_MANAGER``).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("env", "file", "aws-secretsmanager")
TOKEN_KEY_BYTES = 32


class SecretError(ValueError):
    """A reference that is malformed or cannot be read; the message never holds the secret."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    scheme: str
    name: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.name}"


def parse_secret_ref(text: str) -> SecretRef:
    scheme, sep, name = text.partition(":")
    if not sep or scheme not in SCHEMES or not name:
        # never echo the text: a mistaken operator may have pasted the secret itself
        raise SecretError(
            "not a secret reference; use env:NAME, file:/path or aws-secretsmanager:NAME_OR_ARN"
        )
    return SecretRef(scheme, name)


def resolve_secret(ref: SecretRef | str) -> bytes:
    """Read the secret a reference names. Blocking: call it at start-up or in a thread."""
    if isinstance(ref, str):
        ref = parse_secret_ref(ref)
    if ref.scheme == "env":
        value = os.environ.get(ref.name)
        if value is None:
            raise SecretError(f"environment variable {ref.name} is not set")
        if not value:
            raise SecretError(f"environment variable {ref.name} is empty")
        return value.encode()
    if ref.scheme == "file":
        try:
            data = Path(ref.name).read_bytes()
        except OSError as exc:
            raise SecretError(f"cannot read {ref.name}: {exc.strerror}") from None
        data = data.rstrip(b"\r\n")
        if not data:
            raise SecretError(f"{ref.name} is empty")
        return data
    return _from_secrets_manager(ref.name)


def _from_secrets_manager(secret_id: str) -> bytes:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretError(f"AWS Secrets Manager refused {secret_id}: {code}") from None
    except BotoCoreError as exc:
        raise SecretError(f"AWS Secrets Manager unreachable for {secret_id}: {exc}") from None
    if "SecretString" in answer:
        return answer["SecretString"].encode()
    return bytes(answer["SecretBinary"])


def new_token_key() -> str:
    """A fresh value for the gateway's token key: 32 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(os.urandom(TOKEN_KEY_BYTES)).rstrip(b"=").decode()
