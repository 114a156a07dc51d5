"""`hoopgw verify`: is a recorded session, or the whole archive, exactly what the gateway wrote?"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hoopgw.cli.common import (
    EXIT_FINDING,
    CommandError,
    archive_errors,
    echo_json,
    echo_jsonl,
    format_option,
    normalize_session_id,
    open_archive,
    store_options,
)
from hoopgw.recorder.catalog import ArchiveReport, SessionNotFound, VerifyReport, verify_chunks
from hoopgw.recorder.checkpoints import CheckpointKeyError, load_public_key, public_keys_by_id
from hoopgw.recorder.ids import InvalidSessionId
from hoopgw.recorder.segment import SegmentError

VERDICTS = {
    "intact": "intact",
    "record": "BROKEN",
    "missing": "BROKEN: segment missing",
    "cut_tail": "BROKEN: tail cut",
    "rewritten": "BROKEN: rewritten",
    "signature": "BROKEN: checkpoint signature invalid",
    "checkpoint": "BROKEN: checkpoint missing or replaced",
}


def _session_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A whole id in any case or a unique prefix, as the other commands take it."""
    if value is None:
        return None
    try:
        return normalize_session_id(value)
    except InvalidSessionId as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _public_keys(paths: tuple[Path, ...]) -> dict[str, Ed25519PublicKey] | None:
    if not paths:
        return None
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path.read_bytes()))
        except OSError as exc:
            raise CommandError(f"cannot read the public key {path}: {exc.strerror}") from None
        except CheckpointKeyError as exc:
            raise CommandError(f"{path}: {exc}") from None
    return public_keys_by_id(keys)


@click.command()
@click.argument("session_id", metavar="[SESSION_ID]", required=False, callback=_session_id)
@click.option("--all", "everything", is_flag=True, help="Verify every session and writer.")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The gateway's checkpoint public key (PEM, or base64 of its 32 bytes); repeat "
    "for replicas with their own keys. Without it, signatures are not checked.",
)
@store_options
@format_option
@archive_errors
def verify(
    session_id: str | None,
    everything: bool,
    public_keys: tuple[Path, ...],
    store: str,
    s3_endpoint_url: str | None,
    output_format: str,
) -> None:
    """Check a session (or, with --all, the archive) against its hash chains and checkpoints.

    \b
    Checks every segment's zstd frame and content checksum, every record
    against the record schema, each writer's sequence numbers (no gap, no
    repeat) and hash chain, the last record against the writer's summary, and
    each result chunk's record against the answer that handed the chunk out
    (its SHA-256 present, the same for every fetch of one chunk). Then holds
    the segments to the gateway's signed checkpoints: a segment a checkpoint
    names that is gone is reported as missing (with its sequence numbers) or
    as a cut tail, records that differ from what a checkpoint signed as
    rewritten, and a deleted or altered checkpoint as such. Says of each
    gateway process whether it stopped cleanly, and which segments it stored
    after its last checkpoint (chained, not yet signed).

    \b
    Exit status: 0 intact, 1 broken, 2 unknown session, unreadable store or key.
    Without --public-key the checkpoints are used as stored, unsigned; the
    output says what could not be checked.

    \b
    Example:
      hoopgw verify 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --store s3://audit/hoopgw \\
          --public-key checkpoint-key.pub
      hoopgw verify --all --store s3://audit/hoopgw --public-key checkpoint-key.pub
    """
    if (session_id is None) == (not everything):
        raise click.UsageError("give a SESSION_ID or --all (not both)")
    keys = _public_keys(public_keys)
    archive = open_archive(store, s3_endpoint_url)
    if session_id is not None:
        report = archive.verify_session(session_id, keys)
        # a segment that does not decode, or none left at all, is reported above
        with contextlib.suppress(SegmentError, SessionNotFound):
            verify_chunks(archive.read_session(session_id), report)
        _print_session(report, output_format)
        ok = report.ok
    else:
        whole = archive.verify_archive(keys)
        _print_archive(whole, output_format)
        ok = whole.ok
    if not ok:
        click.get_current_context().exit(EXIT_FINDING)


def _print_session(report: VerifyReport, output_format: str) -> None:
    if output_format == "json":
        echo_json(report.to_dict())
        return
    if output_format == "jsonl":
        echo_jsonl(report.to_dict()["problems"])
        return
    _echo_session(report)


def _echo_session(report: VerifyReport) -> None:
    writers = ", ".join(report.writers) or "none"
    click.echo(
        f"session {report.session_id}: {VERDICTS[report.verdict]} ({report.segments} "
        f"segment(s), {report.records} record(s), writer(s) {writers})"
    )
    _echo_details(report, [str(problem) for problem in report.problems])


def _echo_details(report: VerifyReport | ArchiveReport, problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"  problem: {problem}")
    for line in report.chains:
        click.echo(f"  {line}")
    for remark in report.notes:
        click.echo(f"  note: {remark}")
    for item in report.unchecked:
        click.echo(f"  not checked: {item}")


def _print_archive(report: ArchiveReport, output_format: str) -> None:
    if output_format == "json":
        echo_json(report.to_dict())
        return
    if output_format == "jsonl":
        echo_jsonl(
            [
                *({"session_id": s.session_id, **p} for s in report.sessions
                  for p in s.to_dict()["problems"]),
                *report.to_dict()["problems"],
            ]
        )  # fmt: skip
        return
    broken = [session for session in report.sessions if not session.ok]
    state = "intact" if report.ok else "BROKEN"
    click.echo(
        f"archive: {state} ({len(report.sessions)} session(s), {len(broken)} broken, "
        f"{len(report.chains)} writer(s))"
    )
    _echo_details(report, [problem.message for problem in report.problems])
    for session in broken:
        _echo_session(session)
