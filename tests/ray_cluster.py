"""A real multi-node Ray cluster on loopback, started and stopped by a test.

Both nodes run on this machine (same IP), each from its own `ray start` with its
own ports and CPUs; they are told apart by their Ray node ids. Each `ray start`
runs in a session of its own, and stopping kills exactly the processes of those
sessions: `ray stop` would kill every Ray on the machine, other tests' too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(n: int) -> int:
    """The first of n consecutive ports that are free now (for Ray's worker ports)."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - n)
        try:
            sockets = []
            for port in range(base, base + n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port range")


def process_stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (state, ppid, pgrp,
    session, ...), for every process that can still be read."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        stats[int(entry.name)] = stat.rsplit(")", 1)[1].split()
    return stats


def _sessions_pids(sessions: set[int]) -> list[int]:
    # field 6 of /proc/pid/stat: the session id
    return [pid for pid, fields in process_stats().items() if int(fields[3]) in sessions]


@dataclass
class Cluster:
    temp_dir: Path
    env: dict[str, str]
    gcs_port: int
    dashboard_port: int
    sessions: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, *args: str) -> None:
        workers = free_port_range(40)
        command = [
            RAY, "start", "--num-cpus", "1", "--temp-dir", str(self.temp_dir),
            "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats",
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 39),
            *args,
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            env=self.env,
            start_new_session=True,  # its daemons stay in this session: that is how we stop them
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.sessions.add(process.pid)
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{output}")

    def nodes(self) -> dict[str, dict]:
        """Alive node id -> its resources, asked of the cluster by a separate driver."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            pids = _sessions_pids(self.sessions)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = _sessions_pids(self.sessions)
            if not pids:
                break


def start_two_nodes() -> Cluster:
    """Head (1 CPU, with the job server) and a second node (1 CPU, resource `second`)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="hj-ray-", dir="/tmp"))  # short: socket paths
    token = temp_dir / "token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        # ray start --head turns token authentication on; every process of the cluster and
        # every driver must then find the token, here this cluster's own.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    cluster = Cluster(temp_dir, env, free_port(), free_port())
    try:
        cluster.start_node(
            "--head", "--port", str(cluster.gcs_port), "--node-ip-address", "127.0.0.1",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(cluster.dashboard_port),
            "--ray-client-server-port", str(free_port()),
        )  # fmt: skip
        cluster.start_node(
            "--address", cluster.address, "--node-ip-address", "127.0.0.1",
            "--resources", json.dumps({"second": 1}),
        )  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster
