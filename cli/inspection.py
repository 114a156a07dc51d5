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
    open_archive,
    session_id_argument,
    store_options,
)

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
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Flow file to write  [default: <session-id>.flows]",
)
@store_options
@archive_errors
def export_command(session_id: str, output: Path | None, store: str, s3_endpoint_url: str | None):
    """Write a recorded session as a mitmproxy flow file.

    Requests and responses are as recorded, so secrets stay redacted; bodies the
    recorder truncated are marked in the flow's comment. Open the file with
    `hoopgw inspect`, or with `mitmweb -r FILE -s addons/inspection.py`.
    """
    destination = output or Path(f"{session_id}.flows")
    result = _export(session_id, destination, store, s3_endpoint_url)
    truncated = f", {result.truncated_bodies} truncated bodies" if result.truncated_bodies else ""
    click.echo(f"wrote {result.flows} flows of session {session_id} to {destination}{truncated}")


@click.command("inspect")
@session_id_argument
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
    session_id: str, port: int, open_browser: bool, store: str, s3_endpoint_url: str | None
):
    """Open a recorded session in mitmweb, on loopback, with the Snowflake view.

    mitmweb runs without the gateway's hooks and without a proxy listener, on a
    copy of the session exported to a private temporary directory that is
    removed when it stops. The printed URL carries mitmweb's access token.
    Stop with Ctrl-C.
    """
    with tempfile.TemporaryDirectory(prefix="hoopgw-inspect-") as work, _terminate_as_exit():
        flows_file = Path(work) / f"{session_id}.flows"
        result = _export(session_id, flows_file, store, s3_endpoint_url)
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
            click.echo(f"session {session_id}: {result.flows} flows")
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


def _export(session_id: str, destination: Path, store: str, s3_endpoint_url: str | None) -> Any:
    from hoopgw.replay.export import export_session

    archive = open_archive(store, s3_endpoint_url)
    try:
        return export_session(archive, session_id, destination)
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
