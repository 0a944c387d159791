"""Finding and sizing a Ray cluster (refpose/cluster/session.py), without starting one."""
import socket
import time

import pytest

from refpose.cluster import session
from refpose.cluster.session import ClusterError, Pool, check_reachable, plan_pool, resolve_address


class FakeRay:
    """What plan_pool reads of a cluster: its nodes' CPUs."""

    def __init__(self, *cpus):
        self._nodes = [{"Alive": True, "Resources": {"CPU": float(c)}} for c in cpus]
        self._nodes.append({"Alive": False, "Resources": {"CPU": 64.0}})       # a dead node counts for nothing

    def nodes(self):
        return self._nodes


def test_pool_defaults_to_the_clusters_cpus_and_never_exceeds_the_batches():
    assert plan_pool(FakeRay(1, 1), None, 1, 100) == Pool(2, 2, 1)
    assert plan_pool(FakeRay(4, 4), None, 2, 100) == Pool(4, 4, 2)
    assert plan_pool(FakeRay(4, 4), None, 1, 3) == Pool(3, 3, 1)
    assert plan_pool(FakeRay(2), (1, 8), 1, 100) == Pool(1, 8, 1)          # a range waits for the autoscaler


def test_a_pool_the_cluster_cannot_schedule_is_refused():
    # two 1-CPU actors fill a 2-CPU machine; a third would wait for ever
    with pytest.raises(ClusterError, match="a pool of 3 actors x 1 threads needs 3 CPUs; the cluster has 2"):
        plan_pool(FakeRay(1, 1), (3, 3), 1, 100)
    with pytest.raises(ClusterError, match="--threads 2 needs a node with 2 CPUs; the largest node .* has 1"):
        plan_pool(FakeRay(1, 1), None, 2, 100)


def test_an_address_nobody_answers_is_refused_within_the_time_out():
    with socket.socket() as s:                  # a port that was free a moment ago: nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ClusterError, match=f"127.0.0.1:{port}: cannot reach a Ray cluster there within 2 s"):
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
    assert time.perf_counter() - start < 5


def test_auto_without_a_cluster_says_so(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(session, "_current_cluster", lambda: None)
    with pytest.raises(ClusterError, match="no Ray cluster to join: RAY_ADDRESS is not set"):
        resolve_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert resolve_address("auto") == "127.0.0.1:1"
    assert resolve_address("local") is None


def test_ray_missing_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` raises ImportError
    with pytest.raises(ClusterError, match=r"pip install 'refpose\[ray\]' \(the ray extra\)"):
        session.import_ray()
