"""Ray instances for the tests: a cluster of two nodes on this machine, on a loopback address.

Ray takes a machine's outward address for a node given 127.0.0.1 (it treats that name as "this
host"), so the nodes are given 127.0.0.2: a loopback address too (127.0.0.0/8), which Ray keeps.
Every `ray start` runs in a process group of its own; stopping the cluster ends those groups
(SIGTERM, then SIGKILL), so no other Ray on the machine is touched. Ports are picked free, the
temporary folder is the test's own, token authentication is off (loopback only).
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODE_IP = "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


class TwoNodes:
    """`ray start --head` and one more `ray start --address`, each with 1 CPU."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.groups = tmp, free_port(), []
        self.address = f"{NODE_IP}:{self.port}"

    def _start(self, args: list[str]) -> None:
        common = ["--node-ip-address", NODE_IP, "--num-cpus", "1", "--disable-usage-stats",
                  "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port())]
        log = open(self.tmp / f"ray-start-{len(self.groups)}.log", "w")
        p = subprocess.Popen([RAY, "start", *args, *common], stdout=log, stderr=subprocess.STDOUT,
                             env=ray_env(), start_new_session=True)
        self.groups.append(p.pid)                  # its own session: the group id is its pid
        if p.wait(timeout=120) != 0:
            raise RuntimeError(f"ray start failed: {(self.tmp / log.name).read_text()[-2000:]}")

    def start(self) -> "TwoNodes":
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     "--temp-dir", str(self.tmp / "ray")])
        self._start(["--address", self.address])
        deadline = time.time() + 60
        while self.alive_nodes() < 2:
            if time.time() > deadline:
                raise RuntimeError("the second node did not join within 60 s")
            time.sleep(1)
        return self

    def alive_nodes(self) -> int:
        r = subprocess.run([sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='ERROR'); "
                            "print(sum(n['Alive'] for n in ray.nodes()))"],
                           capture_output=True, text=True, env=ray_env(RAY_ADDRESS=self.address), timeout=120)
        return int(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else 0

    def stop(self) -> None:
        """SIGTERM to the groups, SIGKILL to what is left of them after 5 s."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            alive = [g for g in self.groups if _signal_group(g, sig)]
            deadline = time.time() + wait
            while alive and time.time() < deadline:
                time.sleep(0.1)
                alive = [g for g in alive if _signal_group(g, 0)]


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group (0: only look); whether the group still has a process."""
    try:
        os.killpg(group, sig)
        return True
    except ProcessLookupError:
        return False
