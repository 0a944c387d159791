"""A child process that runs the fast path the way another program would: with torch imported
before refpose (a porter's test suite, the conformance suite's `python:` backends), with torch's
forward or a NumPy matmul run right before each of refpose's, or with nothing else loaded.

`refpose bench --torch-first` times such children as candidates of its rounds (`WorkerCandidate`):
the parent asks for one forward at a time, the child waits until it is idle, runs what comes
before (torch's forward, or a two-thread sgemm), then times refpose's forward itself and sends
the time and the output back. The import order is the point, so the child is a fresh
interpreter started with `-c` and the imports in the order asked for, not a fork of the bench.

Protocol: pickled (command, argument) tuples on the child's stdin, pickled replies on its stdout
(the child's own prints go to stderr).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass

BEFORE = ("nothing", "torch", "sgemm")      # what runs right before each timed forward


@dataclass(frozen=True)
class WorkerSpec:
    config: str
    batch: int
    threads: int
    seed: int
    torch_first: bool = False          # import torch before refpose
    before: str = "nothing"            # one of BEFORE
    kernel_threads: int | None = None  # force the kernels' thread count (default: refpose's rule for `threads`)
    layer: str | None = None           # force Numba's threading layer (default: refpose's rule)


def _serve(spec: WorkerSpec) -> None:
    """The child's loop (torch already imported, if asked, by the -c prelude)."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())          # stray prints must not break the protocol
    inp = sys.stdin.buffer
    import time

    import numba
    import numpy as np

    from ...config import get_config
    from ...threads import set_kernel_threads
    from ...weights import from_tensors, init_weights
    from .candidates import bench_input, torch_candidate
    from .environment import wait_until_idle

    if spec.layer is not None:
        numba.config.THREADING_LAYER = spec.layer
    cfg = get_config(spec.config)
    tensors = init_weights(cfg, spec.seed)
    x = bench_input(cfg, spec.batch, spec.seed)
    model = from_tensors(tensors, cfg, "float32", "fast")
    set_kernel_threads(spec.threads)
    if spec.kernel_threads is not None:
        numba.set_num_threads(spec.kernel_threads)
    before = lambda: None                                       # noqa: E731
    if spec.before == "torch" or spec.torch_first:
        import torch

        torch.set_num_threads(spec.threads)
    if spec.before == "torch":
        before = torch_candidate(tensors, cfg, x, spec.threads).forward
    elif spec.before == "sgemm":
        from threadpoolctl import threadpool_limits

        from .candidates import sgemm_candidate

        threadpool_limits(spec.threads, user_api="blas")
        sgemm = sgemm_candidate(seed=spec.seed).forward
        before = lambda: [sgemm() for _ in range(8)]            # noqa: E731  (~10-20 ms of OpenBLAS)
    model(x)                                                    # compile or load the kernels
    from ...threads import policy

    pickle.dump(("ready", {"kernel_threads": numba.get_num_threads(), "layer": numba.threading_layer(),
                           "openmp_loaded_first": policy().openmp_spins}), out)
    out.flush()
    while True:
        try:
            cmd, arg = pickle.load(inp)
        except EOFError:
            return
        if cmd == "quit":
            return
        if cmd == "forward":                                    # arg: return the output too
            wait_until_idle()
            t = time.perf_counter()
            before()
            t1 = time.perf_counter()
            y = model(x)
            dt = time.perf_counter() - t1
            reply = (dt, np.asarray(y) if arg else None, t1 - t)
        else:
            reply = ("error", f"unknown command {cmd!r}")
        pickle.dump(reply, out)
        out.flush()


class Worker:
    """The parent's handle on one child: `forward()` -> (seconds, output or None)."""

    def __init__(self, spec: WorkerSpec):
        prelude = "import torch\n" if spec.torch_first else ""
        code = (prelude + "import sys, pickle\nfrom refpose.porting.bench.worker import _serve\n"
                "_serve(pickle.loads(bytes.fromhex(sys.argv[1])))\n")
        from ...threads import USER_WAIT_POLICY

        env = dict(os.environ)
        if USER_WAIT_POLICY is None:          # the child starts as the user's programs do: no policy set
            env.pop("OMP_WAIT_POLICY", None)
        self.spec = spec
        self.before_s: list[float] = []            # what ran before each timed forward (torch's forward)
        self.proc = subprocess.Popen([sys.executable, "-c", code, pickle.dumps(spec).hex()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        status, self.state = self._read()
        if status != "ready":
            raise RuntimeError(f"bench worker failed to start: {status}")
        self.kernel_threads = self.state["kernel_threads"]

    def _read(self):
        try:
            return pickle.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"bench worker exited with status {self.proc.wait()}") from None

    def forward(self, output: bool = False):
        """One timed forward in the child: (seconds, output or None, seconds of what ran before it)."""
        pickle.dump(("forward", output), self.proc.stdin)
        self.proc.stdin.flush()
        reply = self._read()
        if reply[0] == "error":
            raise RuntimeError(f"bench worker: {reply[1]}")
        self.before_s.append(reply[2])
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                pickle.dump(("quit", None), self.proc.stdin)
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_candidates(config: str, batch: int, threads: int, seed: int, progress) -> list:
    """The porter's case (`refpose bench --torch-first`): the fast path in three fresh processes
    started alike, one without torch, one that imported torch before refpose and runs torch's
    forward right before each of refpose's, one that imported torch first and leaves it idle.
    Each child times its own forward (`Worker`)."""
    import time

    from .candidates import NO_TORCH, TORCH_FIRST, TORCH_IDLE, Candidate

    specs = [(NO_TORCH, WorkerSpec(config, batch, threads, seed)),
             (TORCH_FIRST, WorkerSpec(config, batch, threads, seed, torch_first=True, before="torch")),
             (TORCH_IDLE, WorkerSpec(config, batch, threads, seed, torch_first=True))]
    cands = []
    try:
        for name, spec in specs:
            progress(f"starting a process: {name}")
            t = time.perf_counter()
            w = Worker(spec)
            cands.append(Candidate(name, lambda w=w: w.forward(output=True)[1], time.perf_counter() - t,
                                   timed=lambda w=w: w.forward()[0], close=w.close, worker=w))
    except BaseException:
        for c in cands:
            c.close()
        raise
    return cands
