"""What the tests send and configure in more than one file: driver request bodies, policies, keys.

`login_body` is the JSON a Snowflake driver posts to /session/v1/login-request
when it signs in with an identity provider's token (authenticator=oauth);
`GUARDRAILS_POLICY` is the policy file of the guardrails tests (docs/policy.md);
`write_service_key` makes the gateway's own key-pair credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.strict_upstream import StrictUpstream


def login_body(token: object, **fields: Any) -> dict[str, Any]:
    """A driver's login with `token` as its OAuth token; `fields` replace or add `data` fields."""
    return {
        "data": {
            "ACCOUNT_NAME": "hoopgw",
            "LOGIN_NAME": "agent",
            "AUTHENTICATOR": "OAUTH",
            "TOKEN": token,
            "CLIENT_APP_ID": "PythonConnector",
            "CLIENT_APP_VERSION": "4.8.1",
            "SESSION_PARAMETERS": {},
            **fields,
        }
    }


def query_body(sql: str, **fields: Any) -> dict[str, Any]:
    """A driver's query-request for `sql`."""
    return {"sqlText": sql, "sequenceId": 1, **fields}


GUARDRAILS_POLICY = """
[[rule]]
name = "readers-read-only"
groups = ["readers"]
read_only = true

[[rule]]
name = "agents-guard"
groups = ["agents"]
deny_kinds = ["DROP", "TRUNCATE", "GRANT", "REVOKE"]
deny_objects = ["*.PAYROLL.*", "*.APP.SECRETS"]
require_where = true

[[rule]]
name = "tolerant-parse"
groups = ["tolerant"]
deny_kinds = ["DROP"]
on_unparsable = "allow"
"""


def write_service_key(path: Path) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A new RSA key for the gateway's key-pair login, written to `path` as PKCS#8 PEM (0600)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return key, pem


def key_pair_upstream(fakesnow_url: str, key_path: Path, account: str, user: str) -> StrictUpstream:
    """A started strict upstream that accepts the key-pair JWT of the key at `key_path`."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    return StrictUpstream(fakesnow_url, account, user, public_key=key.public_key()).start()  # type: ignore[arg-type, union-attr]


def key_pair_gateway_options(
    *,
    account: str,
    user: str,
    service_key: Path,
    groups: list[str],
    token_key_env: str,
    policy: Path | None = None,
) -> dict[str, Any]:
    """Gateway options for a key-pair login as `user`, each group mapped to its upper-cased role."""
    options: dict[str, Any] = {
        "hoopgw_allowed_groups": groups,
        "hoopgw_role_map": [f"{group}={group.upper()}" for group in groups],
        "hoopgw_upstream_account": account,
        "hoopgw_upstream_user": user,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{service_key}",
        "hoopgw_upstream_password": "",
        "hoopgw_token_key": f"env:{token_key_env}",
    }
    if policy is not None:
        options["hoopgw_policy"] = str(policy)
    return options
