"""A private single-node Ray cluster for the tests: `ray start --head --block` in its own
session and temporary directory, on free ports, stopped by its process group (never
`ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port


@dataclass
class RayCluster:
    address: str
    client_address: str  # Ray Client, ray://
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                time.sleep(0.1)
                self.proc.poll()
            if not _group_alive(self.proc.pid):
                break
        self.proc.poll()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies; count only processes that are not.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start_ray(env: dict[str, str], *, num_cpus: int = 2, timeout: float = 90.0) -> RayCluster:
    # A short path: Ray's Unix sockets live below it (107-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rqray-", dir="/tmp"))
    log = temp_dir / "head.log"
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    argv = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        str(num_cpus),
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-port",
        str(free_port()),
        "--ray-client-server-port",
        str(client_port := free_port()),
        "--include-dashboard",
        "false",
        "--object-store-memory",
        str(200 * 1024 * 1024),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    cluster = RayCluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", proc, temp_dir, log)
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:]
            cluster.stop()
            raise RuntimeError(f"ray start failed:\n{text}")
        time.sleep(0.2)
    return cluster
