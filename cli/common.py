"""Options and output shared by the `hoopgw` commands that read recordings.

Exit codes: 0 success, 1 a finding (differences, a broken session), 2 usage or
access errors (bad option, malformed session id, unknown session, store or
sandbox unreachable). click already exits 2 on usage errors.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
import orjson

from hoopgw.recorder.catalog import Archive, SessionNotFound
from hoopgw.recorder.ids import InvalidSessionId, parse_session_id
from hoopgw.recorder.index import ArchiveIndex, default_cache_dir
from hoopgw.recorder.segment import SegmentError
from hoopgw.recorder.store import StoreError, open_store
from hoopgw.replay.render import format_table

STORE_ENV: Final = "HOOPGW_STORE"
S3_ENDPOINT_ENV: Final = "HOOPGW_S3_ENDPOINT_URL"
DEFAULT_STORE: Final = "file:var/recordings"
"""The gateway's own default for `hoopgw_store`."""
FORMATS: Final = ("table", "json", "jsonl")
EXIT_FINDING: Final = 1
EXIT_USAGE: Final = 2

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class CommandError(click.ClickException):
    """A clear one-line error and exit status 2 (usage, access)."""

    exit_code = EXIT_USAGE


def store_options[F: Callable[..., Any]](command: F) -> F:
    """`--store` and `--s3-endpoint-url`, with the gateway's defaults and environment."""
    command = click.option(
        "--s3-endpoint-url",
        envvar=S3_ENDPOINT_ENV,
        default=None,
        metavar="URL",
        help=f"Endpoint of an S3-compatible store (MinIO, moto); env {S3_ENDPOINT_ENV}.",
    )(command)
    command = click.option(
        "--store",
        envvar=STORE_ENV,
        default=DEFAULT_STORE,
        show_default=True,
        metavar="URL",
        help=f"Where the gateway records: s3://bucket/prefix or file:DIR; env {STORE_ENV}.",
    )(command)
    return command


def cache_option[F: Callable[..., Any]](command: F) -> F:
    return click.option(
        "--no-cache",
        is_flag=True,
        help="Read everything from the store, without the local catalog cache "
        "($HOOPGW_CACHE_DIR, default ~/.cache/hoopgw).",
    )(command)


def format_option[F: Callable[..., Any]](command: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people, json (one document) or jsonl (one object per line) for tools.",
    )(command)


def session_id_argument[F: Callable[..., Any]](command: F) -> F:
    """A SESSION_ID argument checked with `parse_session_id` before anything touches a store."""
    return click.argument("session_id", metavar="SESSION_ID", callback=_check_session_id)(command)


def _check_session_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return parse_session_id(value)
    except InvalidSessionId as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def open_archive(store: str, s3_endpoint_url: str | None) -> Archive:
    local = _local_store_path(store)
    if local is not None and not local.is_dir():
        # opening a local store creates its directory; a reader must not
        raise CommandError(f"no recordings at {local}: the directory does not exist")
    try:
        return Archive(open_store(store, s3_endpoint_url=s3_endpoint_url))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--store'") from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def _local_store_path(store: str) -> Path | None:
    """The directory of a `file:` store URL (as `recorder.store.open_store` reads it)."""
    if not store.startswith("file:"):
        return None
    rest = store[len("file:") :]
    if rest.startswith("//"):
        rest = "/" + rest[2:].partition("/")[2]
    return Path(rest) if rest else None


def open_index(store: str, s3_endpoint_url: str | None, *, no_cache: bool) -> ArchiveIndex:
    """The archive with the fast, cached catalog reads used by listing and search."""
    archive = open_archive(store, s3_endpoint_url)
    return ArchiveIndex(
        archive,
        store_url=f"{store}|{s3_endpoint_url or ''}",
        cache_dir=None if no_cache else default_cache_dir(),
    )


def archive_errors[F: Callable[..., Any]](command: F) -> F:
    """Turn store and archive failures into one clear line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SessionNotFound as exc:
            raise CommandError(f"{exc} (store {kwargs.get('store', '?')})") from None
        except StoreError as exc:
            raise CommandError(f"cannot read the recordings: {exc}") from None
        except SegmentError as exc:
            raise CommandError(
                f"a segment does not decode: {exc}; run `hoopgw verify` for the details"
            ) from None

    return wrapper  # type: ignore[return-value]


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """`2026-11-01`, `2026-11-01T14:30`, `2026-11-01 14:30:00+02:00`, `90m`/`12h`/`7d` ago,
    `today`, `yesterday`, `now`; naive times are UTC."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    if value == "now":
        return now
    if value in ("today", "yesterday"):
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=1) if value == "yesterday" else day
    relative = _RELATIVE.fullmatch(value.removesuffix(" ago").strip())
    if relative:
        return now - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 2026-11-01, 2026-11-01T14:30, 90m, 12h or 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class WhenType(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


WHEN = WhenType()


def echo_json(document: Any) -> None:
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str).decode())


def echo_jsonl(items: Iterable[Any]) -> None:
    for item in items:
        click.echo(orjson.dumps(item, default=str).decode())


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    click.echo(format_table(headers, rows))


def emit(
    output_format: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    items: Sequence[dict[str, Any]],
) -> None:
    """Rows as a table (nothing at all when there are none), or the records as JSON or JSONL."""
    if output_format == "json":
        echo_json(list(items))
    elif output_format == "jsonl":
        echo_jsonl(items)
    elif rows:
        echo_table(headers, rows)


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr so pipes stay clean."""
    click.echo(message, err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
