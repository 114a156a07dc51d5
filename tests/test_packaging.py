"""The distribution installs one namespace, `hoopgw`, and runs from a wheel.

A wheel is built from the checkout and installed into a fresh virtual
environment whose only view of the dependencies is the test environment's
site-packages as a plain path entry (its `.pth` files, and so the editable
install of this checkout, are not processed there). The installed bundle must
then work on its own: the `hoopgw` command, and mitmdump loading the installed
`gateway.py`, while the generic names `cli`, `replay`, `addons` and `recorder`
import nothing.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.stack import REPO_ROOT

GENERIC_NAMES = ("cli", "replay", "addons", "recorder")
LOCAL_ONLY = (".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; returns its python."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy so that setuptools' build/ and egg-info never land in the checkout.
    source = work / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(work / "dist"),
            str(source),
        ]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("hoopgw-*.whl")

    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    added = _run([*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel)])
    assert added.returncode == 0, added.stderr

    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    dependencies = sysconfig.get_path("purelib")
    assert dependencies in site.getsitepackages()
    Path(purelib.stdout.strip(), "dependencies.pth").write_text(dependencies + "\n")
    return python


def test_the_wheel_holds_only_the_hoopgw_namespace(installed, tmp_path):
    for name in GENERIC_NAMES:
        probe = _run([str(installed), "-c", f"import {name}"], cwd=tmp_path)
        assert probe.returncode != 0, f"`import {name}` worked from the wheel install"
        assert f"No module named '{name}'" in probe.stderr
    found = _run(
        [str(installed), "-c", "import hoopgw.addons.protocol as m; print(m.__file__)"],
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert str(installed.parent.parent) in found.stdout, "not imported from the wheel install"


def test_the_hoopgw_command_runs_from_the_wheel(installed, tmp_path):
    result = _run([str(installed.parent / "hoopgw"), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "replay" in result.stdout and "verify" in result.stdout


def test_mitmdump_loads_the_installed_gateway(installed, tmp_path):
    located = _run(
        [str(installed), "-c", "import hoopgw.addons.gateway as g; print(g.__file__)"],
        cwd=tmp_path,
    )
    # Importing gateway.py as a module builds the addon list; it must not need the checkout.
    assert located.returncode == 0, located.stderr
    gateway = located.stdout.strip().splitlines()[-1]
    assert gateway.startswith(str(installed.parent.parent))
    mitmdump = "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())"
    result = _run(
        [str(installed), "-c", mitmdump, "-s", gateway, "--options"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hoopgw_store:" in result.stdout
    assert "hoopgw_policy:" in result.stdout
