"""Several processes: two torchrun "nodes" on loopback with node-local run folders, faults on one
rank, validation split over ranks, and the launcher's environment (refpose.train.distributed).

Every torchrun is started with a timeout and killed at the end (train_runs.torchrun), so a hang
fails its test instead of stopping CI.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from train_runs import fails, metrics, one_node, train_args, two_nodes

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]
HELD = ROOT / "tests" / "assets" / "synth_heldout"


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _run(small_set, out, *extra):
    # 50 persons over 2 ranks, batch 4: 6 steps per epoch; --workers 1 exercises the persistent loader
    argv = train_args(small_set, out, "--epochs", 3, "--batch", 4, "--device", "cpu", "--deterministic",
                      "--seed", 3, "--log-every", 2, *extra)
    argv[argv.index("--workers") + 1] = "1"
    return argv


@pytest.mark.slow
def test_two_nodes_with_node_local_folders_resume_and_match_one_node(small_set, tmp_path):
    # node 0 and node 1 each get their own --out; rank 0 alone writes (node 0's folder) and, on
    # --resume, reads last.pt and hands it to node 1, whose folder stays empty
    val = ["--val-ann", small_set / "annotations.json", "--val-images", small_set / "images", "--val-every", 1]
    outs = [tmp_path / "node0", tmp_path / "node1"]
    first = two_nodes([_run(small_set, o, "--max-steps", 4, *val) for o in outs])
    assert [status for status, _, _ in first] == [0, 0], first[0][1][-2000:] + first[1][1][-2000:]
    assert _state(outs[0] / "last.pt")["step"] == 4 and not outs[1].exists()
    resumed = two_nodes([_run(small_set, o, "--max-steps", 8, "--resume", *val) for o in outs])
    assert [status for status, _, _ in resumed] == [0, 0], resumed[0][1][-2000:] + resumed[1][1][-2000:]
    assert "resuming" in resumed[0][1] and not outs[1].exists()
    # rank 0 alone speaks, and says how the batch is made up
    assert "2 process(es) on cpu, batch 4 each = effective batch 8" in first[0][1]
    assert "refpose train: tiny," not in first[1][1]
    info = json.loads((outs[0] / "run.json").read_text())
    assert info["world_size"] == 2 and info["effective_batch"] == 8
    straight = one_node(_run(small_set, tmp_path / "one", "--max-steps", 8, *val))
    assert straight[0] == 0, straight[1][-2000:]
    a, b = _state(outs[0] / "last.pt"), _state(tmp_path / "one" / "last.pt")
    assert a["step"] == b["step"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # the validation at the end of epoch 1 (step 6, in the resumed run) gave the same figures
    val_a = [r["val"] for r in metrics(outs[0]) if "val" in r]
    val_b = [r["val"] for r in metrics(tmp_path / "one") if "val" in r]
    assert len(val_a) == 1 and val_a == val_b
    # every metrics row of the two runs agrees but for the timings
    rows = [[{k: v for k, v in r.items() if k in ("step", "loss", "lr")} for r in metrics(o) if "loss" in r]
            for o in (outs[0], tmp_path / "one")]
    assert rows[0] == rows[1]


FAULTS = {"raise": "fault injected by REFPOSE_TRAIN_FAULT at step 3",
          "oom": "out of GPU memory at step 3 with --batch 4 per device",
          "nan": "the loss became NaN or infinite at step 3",
          "write": "cannot write the run folder (fault injected"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FAULTS))
def test_a_fault_on_one_rank_ends_every_rank_with_the_same_line(small_set, tmp_path, kind):
    # rank 1 fails during step 3 (for `write`, rank 0 fails to write at the first epoch end); the
    # other node must not wait for it: both exit within 30 s of each other, with the same status
    # and the same error line
    who = "rank0" if kind == "write" else "rank1"
    outs = [tmp_path / "node0", tmp_path / "node1"]
    runs = two_nodes([_run(small_set, o, "--log-every", 1) for o in outs],
                     env={"REFPOSE_TRAIN_FAULT": f"{who}:step3:{kind}"}, timeout=180)
    statuses = [status for status, _, _ in runs]
    assert statuses[0] == statuses[1] != 0, statuses
    lines = [[line for line in err.splitlines() if line.startswith("refpose train: error:")] for _, err, _ in runs]
    assert len(lines[0]) == len(lines[1]) == 1, lines
    assert lines[0] == lines[1] and FAULTS[kind] in lines[0][0], lines
    assert abs(runs[0][2] - runs[1][2]) < 30, [t for _, _, t in runs]


def test_an_fp16_overflow_is_skipped_not_fatal(small_set, tmp_path, monkeypatch):
    # float16 AMP (on the CPU here) with gradients that overflow at step 2: GradScaler skips that
    # step and halves its scale; the run goes on. Adam's own step count shows the skipped step
    from refpose.cli import main

    out = tmp_path / "amp"
    monkeypatch.setenv("REFPOSE_TRAIN_FAULT", "rank0:step2:fp16-overflow")
    assert main(train_args(small_set, out, "--batch", 2, "--epochs", 1, "--max-steps", 3, "--log-every", 1,
                           "--amp", "--device", "cpu")) == 0
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["amp_scale"] for r in rows] == [65536.0, 32768.0, 32768.0]
    assert all(np.isfinite(r["loss"]) for r in rows)
    ckpt = _state(out / "last.pt")
    assert ckpt["step"] == 3 and ckpt["optimizer"]["state"][0]["step"] == 2


VALIDATE = """
import json, sys
import torch
import refpose
from refpose.porting.twin import WGNetTwin
from refpose.train.distributed import init_distributed, close
from refpose.train.validate import Validation

