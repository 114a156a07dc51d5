"""`hoopgw upstream-keys`: the statements that register the gateway's public key on each user."""

from __future__ import annotations

import base64
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from hoopgw.cli.main import main
from tests.bodies import write_service_key


def test_statements_for_mapped_and_named_users(tmp_path: Path) -> None:
    key, _ = write_service_key(tmp_path / "upstream.p8")
    result = CliRunner().invoke(
        main,
        [
            "upstream-keys",
            "--private-key",
            f"file:{tmp_path / 'upstream.p8'}",
            "--user-map",
            "claim:email",
            "--user-map",
            "ops=svc_ops",
            "--user-map",
            "*=SVC_AGENT",
            "--user",
            "ada.lovelace@example.com",
        ],
    )
    assert result.exit_code == 0, result.output
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = base64.b64encode(der).decode()
    statements = [line for line in result.output.splitlines() if not line.startswith("--")]
    assert statements == [
        f"ALTER USER {user} SET {setting};"
        for user in ("SVC_OPS", "SVC_AGENT", "ADA_LOVELACE_EXAMPLE_COM")
        for setting in (f"RSA_PUBLIC_KEY='{body}'", "DEFAULT_SECONDARY_ROLES = ()")
    ]
    assert "claim:email: pass each person's claim value as --user" in result.output
    assert "PRIVATE" not in result.output


def test_refusals_are_one_clear_line(tmp_path: Path) -> None:
    write_service_key(tmp_path / "upstream.p8")
    key = f"file:{tmp_path / 'upstream.p8'}"
    for arguments, message in [
        (["--private-key", key], "name at least one user"),
        (["--private-key", key, "--user", "9x"], "does not start with a letter"),
        (["--private-key", key, "--user-map", "ops"], "--user-map: 'ops' is not"),
        (["--private-key", f"file:{tmp_path / 'missing'}", "--user", "a"], "--private-key:"),
    ]:
        result = CliRunner().invoke(main, ["upstream-keys", *arguments])
        assert result.exit_code != 0 and message in result.output, result.output
