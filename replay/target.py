"""The sandbox a session is replayed into: a named Snowflake connection or explicit options.

Named connections are read exactly as Snowflake's own tools read them, with the
connector's own `ConfigManager`: `connections.toml`, else the `[connections]`
table of `config.toml`, in `SNOWFLAKE_HOME` when that directory exists, else in
the platform's config directory (`~/.snowflake/` when it exists); the
`SNOWFLAKE_CONNECTIONS` environment variable overrides both, as in the
connector. The manager is built fresh on each call rather than reusing the
connector's module-level one, whose paths are fixed when the connector is
imported.

Secrets (a password, a private key) come from secret references
(`recorder.secrets`) or from the connection file; they stay in `Target.params`
and never appear in `describe()`, messages or reports.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoopgw.recorder.secrets import SecretError, resolve_secret

_SECRET_PARAMS = frozenset(
    {"password", "private_key", "private_key_file_pwd", "token", "passcode", "oauth_client_secret"}
)
_SNOWFLAKE_DOMAIN = ".snowflakecomputing.com"
SNOWFLAKE_HOME_ENV = "SNOWFLAKE_HOME"
CONNECTIONS_ENV = "SNOWFLAKE_CONNECTIONS"


class TargetError(ValueError):
    """The target cannot be built: unknown connection, bad secret reference, no account."""


class RecordedAccountRefused(TargetError):
    """The target is the account the session was recorded against."""


@dataclass(frozen=True)
class Target:
    """Connection parameters for snowflake-connector-python, and where they came from."""

    params: Mapping[str, Any]
    source: str
    secrets: frozenset[str] = field(default=frozenset())
    notes: tuple[str, ...] = ()
    """One-line remarks on how the connection was found (see `read_named_connection`)."""

    @property
    def account(self) -> str | None:
        value = self.params.get("account")
        return str(value) if value else None

    @property
    def host(self) -> str | None:
        value = self.params.get("host")
        return str(value) if value else None

    def describe(self) -> dict[str, Any]:
        """What the target is, safe to print: never a secret."""
        shown = {
            name: self.params.get(name)
            for name in ("account", "user", "host", "port", "protocol", "authenticator")
            if self.params.get(name) is not None
        }
        shown["source"] = self.source
        return shown


def connection_config_dir() -> Path:
    """The directory Snowflake's tools read config.toml and connections.toml from."""
    from snowflake.connector.sf_dirs import _resolve_platform_dirs

    return Path(_resolve_platform_dirs().user_config_path)


@dataclass(frozen=True)
class NamedConnection:
    params: dict[str, Any]
    source: str
    """Which file the connector read the connection from (or its environment variable)."""
    notes: tuple[str, ...] = ()
    """One line each: what the person running replay should know (a fallback, a loose mode)."""


def load_named_connection(name: str) -> tuple[dict[str, Any], str]:
    """The parameters of connection `name` and a description of where they were found."""
    found = read_named_connection(name)
    return found.params, found.source


def read_named_connection(name: str) -> NamedConnection:
    """Connection `name` as the connector reads it, with the file it came from and one-line
    notes in place of the connector's multi-line warnings."""
    import tomlkit
    from snowflake.connector.config_manager import (
        ConfigManager,
        ConfigSlice,
        ConfigSliceOptions,
    )
    from snowflake.connector.errors import Error as ConnectorError

    notes: list[str] = []
    directory = connection_config_dir()
    home = os.environ.get(SNOWFLAKE_HOME_ENV)
    if home and not Path(home).expanduser().exists():
        notes.append(
            f"${SNOWFLAKE_HOME_ENV} is {home}, which does not exist; "
            f"the connector reads {directory} instead"
        )
    connections_file = directory / "connections.toml"
    config_file = directory / "config.toml"
    manager = ConfigManager(
        name="CONFIG_MANAGER",
        file_path=config_file,
        _slices=[
            ConfigSlice(connections_file, ConfigSliceOptions(check_permissions=True), "connections")
        ],
    )
    manager.add_option(name="connections", parse_str=tomlkit.parse, default=dict())
    manager.add_option(name="default_connection_name", default="default")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            connections = manager["connections"]
    except ConnectorError as exc:
        raise TargetError(f"cannot read Snowflake connections: {_first_line(exc)}") from None
    except Exception as exc:  # tomlkit parse errors surface as several types
        raise TargetError(f"cannot read Snowflake connections: {_first_line(exc)}") from None
    notes += [_one_line_warning(str(item.message)) for item in caught]
    where = _read_from(connections_file, config_file)
    if not isinstance(connections, Mapping) or name not in connections:
        known = sorted(connections) if isinstance(connections, Mapping) else []
        listing = ", ".join(known) if known else "none"
        raise TargetError(
            f"no connection named {name!r} in {where} (known: {listing})"
            + "".join(f"; {remark}" for remark in notes if remark.startswith("$"))
        )
    entry = connections[name]
    if not isinstance(entry, Mapping):
        raise TargetError(f"connection {name!r} in {where} is not a table")
    return NamedConnection(_plain(entry), f"connection {name!r} from {where}", tuple(notes))


