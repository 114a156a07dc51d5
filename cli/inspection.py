"""`hoopgw export` and `hoopgw inspect`: a recorded session as mitmproxy flows, read in mitmweb."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from hoopgw.cli.common import (
    CommandError,
    archive_errors,
    normalize_session_id,
    open_archive,
    resolve_session_id,
    session_id_argument,
    store_options,
)
from hoopgw.recorder.ids import InvalidSessionId

LOOPBACK = "127.0.0.1"
# mitmweb's flow list for recorded sessions: the comment (the SQL, see replay/export.py)
# instead of the URL, which would leave it 150 pixels.
WEB_COLUMNS = ("index", "icon", "method", "status", "comment", "size", "time")
_LISTENING = re.compile(r"Web server listening at (http://\S+)")
_STARTUP_SECONDS = 60.0


@click.command("export")
@session_id_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    default=None,
    help="Flow file to write, mode 0600; - for standard output  [default: <session-id>.flows]",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@store_options
@archive_errors
def export_command(
    session_id: str, output: Path | None, force: bool, store: str, s3_endpoint_url: str | None
):
    """Write a recorded session as a mitmproxy flow file.

    Requests and responses are as recorded, so secrets stay redacted; bodies the
    recorder truncated are marked in the flow's comment. The file holds query
    results: it is written readable by you only, and an existing file is kept
    unless --force is given. Open it with `hoopgw inspect FILE`.

    \b
    Examples:
      hoopgw export 0190f3c4 -o incident-42.flows
      hoopgw export 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f -o - | gzip > incident-42.flows.gz
    """
    from hoopgw.replay.export import export_session_to

    if output == Path("-"):
        if sys.stdout.isatty():
            raise CommandError("refusing to write a binary flow file to a terminal; redirect it")
        archive = open_archive(store, s3_endpoint_url)
        stream = click.get_binary_stream("stdout")
        result = export_session_to(archive, session_id, stream)
        stream.flush()
        where = "standard output"
    else:
        destination = output or Path(f"{session_id}.flows")
        result = _export(session_id, destination, store, s3_endpoint_url, overwrite=force)
        where = str(destination)
    truncated = f", {result.truncated_bodies} truncated bodies" if result.truncated_bodies else ""
    click.echo(
        f"wrote {result.flows} flows of session {session_id} to {where}{truncated}", err=True
    )


@click.command("inspect")
@click.argument("source", metavar="SESSION_ID|FILE.flows")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the web UI on 127.0.0.1; 0 picks a free one.",
)
@click.option(
    "--open-browser/--no-open-browser",
    default=False,
    show_default=True,
    help="Open the web UI in the desktop's browser.",
)
@store_options
@archive_errors
def inspect_command(
    source: str, port: int, open_browser: bool, store: str, s3_endpoint_url: str | None
):
    """Open a recorded session, or a flow file from `hoopgw export`, in mitmweb.

    mitmweb runs on 127.0.0.1 only, with the Snowflake view and the Comment
    column (each statement's SQL), without the gateway's hooks and without a
    proxy listener: nothing can be sent through it. Replay only logs why it
    does nothing and leaves the recorded response on screen; options that would
    open a listener, intercept, replay or save flows are refused; an Edit
    changes only the viewer's copy (Revert undoes it). A session is exported to
    a private temporary directory that is removed when mitmweb stops; a flow
    file is read where it is. The printed URL carries mitmweb's access token.
    Stop with Ctrl-C.

    \b
    Examples:
      hoopgw inspect 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --store s3://audit/hoopgw
      hoopgw inspect 0190f3c4 --open-browser
      hoopgw inspect incident-42.flows
    """
    flows_path = _flow_file(source)
    with tempfile.TemporaryDirectory(prefix="hoopgw-inspect-") as work, _terminate_as_exit():
        if flows_path is not None:
            flows_file, title = flows_path, str(flows_path)
            count = None
        else:
            session_id = _session_id(source, store, s3_endpoint_url)
            flows_file = Path(work) / f"{session_id}.flows"
            count = _export(session_id, flows_file, store, s3_endpoint_url).flows
            title = f"session {session_id}"
        argv = mitmweb_argv(
            flows_file,
            port or free_port(),
            confdir=Path(work) / "mitmproxy",
            open_browser=open_browser,
        )
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            url = _wait_for_url(process)
            click.echo(f"{title}: {count} flows" if count is not None else title)
            click.echo(f"mitmweb: {url}")
            click.echo("Press Ctrl-C to stop.", err=True)
            assert process.stdout is not None
            for line in process.stdout:
                click.echo(line.rstrip("\n"), err=True)
            status = process.wait()
            if status:
                raise CommandError(f"mitmweb exited with status {status}")
        except KeyboardInterrupt:
            click.echo("stopping mitmweb", err=True)
        finally:
            _stop(process)


def _flow_file(source: str) -> Path | None:
    """The flow file `source` names, or None when it is a session id (or a prefix of one)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    if source.endswith(".flows") or "/" in source:
        raise CommandError(f"no flow file at {source}")
    return None


def _session_id(text: str, store: str, s3_endpoint_url: str | None) -> str:
    try:
        wanted = normalize_session_id(text)
    except InvalidSessionId as exc:
        raise click.BadParameter(
            f"{exc}; or the path of a flow file", param_hint="'SESSION_ID|FILE.flows'"
        ) from None
    return resolve_session_id(open_archive(store, s3_endpoint_url), wanted)


def mitmweb_argv(flows_file: Path, port: int, *, confdir: Path, open_browser: bool) -> list[str]:
    """mitmweb as a viewer: loopback only, no proxy server, no options from ~/.mitmproxy."""
    argv = [
        _mitmweb(),
        "--rfile",
        str(flows_file),
        "--scripts",
        viewer_script(),
        "--set",
        f"confdir={confdir}",
        "--set",
        "server=false",
        "--set",
        f"web_host={LOOPBACK}",
        "--set",
        f"web_port={port}",
        "--set",
        f"web_open_browser={str(open_browser).lower()}",
        "--set",
        "termlog_verbosity=info",
    ]
    for column in WEB_COLUMNS:
        argv += ["--set", f"web_columns={column}"]
    return argv


def viewer_script() -> str:
    """addons/inspection.py: the Snowflake content view and the offline guard, no gateway hooks."""
    spec = importlib.util.find_spec("hoopgw.addons.inspection")
    if spec is None or spec.origin is None:
        raise CommandError("cannot find addons/inspection.py; is hoopgw installed?")
    return spec.origin


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _mitmweb() -> str:
    beside = Path(sys.executable).parent / "mitmweb"
    found = str(beside) if beside.exists() else shutil.which("mitmweb")
    if not found:
        raise CommandError("mitmweb is not installed (it comes with mitmproxy)")
    return found


def _export(
    session_id: str,
    destination: Path,
    store: str,
    s3_endpoint_url: str | None,
    *,
    overwrite: bool = False,
) -> Any:
    from hoopgw.replay.export import export_session

    archive = open_archive(store, s3_endpoint_url)
    try:
        return export_session(archive, session_id, destination, overwrite=overwrite)
    except FileExistsError:
        raise CommandError(f"{destination} exists; give --force to replace it") from None
    except OSError as exc:
        raise CommandError(f"cannot write {destination}: {exc.strerror or exc}") from None


def _wait_for_url(process: subprocess.Popen[str]) -> str:
    """mitmweb's URL with its token, from its start-up log; its output so far if it fails."""
    assert process.stdout is not None
    seen: list[str] = []
    # stopping mitmweb ends the read loop below if it never says where it listens
    timer = threading.Timer(_STARTUP_SECONDS, process.terminate)
    timer.daemon = True
    timer.start()
    try:
        for line in process.stdout:
            match = _LISTENING.search(line)
            if match:
                return match.group(1)
            seen.append(line.rstrip("\n"))
    finally:
        timer.cancel()
    tail = "\n".join(seen[-20:])
    raise CommandError(f"mitmweb did not start:\n{tail}")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so mitmweb is stopped and the temporary copy removed."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
