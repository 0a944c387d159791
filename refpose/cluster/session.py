"""Joining a Ray cluster, with a time-out, and sizing an actor pool to its CPUs."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass

from ..errors import RefposeError

CONNECT_TIMEOUT = 15.0      # seconds to reach a cluster's address before giving up
INIT_TIMEOUT = 120.0        # seconds for ray.init itself (a local instance starts in ~5-15 s on 2 cores)


class ClusterError(RefposeError):
    """Ray is missing, the cluster cannot be reached, or it cannot hold the pool asked for."""


@dataclass(frozen=True)
class Pool:
    """The actors of a `map_batches`: MIN to MAX of them, each holding `threads` CPUs."""

    min_size: int
    max_size: int
    threads: int

    def describe(self) -> str:
        size = str(self.min_size) if self.min_size == self.max_size else f"{self.min_size}-{self.max_size}"
        actors, threads = "actors" if self.max_size > 1 else "actor", "threads" if self.threads > 1 else "thread"
        return f"{size} {actors} x {self.threads} {threads}"


def import_ray():
    """The `ray` module with Ray Data, or a ClusterError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ClusterError("--ray needs Ray Data, which is not installed: pip install 'refpose[ray]' "
                           "(the ray extra)") from None
    return ray


def resolve_address(address: str) -> str | None:
    """The HOST:PORT (or ray://HOST:PORT) to join; None for a private local instance."""
    if address == "local":
        return None
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or _current_cluster()
        if not address:
            raise ClusterError("--ray auto: no Ray cluster to join: RAY_ADDRESS is not set and no cluster "
                               "started with `ray start --head` runs on this machine")
    return address


def _current_cluster() -> str | None:
    """The address `ray start --head` leaves in its temporary folder (/tmp/ray/ray_current_cluster)."""
    import tempfile

    for root in {"/tmp", tempfile.gettempdir()}:
        try:
            with open(os.path.join(root, "ray", "ray_current_cluster"), encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            continue
    return None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """ClusterError unless a TCP connection to the address opens within `timeout` seconds (ray.init
    itself retries an unreachable address for minutes)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ClusterError(f"{address}: not a Ray address (HOST:PORT or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ClusterError(f"{address}: cannot reach a Ray cluster there within {timeout:g} s: {reason}") from None


@contextlib.contextmanager
def ray_session(address: str, timeout: float = CONNECT_TIMEOUT):
    """Join (or, for `local`, start) a Ray cluster for the block; yields the `ray` module.

    The connection is tried for `timeout` seconds; ray.init is given INIT_TIMEOUT more, after
    which the process says so on one line and exits with status 2 (ray.init cannot be cancelled).
    Ray's own logging is kept to errors, and Ray Data's progress bars are off (the command has
    its own)."""
    if address == "local":
        # a private instance talks on the loopback address (Ray takes the machine's outward address
        # otherwise); read when ray is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # the core's C++ log lines (one per actor: "constructor arguments in the object store") stay off
    # stderr; ray.init says that it read the level, on fd 2, and is silenced while it runs
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    from ..pose.imageio import quiet_stderr

    ray = import_ray()
    target = resolve_address(address)
    if target is not None:
        check_reachable(target, timeout)
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if target is None:
        kwargs.update(address="local", num_cpus=os.cpu_count() or 1)
    else:
        kwargs.update(address=target)
    with _deadline(INIT_TIMEOUT, f"{address}: Ray did not start or join within {INIT_TIMEOUT:g} s"):
        try:
            with quiet_stderr():
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"--ray {address}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _deadline(seconds: float, message: str):
    """Exit the process with status 2 and `message` if the block has not finished after `seconds`."""
    done = threading.Event()
    try:
        err = os.dup(2)                       # stderr as it is now (the block may silence fd 2)
    except OSError:
        err = None

    def expire():
        if not done.wait(seconds):
            if err is not None:
                os.write(err, f"refpose: error: {message}\n".encode())
            os._exit(2)

    watcher = threading.Thread(target=expire, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        if err is not None:
            os.close(err)


def cluster_cpus(ray) -> tuple[float, float]:
    """(CPUs of the whole cluster, CPUs of its largest node), of the nodes alive now."""
    nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return float(sum(nodes)), float(max(nodes, default=0.0))


def plan_pool(ray, workers: tuple[int, int] | None, threads: int, jobs: int) -> Pool:
    """The pool to run `jobs` batches on: `workers` (MIN, MAX) actors of `threads` CPUs, by default
    as many as the cluster's CPUs hold; refused (ClusterError) when it cannot be scheduled: an
    actor needs a node with `threads` CPUs, and the MIN actors all together must fit the cluster
    (a larger MAX waits for the autoscaler). No more actors than batches are started."""
    total, largest = cluster_cpus(ray)
    if threads > largest:
        raise ClusterError(f"an actor of --threads {threads} needs a node with {threads} CPUs; the largest "
                           f"node of the cluster has {largest:g}")
    if workers is None:
        n = max(1, int(total // threads))
        workers = (n, n)
    lo, hi = workers
    if lo * threads > total:
        raise ClusterError(f"a pool of {lo} actors x {threads} threads needs {lo * threads} CPUs; the cluster "
                           f"has {total:g}: give fewer --workers or --threads")
    hi = max(1, min(hi, jobs))
    return Pool(min(lo, hi), hi, threads)
