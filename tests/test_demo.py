"""`make demo` keeps working: the demo stack starts and a statement goes through it."""

from __future__ import annotations

import subprocess
import sys

from tests.stack import REPO_ROOT


def test_demo_smoke(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.demo",
            "--smoke",
            "--home",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: hello through hoopgw" in result.stdout
    assert "smoke: held DELETE approved, 2 rows deleted" in result.stdout
