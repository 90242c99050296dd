"""A whole cluster on loopback: Redis, N Parastream nodes and HAProxy with deploy/haproxy.cfg, from Debian's
`redis-server` and `haproxy` (the Makefile's system-deps installs them). The cluster's end-to-end test and its
benchmark both run on it.

    with Cluster(model_dir, nodes=2, replicate_strides=2) as cluster:
        cluster.url               # HAProxy: what clients use
        cluster.nodes[0].base_url # one node, directly (admin calls)
        cluster.haproxy_status()  # {"node1": "UP", ...} from HAProxy's stats socket
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import httpx

from benchmarks.common import ROOT, ParastreamServer, ServerProcess, free_port

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
MAX_NODES = 2  # deploy/haproxy.cfg names two servers; a one-node run leaves the second in maintenance


class RedisServer(ServerProcess):
    """`redis-server` on loopback, in memory only (no RDB, no AOF)."""

    def __init__(self) -> None:
        port = free_port()
        argv = [_need("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(argv, port=port, name="redis")
        self.url = f"redis://127.0.0.1:{port}/0"

    def wait_ready(self, timeout: float | None = None) -> None:
        _wait_port(self, self.port, timeout or 20)


class HAProxy(ServerProcess):
    """HAProxy on deploy/haproxy.cfg in the foreground (`-db`), with the nodes' addresses in its environment."""

    def __init__(self, nodes: list[ParastreamServer], agent_ports: list[int], workdir: Path) -> None:
        port = free_port()
        self.stats_socket = workdir / "haproxy.sock"
        env = {"PARASTREAM_LB_BIND": f"127.0.0.1:{port}", "HAPROXY_STATS_SOCKET": str(self.stats_socket)}
        for i in range(MAX_NODES):
            # An absent second node points at a closed port and is disabled once HAProxy is up (`disable_unused`).
            env[f"PARASTREAM_NODE{i + 1}"] = f"127.0.0.1:{nodes[i].port if i < len(nodes) else free_port()}"
            env[f"PARASTREAM_NODE{i + 1}_AGENT"] = str(agent_ports[i] if i < len(nodes) else free_port())
        super().__init__([_need("haproxy"), "-db", "-f", str(HAPROXY_CFG)], env, port=port, name="haproxy")
        self.used = len(nodes)

    def wait_ready(self, timeout: float | None = None) -> None:
        _wait_port(self, self.port, timeout or 20)
        for i in range(self.used, MAX_NODES):
            self.command(f"disable server nodes/node{i + 1}")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """Each server's row of `show stat` (status, weight, current sessions...)."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "nodes" and row["svname"].startswith("node")}


class Cluster:
    """Redis, `nodes` Parastream nodes (named node1, node2...) and HAProxy in front of them.

    `settings` go to every node (`k=v` as PARASTREAM_K); `pin` runs node i on core i (taskset), as the benchmark
    does."""

    def __init__(self, model_dir: Path, *, nodes: int = 2, pin: bool = False, **settings: Any) -> None:
        assert 1 <= nodes <= MAX_NODES
        self.model_dir = model_dir
        self.count = nodes
        self.pin = pin
        self.settings = {"workers": 1, "cluster_replicate_strides": 2, "cluster_node_ttl_s": 2.0, **settings}
        self.workdir = Path(tempfile.mkdtemp(prefix="parastream-cluster-"))
        self.redis = RedisServer()
        self.agent_ports = [free_port() for _ in range(nodes)]
        self.nodes = [self._node(i) for i in range(nodes)]
        self.haproxy = HAProxy(self.nodes, self.agent_ports, self.workdir)
        self.url = self.haproxy.base_url

    def _node(self, i: int) -> ParastreamServer:
        node = ParastreamServer(
            self.model_dir,
            name=f"node{i + 1}",
            cluster_redis=self.redis.url,
            cluster_node=f"node{i + 1}",
            cluster_agent_port=self.agent_ports[i],
            **self.settings,
        )
        if self.pin:
            node.argv = [_need("taskset"), "-c", str(i), *node.argv]
        return node

    def restart(self, i: int) -> ParastreamServer:
        """Start node i again (after it was killed or drained), on the same port and name."""
        old = self.nodes[i]
        old.kill()
        node = self._node(i)
        node.port, node.base_url = old.port, old.base_url
        node.env["PARASTREAM_PORT"] = str(old.port)
        self.nodes[i] = node
        node.start()
        return node

    def __enter__(self) -> Self:
        try:
            self.redis.start()
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready()
            self.haproxy.start()
            self.wait_routed()
        except BaseException:
            self.close()
            raise
        return self

    def wait_routed(self, timeout: float = 30.0) -> None:
        """Until HAProxy has every running node up with its agent's weight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.haproxy.servers()
            up = [n for n in range(self.count) if self.nodes[n].proc and self.nodes[n].proc.poll() is None]
            if all(rows[f"node{n + 1}"]["status"] == "UP" and rows[f"node{n + 1}"]["check_status"] for n in up):
                return
            time.sleep(0.2)
        raise TimeoutError(f"HAProxy did not route to every node in {timeout:g} s: {self.haproxy.servers()}")

    def node_of(self, response: httpx.Response) -> int:
        """Which node answered (from X-Parastream-Node), as an index into `nodes`."""
        return int(response.headers["X-Parastream-Node"].removeprefix("node")) - 1

    def close(self) -> None:
        for server in (self.haproxy, *self.nodes, self.redis):
            with contextlib.suppress(Exception):
                server.close(strict=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def remove_logs(self) -> None:
        for server in (self.haproxy, *self.nodes, self.redis):
            server.remove_log()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise RuntimeError(f"{program} is not installed (Debian: apt-get install {program}; `make system-deps`)")
    return path


def _wait_port(server: ServerProcess, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{server.name} is not listening on {port} after {timeout:g} s:\n{server.log()}")