def _read_from(connections_file: Path, config_file: Path) -> str:
    """Where the connector took `[connections]` from: the environment variable, else
    connections.toml when it exists (it replaces config.toml's table), else config.toml."""
    if os.environ.get(CONNECTIONS_ENV):
        return f"${CONNECTIONS_ENV}"
    if connections_file.exists():
        return str(connections_file)
    if config_file.exists():
        return str(config_file)
    return f"{connections_file} (it does not exist, nor does {config_file.name})"


def _one_line_warning(message: str) -> str:
    """The connector's warnings, shortened to one line; `Bad owner or permissions on FILE`
    (a file others may read) says what to run."""
    first = message.strip().splitlines()[0] if message.strip() else "warning"
    prefix = "Bad owner or permissions on "
    if first.startswith(prefix):
        path = first[len(prefix) :].rstrip(".")
        try:
            mode = f"mode {Path(path).stat().st_mode & 0o777:04o}"
        except OSError:
            mode = "its mode or owner"
        return f"{path} may be read by others ({mode}): run chmod 0600 {path}"
    return first[:300]


def resolve_target(
    *,
    connection: str | None = None,
    account: str | None = None,
    user: str | None = None,
    host: str | None = None,
    port: int | None = None,
    protocol: str | None = None,
    password_ref: str | None = None,
    private_key_ref: str | None = None,
    private_key_passphrase_ref: str | None = None,
) -> Target:
    """A named connection with explicit options laid over it, or explicit options alone."""
    params: dict[str, Any] = {}
    source = "command-line options"
    notes: tuple[str, ...] = ()
    if connection:
        found = read_named_connection(connection)
        params, source, notes = found.params, found.source, found.notes
    explicit = {"account": account, "user": user, "host": host, "port": port, "protocol": protocol}
    params.update({name: value for name, value in explicit.items() if value is not None})
    if password_ref:
        params["password"] = _secret_text(password_ref, "--password-ref")
    if private_key_ref:
        passphrase = (
            resolve_secret_bytes(private_key_passphrase_ref, "--private-key-passphrase-ref")
            if private_key_passphrase_ref
            else None
        )
        params["private_key"] = _load_private_key(
            resolve_secret_bytes(private_key_ref, "--private-key-ref"), passphrase
        )
        params.setdefault("authenticator", "SNOWFLAKE_JWT")
    if not params.get("account"):
        raise TargetError("no sandbox given: use --connection NAME or --account (with --user)")
    secrets = frozenset(name for name in params if name in _SECRET_PARAMS)
    return Target(params, source, secrets, notes)


def normalize_account(value: str) -> str:
    """`xy12345.us-east-1.aws` and `XY12345` name the same account; so do host names."""
    text = value.strip().upper()
    if text.lower().endswith(_SNOWFLAKE_DOMAIN):
        text = text[: -len(_SNOWFLAKE_DOMAIN)]
    return text.split(".", 1)[0]


def check_not_recorded_account(target: Target, recorded_accounts: Iterable[str]) -> None:
    """Refuse a target that is the production account the session was recorded against."""
    recorded = {normalize_account(name) for name in recorded_accounts if name}
    if not recorded:
        return
    candidates = {normalize_account(target.account or "")}
    if target.host and target.host.lower().endswith(_SNOWFLAKE_DOMAIN):
        candidates.add(normalize_account(target.host))
    clash = sorted(candidates & recorded)
    if clash:
        raise RecordedAccountRefused(
            f"the target account {clash[0]} is the account this session was recorded "
            "against; replay into a sandbox account, or pass --allow-recorded-account "
            "if you really mean to run these statements there again"
        )


def connect_params(target: Target, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for `snowflake.connector.connect`: the target's, then replay's own."""
    params = dict(target.params)
    params.update({name: value for name, value in overrides.items() if value is not None})
    params["paramstyle"] = "qmark"
    params.setdefault("application", "hoopgw_replay")
    return params


def resolve_secret_bytes(reference: str, option: str) -> bytes:
    try:
        return resolve_secret(reference)
    except SecretError as exc:
        raise TargetError(f"{option}: {exc}") from None


def _secret_text(reference: str, option: str) -> str:
    data = resolve_secret_bytes(reference, option)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise TargetError(f"{option}: the secret is not UTF-8 text") from None


def _load_private_key(data: bytes, passphrase: bytes | None) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=passphrase)
        return serialization.load_der_private_key(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        reason = "wrong or missing passphrase" if "password" in str(exc).lower() else "not a key"
        raise TargetError(f"--private-key-ref: cannot load the private key ({reason})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
