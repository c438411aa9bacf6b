"""The single-file build (build/shiv.sh) for tests: build it, run it like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def build_pyz(
    out_dir: Path,
    *,
    checkout: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    umask: int = 0o022,
) -> Path:
    """Run build/shiv.sh of ``checkout`` with this interpreter into ``out_dir``; returns the
    .pyz path (its .sha256 is beside it)."""
    done = subprocess.run(
        ["bash", str(checkout / "build" / "shiv.sh"), "--out-dir", str(out_dir)],
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        umask=umask,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"build/shiv.sh failed ({done.returncode}):\n{done.stderr[-5000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def plain_python() -> str:
    """This Python outside any virtualenv: same version, none of the project's packages."""
    return getattr(sys, "_base_executable", "") or sys.executable


@dataclass
class Pyz:
    path: Path
    shiv_root: Path  # where shiv unpacks the zipapp; keeps the suite out of ~/.shiv

    @property
    def checksum(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def env(self, **extra: str) -> dict[str, str]:
        """A scrubbed environment: PATH and shiv's unpack directory, nothing else."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "SHIV_ROOT": str(self.shiv_root),
            **extra,
        }

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``<plain python> reproq.pyz ARGS`` from ``cwd`` in a scrubbed environment."""
        return subprocess.run(
            [plain_python(), str(self.path), *args],
            cwd=cwd,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def executor_python(directory: Path, **env: str) -> Path:
    """A python_bin for the worker's executor children: this virtualenv's Python (it has
    Django) with the test project importable. The variables are set here, for the children
    only, so the zipapp itself runs without the checkout on its path."""
    script = directory / "executor-python"
    exports = "".join(f"export {name}='{value}'\n" for name, value in env.items())
    script.write_text(
        f'#!/bin/sh\nexport PYTHONPATH=\'{REPO_ROOT}\'\n{exports}exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    return script
