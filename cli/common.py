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

from hoopgw.recorder.catalog import SESSIONS, Archive, SessionNotFound, parse_segment_key
from hoopgw.recorder.ids import InvalidSessionId, is_session_id
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

MIN_PREFIX: Final = 4
"""Hex digits a session id prefix needs, as git's shortest abbreviation."""
_ID_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")
_CANDIDATES_SHOWN: Final = 20
_ARCHIVE_DIRS: Final = ("sessions", "summaries", "rollups")
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
    """A SESSION_ID argument checked before anything touches a store.

    A whole id in any case, or (as git takes commit ids) a unique prefix of at
    least `MIN_PREFIX` hex digits, which `archive_errors` resolves in the store.
    """
    return click.argument("session_id", metavar="SESSION_ID", callback=_check_session_id)(command)


def _check_session_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return normalize_session_id(value)
    except InvalidSessionId as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def normalize_session_id(text: str) -> str:
    """A whole session id in lower case, or a lower-case id prefix; InvalidSessionId else."""
    lowered = text.strip().lower()
    if is_session_id(lowered):
        return lowered
    digits = lowered.replace("-", "")
    if (
        _ID_PREFIX.fullmatch(lowered)
        and len(digits) >= MIN_PREFIX
        and ("-" not in lowered or _hyphenated(digits).startswith(lowered))
    ):
        return lowered
    shown = repr(text[:48]) + ("…" if len(text) > 48 else "")
    raise InvalidSessionId(
        f"invalid session id {shown}: expected a UUIDv7 like "
        f"0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f, or a unique prefix of one "
        f"(at least {MIN_PREFIX} hex digits)"
    )


def resolve_session_id(archive: Archive, text: str) -> str:
    """The one recorded session whose id starts with `text` (from `normalize_session_id`).

    The first twelve hex digits of a UUIDv7 are its start time in milliseconds,
    so a prefix names the days to look in; only those `dt=` partitions are listed.
    """
    if is_session_id(text):
        return text
    digits = text.replace("-", "")
    first_ms = int(digits[:12].ljust(12, "0"), 16)
    last_ms = int(digits[:12].ljust(12, "f"), 16)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    day = datetime.fromtimestamp(first_ms / 1000, tz=UTC).date()
    last_day = min(datetime.fromtimestamp(last_ms / 1000, tz=UTC), tomorrow).date()
    found: set[str] = set()
    while day <= last_day:
        listing = f"{SESSIONS}/dt={day.isoformat()}/{_hyphenated(digits)}"
        for key in archive.store.list(listing):
            parsed = parse_segment_key(key)
            if parsed is not None:
                found.add(parsed.session_id)
        day += timedelta(days=1)
    if len(found) == 1:
        return found.pop()
    if not found:
        raise CommandError(f"no recorded session id starts with {text}")
    candidates = sorted(found)
    shown = "\n  ".join(candidates[:_CANDIDATES_SHOWN])
    more = (
        f"\n  ... and {len(candidates) - _CANDIDATES_SHOWN} more"
        if len(candidates) > _CANDIDATES_SHOWN
        else ""
    )
    raise CommandError(
        f"session id prefix {text} is ambiguous; it starts {len(candidates)} sessions:\n  "
        f"{shown}{more}"
    )


def _hyphenated(digits: str) -> str:
    """Hex digits of an id (or of its start) with the hyphens of the canonical form."""
    parts, start = [], 0
    for end in (8, 12, 16, 20, 32):
        if start < len(digits):
            parts.append(digits[start:end])
        start = end
    text = "-".join(parts)
    return text + "-" if len(digits) in (8, 12, 16, 20) else text


def open_archive(store: str, s3_endpoint_url: str | None) -> Archive:
    store = store_url(store)
    local = _local_store_path(store)
    if local is not None and not local.is_dir():
        # opening a local store creates its directory; a reader must not
        raise CommandError(f"no recordings at {local}: the directory does not exist")
    if local is not None and not any((local / name).is_dir() for name in _ARCHIVE_DIRS):
        raise CommandError(
            f"no recordings at {local}: the directory exists but holds no hoopgw archive "
            f"(no {'/, '.join(_ARCHIVE_DIRS)}/ inside); check {_store_source()}"
        )
    try:
        return Archive(open_store(store, s3_endpoint_url=s3_endpoint_url))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=_store_source()) from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def store_url(store: str) -> str:
    """`--store` as given, or a bare local path (`/srv/rec`, `./rec`, `~/rec`) as `file:`."""
    if store.startswith(("/", "./", "../", "~")):
        return "file:" + str(Path(store).expanduser())
    return store


def _store_source() -> str:
    """How the store was named, for error messages: the option or the environment variable."""
    context = click.get_current_context(silent=True)
    if context is not None:
        source = context.get_parameter_source("store")
        if source is click.core.ParameterSource.ENVIRONMENT:
            return f"${STORE_ENV}"
    return "'--store'"


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
            session_id = kwargs.get("session_id")
            if isinstance(session_id, str) and not is_session_id(session_id):
                archive = open_archive(kwargs["store"], kwargs.get("s3_endpoint_url"))
                kwargs["session_id"] = resolve_session_id(archive, session_id)
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


def check_time_range(since: datetime | None, until: datetime | None) -> None:
    """A backwards range matches nothing: say so instead of printing an empty list."""
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(
            f"--since {since:%Y-%m-%d %H:%M:%S} is not before --until {until:%Y-%m-%d %H:%M:%S}"
            " (UTC), so nothing can match; relative times count back from now, so "
            "--since 2h --until 1h is the hour before last",
            param_hint="'--since' / '--until'",
        )


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