held, out = sys.argv[1], sys.argv[2]
dd = init_distributed("cpu")
model = WGNetTwin("tiny")
model.load_numpy(refpose.read_weights("tiny-synthetic").tensors)
result = Validation(held + "/annotations.json", held + "/images", None).run(model, dd, out + "/results.json")
if dd.main:
    open(out + "/stats.json", "w").write(json.dumps(result.stats))
close(dd)
"""


@pytest.mark.slow
def test_validation_split_over_two_ranks_gives_the_figures_of_one_process(tmp_path):
    # the shipped trained tiny weights on the 30 held-out images (AP about 0.4, so the figures
    # mean something): two ranks, each with half of the images, against one process with all
    import os
    import subprocess

    from train_runs import free_port

    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    stats = {}
    for n in (2, 1):
        out = tmp_path / str(n)
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "--nproc_per_node", str(n), str(script), str(HELD), str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert p.returncode == 0, p.stderr[-2000:]
        stats[n] = json.loads((out / "stats.json").read_text())
    assert stats[1]["AP"] > 0.3                  # the trained weights find the figures
    assert stats[2] == stats[1]
    # and they are `refpose eval --images`'s figures with refpose's own NumPy network: the twin's
    # heatmaps agree with it to ~1e-6 of their peak, so at most a keypoint on a rounding edge
    # could move one of 79 matches (measured when written: equal to the last digit)
    from refpose.data.evaluate import ModelSpec, evaluate_images

    ref = evaluate_images(HELD / "annotations.json", HELD / "images", tmp_path / "eval.json",
                          model=ModelSpec(weights="tiny-synthetic"), progress=False).stats
    assert stats[1] == pytest.approx(ref, abs=2e-3)


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=5, LOCAL_RANK=0 do not fit WORLD_SIZE=2"),
])
def test_a_launcher_environment_that_does_not_fit_is_one_line(small_set, tmp_path, capsys, monkeypatch, env, match):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fails(capsys, train_args(small_set, tmp_path / "r"), match)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_last_pt_on_the_agreed_step(small_set, tmp_path):
    # a scheduler's preemption: SIGTERM to torchrun, which forwards it to its workers; they finish
    # the step in progress, agree on the step to stop after, rank 0 saves last.pt; --resume continues
    import os
    import signal
    import subprocess
    import time

    from train_runs import free_port

    out = tmp_path / "run"
    argv = _run(small_set, out, "--log-every", 1, "--epochs", 50)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--nproc_per_node", "2", "-m", "refpose", *argv]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 180
        while not _logged_steps(out) >= 2:
            assert time.monotonic() < deadline and p.poll() is None, "the run did not start"
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert "--resume continues" in err, err[-2000:]
    step = _state(out / "last.pt")["step"]
    assert 2 <= step < 50 * 6
    assert json.loads((out / "run.json").read_text())["finished"] == "interrupted"


def _logged_steps(out) -> int:
    try:
        return len([r for r in metrics(out) if "loss" in r])
    except (OSError, ValueError):             # not there yet, or a line being written
        return 0
