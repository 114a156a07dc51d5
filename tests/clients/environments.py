"""The client matrix's installs: one virtualenv per Python client, one npm folder for Node.

Each client gets its own environment, because the tools pin different
Snowflake connectors (4.x, 5.x) and their dependencies clash. An environment
lives under the cache directory (`$HOOPGW_CLIENT_CACHE`, else
`~/.cache/hoopgw/clients`) in a folder named after the client and a hash of
its exact requirement list and interpreter, so a run reuses what an earlier run
built and a changed pin builds afresh. An environment is built in place (a
virtualenv's scripts name its path, so it cannot be moved) and marked complete
with a file written last; a folder without that mark is removed and rebuilt.

`Installs.start` begins every install at once, each in its own background
thread running `python -m venv` and `pip install` (or `npm install`) as child
processes, so on a fresh machine they overlap with one another and with the
rest of the test suite; a test waits only for the one it needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_TIMEOUT = 900.0
COMPLETE = ".hoopgw-complete"
# installs run beside the rest of the suite: they yield the CPU to its timing-sensitive tests
_NICE = ["nice", "-n", "10"] if shutil.which("nice") else []

# Top-level pins: a release that changes behaviour shows up as a changed pin here.
PYTHON_CLIENTS: dict[str, tuple[str, ...]] = {
    "connector5": ("snowflake-connector-python==5.2.0",),
    "sqlalchemy": ("snowflake-sqlalchemy==2.1.0", "snowflake-connector-python==5.2.0"),
    "snowcli": ("snowflake-cli==3.30.0",),
    "dbt": ("dbt-core==1.11.*", "dbt-snowflake==1.11.*"),
    # 0.4.0 uses the low-level server API that mcp 2 removed (`Server.list_resources`)
    "mcp-snowflake-server": ("mcp-snowflake-server==0.4.0", "mcp<2", "setuptools<81"),
    "snowflake-labs-mcp": ("snowflake-labs-mcp==1.4.2",),
}
NODE_PACKAGES: tuple[str, ...] = ("snowflake-sdk@3.4.1",)


def cache_root() -> Path:
    configured = os.environ.get("HOOPGW_CLIENT_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "hoopgw" / "clients"


def _folder_name(name: str, parts: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


class InstallFailed(RuntimeError):
    """An environment could not be built; the message names the step and ends with its log."""


@dataclass
class Install:
    """One environment: built in the background, waited for by the tests that use it."""

    name: str
    folder: Path
    steps: list[list[str]]
    env: dict[str, str]
    log_path: Path
    reused: bool = False
    seconds: float = 0.0
    error: str | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _process: subprocess.Popen[bytes] | None = None
    _stopping: bool = False

    def start(self) -> None:
        if (self.folder / COMPLETE).is_file():
            self.reused = True
            self._done.set()
            return
        threading.Thread(target=self._build, name=f"install-{self.name}", daemon=True).start()

    def wait(self, timeout: float = INSTALL_TIMEOUT) -> Path:
        """The environment's folder once built; `InstallFailed` with the reason otherwise."""
        if not self._done.wait(timeout):
            raise InstallFailed(f"{self.name}: not installed after {timeout:.0f} s")
        if self.error is not None:
            raise InstallFailed(self.error)
        return self.folder

    def stop(self) -> None:
        """End an install still under way (the test session is over); a built one stays."""
        self._stopping = True
        if not self._done.is_set():
            self._kill()
            self._done.wait(30)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def _build(self) -> None:
        started = time.monotonic()
        building = self.folder
        shutil.rmtree(building, ignore_errors=True)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("w") as log:
                for step in self.steps:
                    argv = [*_NICE, *(part.replace("{dir}", str(building)) for part in step)]
                    log.write(f"$ {' '.join(argv)}\n")
                    log.flush()
                    if self._stopping:
                        self.error = f"{self.name}: stopped before it was complete"
                        return
                    self._process = subprocess.Popen(
                        argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=self.env,
                        start_new_session=True,
                    )
                    try:
                        returncode = self._process.wait(INSTALL_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        self._kill()
                        raise
                    if returncode != 0:
                        command = " ".join(argv[len(_NICE) : len(_NICE) + 4])
                        self.error = (
                            f"{self.name}: {_last_error(self.log_path)} (`{command} ...`"
                            f" exited with {returncode}; log {self.log_path})"
                        )
                        return
            (building / COMPLETE).write_text(" ".join(" ".join(step) for step in self.steps))
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"
        finally:
            if self.error is not None:
                shutil.rmtree(building, ignore_errors=True)
            self.seconds = time.monotonic() - started
            self._done.set()


def _last_error(path: Path) -> str:
    """The installer's own last error line (pip's `ERROR:`, npm's `npm error`)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [
        line
        for line in lines
        if line.lower().startswith(("error", "npm error")) and "complete log" not in line
    ]
    useful = [line for line in lines if "is ignored: it is neither" not in line]
    return (errors or useful or ["no output"])[-1].strip()


def python_install(name: str, requirements: tuple[str, ...], root: Path) -> Install:
    version = ".".join(map(str, sys.version_info[:3]))
    folder = root / _folder_name(name, (f"python {version}", *requirements))
    python = str(Path("{dir}") / "bin" / "python")
    steps = [
        [sys.executable, "-m", "venv", "{dir}"],
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            *requirements,
        ],
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return Install(name, folder, steps, env, root / "logs" / f"{folder.name}.log")


def node_install(root: Path) -> Install | None:
    npm = shutil.which("npm")
    node = shutil.which("node")
    if npm is None or node is None:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    folder = root / _folder_name("node", (f"node {version}", *NODE_PACKAGES))
    steps = [
        [
            npm,
            "install",
            "--prefix",
            "{dir}",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel",
            "error",
            *NODE_PACKAGES,
        ]
    ]
    return Install("node", folder, steps, dict(os.environ), root / "logs" / f"{folder.name}.log")


@dataclass
class Installs:
    """Every client's environment, all started together."""

    root: Path
    python: dict[str, Install]
    node: Install | None

    @classmethod
    def start(cls) -> Installs:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        python = {
            name: python_install(name, requirements, root)
            for name, requirements in PYTHON_CLIENTS.items()
        }
        node = node_install(root)
        installs = cls(root, python, node)
        for install in installs.all:
            install.start()
        return installs

    @property
    def all(self) -> list[Install]:
        return [*self.python.values(), *([self.node] if self.node else [])]

    def stop(self) -> None:
        for install in self.all:
            install.stop()

    def summary(self) -> str:
        rows = []
        for install in self.all:
            if install.reused:
                state = "cached"
            elif install._stopping and install.error and "stopped" in install.error:
                state = f"stopped after {install.seconds:.0f} s"
            elif install.error:
                state = f"failed after {install.seconds:.0f} s"
            else:
                state = f"built in {install.seconds:.0f} s"
            rows.append(f"{install.name}: {state}")
        return "; ".join(rows)
