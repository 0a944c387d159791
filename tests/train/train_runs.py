"""Helpers of the training tests: runs of `refpose train` in this process or under torchrun on
loopback, with timeouts so that a hang fails a test instead of CI."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def train_args(ds, out, *extra):
    """`refpose train` on a set from `refpose synth`: tiny config, in-process loading, one thread."""
    return ["train", "--config", "tiny", "--train-ann", str(ds / "annotations.json"),
            "--train-images", str(ds / "images"), "--out", str(out), "--workers", "0", "--threads", "1",
            "--no-progress", *[str(x) for x in extra]]


def fails(capsys, argv, match):
    """The command exits with status 2 and one line on stderr that contains `match`."""
    from refpose.cli import main

    try:
        status = main(argv)
    except SystemExit as e:                   # argparse's usage errors
        status = e.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    return err[0]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launch: list[list[str]], argvs: list[list[str]], env=None, timeout=240):
    """Start one `torchrun ... -m refpose ARGV` per entry (each in its own process group) and wait
    for all; returns [(status, stderr, seconds from start to its exit)]. A process still running
    at `timeout` fails the test; every group is killed at the end whatever happened."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *how, "-m", "refpose", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
             for how, argv in zip(launch, argvs)]
    done = [None] * len(procs)
    try:
        while any(d is None for d in done):
            if time.monotonic() - start > timeout:
                pytest.fail(f"torchrun still running after {timeout} s: a hang")
            for i, p in enumerate(procs):
                if done[i] is None and p.poll() is not None:
                    done[i] = time.monotonic() - start
            time.sleep(0.1)
        return [(p.returncode, p.stderr.read(), t) for p, t in zip(procs, done)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def two_nodes(argvs, env=None, timeout=240):
    """Two torchrun "nodes" on loopback, one process each (node ranks 0 and 1)."""
    port = free_port()
    launch = [["--nnodes", "2", "--node_rank", str(r), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "--nproc_per_node", "1"] for r in (0, 1)]
    return torchrun(launch, argvs, env, timeout)


def one_node(argv, nproc=2, env=None, timeout=240):
    port = free_port()
    return torchrun([["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                      "--nproc_per_node", str(nproc)]], [argv], env, timeout)[0]
