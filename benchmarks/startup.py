"""Start-up time of the zipapp: `reproq.pyz --help` and `--version`, cold and warm.

    python benchmarks/startup.py [PYZ] [--runs N]

PYZ defaults to the dist/ build for this machine (build/shiv.sh makes it). Each command runs
under a plain interpreter (this Python outside any virtualenv) with only PATH and SHIV_ROOT
set, as a user's shell would run it. "Cold" is the first run after download, which unpacks
the zipapp into SHIV_ROOT; "warm" is every run after that. For comparison, the same commands
through `python -m reproq_cli` of an installed package (a virtualenv holding what pip put into
the zipapp: reproq and its dependencies, not editable) and of this environment (whose reproq
is usually this checkout's editable install). Prints a Markdown table on stdout.

`python -m benchmarks` runs the same measurement (``measure``) on a zipapp it builds from the
working tree and puts it in BENCHMARKS.md with the other figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_pyz() -> Path:
    v = sys.version_info
    name = f"reproq-{platform.system().lower()}-{platform.machine().lower()}-py{v[0]}{v[1]}.pyz"
    return ROOT / "dist" / name


def timed(argv: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"{statistics.median(ms):.0f} ms | {ms[0]:.0f} ms | {ms[-1]:.0f} ms"


def measure(pyz: Path | None, runs: int, cold_runs: int = 5) -> list[tuple[str, list[float]]]:
    """(command, samples in seconds) for the zipapp (when ``pyz`` is given), the installed
    package (from the zipapp's files), this checkout's editable install and the bare
    interpreter."""
    python = getattr(sys, "_base_executable", "") or sys.executable
    rows: list[tuple[str, list[float]]] = []
    venv_python: Path | None = None
    with tempfile.TemporaryDirectory() as cwd:
        if pyz is not None:
            cold = []
            for _ in range(cold_runs):
                with tempfile.TemporaryDirectory() as shiv_root:
                    env = {"PATH": os.environ.get("PATH", os.defpath), "SHIV_ROOT": shiv_root}
                    cold.append(timed([python, str(pyz), "--help"], env, cwd))
            rows.append(("pyz `--help`, cold (first run unpacks)", cold))
            with tempfile.TemporaryDirectory() as shiv_root:
                env = {"PATH": os.environ.get("PATH", os.defpath), "SHIV_ROOT": shiv_root}
                timed([python, str(pyz), "--help"], env, cwd)
                warm: dict[str, list[float]] = {"--help": [], "--version": []}
                for _ in range(runs):  # interleaved: a burst of load elsewhere hits both
                    for flag, samples in warm.items():
                        samples.append(timed([python, str(pyz), flag], env, cwd))
                rows += [(f"pyz `{flag}`, warm", samples) for flag, samples in warm.items()]
                unpacked = next(Path(shiv_root).glob("*/site-packages"), None)
                if unpacked is not None:
                    venv_python = installed_copy(python, unpacked, Path(cwd) / "venv")
        # Interleaved, as above. The installed package is what pip put into the zipapp, in a
        # virtualenv of its own, as `pip install reproq` leaves it; an editable install (the
        # development set-up) also loads setuptools' import hook at start-up.
        plain = {"PATH": os.environ.get("PATH", os.defpath)}
        commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        here = this_environment(cwd)
        for flag in ("--help", "--version"):
            if venv_python is not None:
                commands[f"`python -m reproq_cli {flag}` (installed package)"] = (
                    [str(venv_python), "-m", "reproq_cli", flag],
                    plain,
                )
            commands[f"`python -m reproq_cli {flag}` ({here})"] = (
                [sys.executable, "-m", "reproq_cli", flag],
                dict(os.environ),
            )
        commands["`python -c pass` (interpreter alone)"] = ([python, "-c", "pass"], plain)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (argv, env) in commands.items():
                samples[name].append(timed(argv, env, cwd))
        rows += list(samples.items())
    return rows


def this_environment(cwd: str) -> str:
    """Where ``python -m reproq_cli`` of this environment imports reproq from, run in ``cwd``:
    in the benchmarks' set-up, this checkout through its editable install."""
    where = subprocess.run(
        [sys.executable, "-c", "import reproq_cli; print(reproq_cli.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if Path(where).resolve().is_relative_to(ROOT):
        return "editable install of this checkout"
    return "this environment's install"


def installed_copy(python: str, site_packages: Path, where: Path) -> Path:
    """A virtualenv at ``where`` holding ``site_packages`` (reproq and its dependencies as
    pip installed them into the zipapp, not editable); returns its interpreter."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True)
    target = next(where.glob("lib/python*/site-packages"))
    shutil.copytree(site_packages, target, dirs_exist_ok=True)
    return where / "bin" / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyz", nargs="?", type=Path, default=default_pyz())
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if not args.pyz.is_file():
        sys.exit(f"error: {args.pyz} does not exist; build it with build/shiv.sh")
    rows = measure(args.pyz, args.runs)
    print(
        f"{args.pyz.name}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.runs} runs (cold: 5)\n"
    )
    print("| command | median | min | max |")
    print("|---|---|---|---|")
    for name, samples in rows:
        print(f"| {name} | {summary(samples)} |")


if __name__ == "__main__":
    main()
