"""
A private redis-server for the tests, started from the system binary.

Each `RedisServer` listens on its own free loopback port and keeps its AOF
in a directory of the test's, so a test can stop it, start it again on the
same port and the same data, and never touches a Redis anyone else uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def available() -> bool:
    """Whether the system has a redis-server binary to run."""
    return shutil.which("redis-server") is not None


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all held at once while chosen."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def _free_port() -> int:
    return free_ports(1)[0]


class _PortTaken(RuntimeError):
    """redis-server could not bind one of its ports."""


class RedisServer:
    """
    One redis-server process; `start` and `stop` may alternate.

    Persistence is the strictest the connector supports: no RDB snapshots,
    the AOF fsynced on every write.
    """

    def __init__(
        self,
        directory: Path,
        replica_of: int | None = None,
        options: tuple[str, ...] = (),
        cluster: bool = False,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        # A cluster node's bus port: not the default of the port + 10000,
        # which may be taken or past 65535.
        self.cluster_port = _free_port() if cluster else None
        self.replica_of = replica_of
        self.options = options
        self.process: subprocess.Popen | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """
        Start it.  A port found free can be taken by another socket before
        redis-server binds it; until the server first ran, nobody knows its
        ports, so it is started again on others.
        """
        for attempt in range(1 if self.started else 3):
            try:
                self._start(timeout)
                self.started = True
                return
            except _PortTaken:
                if attempt == 2:
                    raise
                self.port = _free_port()
                if self.cluster_port is not None:
                    self.cluster_port = _free_port()
                    (self.directory / "nodes.conf").unlink(missing_ok=True)

    def _start(self, timeout: float) -> None:
        if self.process is not None:
            return
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - child keeps it
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                *(
                    ["--replicaof", "127.0.0.1", str(self.replica_of)]
                    if self.replica_of is not None
                    else []
                ),
                *self._cluster_options(),
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                failed = _PortTaken if self._port_was_taken() else RuntimeError
                raise failed(
                    f"redis-server on port {self.port} did not start; see "
                    f"{self.directory / 'redis.log'}"
                )
            time.sleep(0.02)

    def _cluster_options(self) -> tuple[str, ...]:
        if self.cluster_port is None:
            return ()
        return (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.directory / "nodes.conf"),
            "--cluster-node-timeout",
            "1000",
            "--cluster-port",
            str(self.cluster_port),
        )

    def _port_was_taken(self) -> bool:
        log = (self.directory / "redis.log").read_text(errors="replace")
        last_start = log.rpartition("Redis is starting")[2]
        return "Address already in use" in last_start

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed host would stop it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class Cluster:
    """
    A Redis Cluster of ``masters`` redis-server processes, each with
    ``replicas`` replicas, made with ``redis-cli --cluster create``; a
    failed master's replica takes over within about two seconds.
    """

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0):
        self.directory = Path(directory)
        self.nodes = [
            RedisServer(self.directory / f"node{index}", cluster=True)
            for index in range(masters * (1 + replicas))
        ]
        self.replicas = replicas
        self.created = False

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes; the first time, make them a cluster."""
        for node in self.nodes:
            node.start()
        if not self.created:
            self._create(timeout)
            self.created = True
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis Cluster did not become ready")
            time.sleep(0.1)

    def _ready(self) -> bool:
        """Every node sees the cluster ok, and every replica has its master."""
        for node in self.nodes:
            if self.state(node) != "ok":
                return False
            info = self.cli(node, "INFO", "replication")
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def _create(self, timeout: float) -> None:
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def state(self, node: RedisServer) -> str:
        """cluster_state of a node: ``ok``, ``fail``, or ``down`` if it is."""
        if node.process is None:
            return "down"
        info = self.cli(node, "CLUSTER", "INFO")
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def cli(self, node: RedisServer, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(node.port), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def master_of(self, slot: int) -> RedisServer:
        """The node serving a hash slot now."""
        for node in self.nodes:
            if node.process is None:
                continue
            for line in self.cli(node, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2] and "master" in fields[2]:
                    for span in fields[8:]:
                        first, _, last = span.partition("-")
                        if first.isdigit() and int(first) <= slot <= int(last or first):
                            return node
        raise LookupError(f"no live master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Sentinel:
    """
    One Redis Sentinel (``redis-server --sentinel``) watching a master, with
    the quick failure detection a test needs.
    """

    def __init__(self, directory: Path, master_port: int, name: str = "mymaster"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.name = name
        self.master_port = master_port
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 500\n"
            f"sentinel failover-timeout {self.name} 3000\n"
        )
        log = open(self.directory / "sentinel.log", "ab")  # noqa: SIM115 - child keeps it
        self.process = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sentinel on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
