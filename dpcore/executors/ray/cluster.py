"""The Ray cluster: connecting to it (refusing at once an address where nothing listens), its nodes and free
CPUs/GPUs, and whether a run's request fits any node."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from dpcore.config import Config
from dpcore.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0


def ray_address(cfg: Config) -> str | None:
    """``run.ray_address``, else ``$RAY_ADDRESS``, else None (a local Ray instance)."""
    return cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> None:
    """Connect this process to the cluster at ``address`` (None: start or join a local instance)."""
    reachable(address)
    try:
        import ray
    except ImportError:
        raise ConfigError("run.executor = 'ray' needs the ray package; pip install 'dpcore[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "(a local instance)"
        raise ConfigError(f"cannot connect to the Ray cluster {where}: {str(err).splitlines()[0]}; start one with "
                          "`ray start --head`, or set run.ray_address / RAY_ADDRESS (--ray-address)") from None


def reachable(address: str | None) -> None:
    """Refuse at once (within :data:`CONNECT_TIMEOUT_S`) a cluster address where nothing listens: Ray itself
    retries for minutes, printing connection warnings."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    how = "start one with `ray start --head` (it prints the address), or set run.ray_address / RAY_ADDRESS (--ray-address)"
    if not host or not port.isdigit():
        raise ConfigError(f"Ray cluster address {address!r} is not HOST:PORT; {how}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}); {how}") from None


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterStatus:
    address: str
    nodes: list[NodeInfo]
    free_cpus: float
    free_gpus: float

    @property
    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]

    def line(self) -> str:
        alive = self.alive
        return (f"{len(alive)} node{'s' if len(alive) != 1 else ''}, {sum(n.cpus for n in alive):g} CPUs "
                f"({self.free_cpus:g} free), {sum(n.gpus for n in alive):g} GPUs ({self.free_gpus:g} free)")


def cluster_status(address: str | None = None) -> ClusterStatus:
    """The cluster's nodes and free CPUs/GPUs (connecting first)."""
    import ray

    connect(address)
    nodes = [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", ""), bool(n.get("Alive")),
                      float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
             for n in ray.nodes()]
    free = ray.available_resources()
    return ClusterStatus(address or "local", nodes, float(free.get("CPU", 0)), float(free.get("GPU", 0)))


def check_resources(cfg: Config, status: ClusterStatus) -> None:
    """Refuse, before any work, a per-run request no node of the cluster can ever satisfy."""
    alive = status.alive
    if cfg.run.gpus_per_run > 0 and not any(n.gpus >= min(cfg.run.gpus_per_run, 1.0) for n in alive):
        raise ConfigError(f"run.gpus_per_run = {cfg.run.gpus_per_run:g}, but no node of the Ray cluster has a GPU "
                          f"({status.line()}); set run.gpus_per_run = 0 to run on CPUs")
    if not any(n.cpus >= cfg.run.cpus_per_run for n in alive):
        raise ConfigError(f"run.cpus_per_run = {cfg.run.cpus_per_run:g}, but no node of the Ray cluster has that "
                          f"many CPUs ({status.line()}); lower run.cpus_per_run")
