"""Crash consistency: `refpose eval --images` and `refpose infer` (a folder of images, and a video)
killed with SIGKILL at random moments, then run again with the same command, end with the same
files as a run that was never interrupted, and with no temporary file left anywhere.

SIGKILL cannot be caught: what a killed run leaves is whatever was on disk at that instant (a
half-written temporary file, a torn progress line, a set of outputs half renamed). The rerun must
repair or ignore all of it: eval resumes from its progress file (a torn last line cut), infer
writes every output again, and both remove the temporary files the killed run left
(`refpose.fileio.sweep_temporaries`). The moments are drawn from a seeded generator over the
work an uninterrupted run does (the bytes it writes under its output folder, temporary files
included: a kill waits for the run to get that far, so it lands mid-work however fast the machine
is), so a failure is reproducible; each command is killed three times in a row before the run
that completes. The tiny config keeps a run to a few seconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

KILLS = 3                      # interrupted runs before the one that completes
SEED = 23


def written(folder: Path) -> int:
    """Bytes in every file under `folder`, temporary ones included: how far a run has got."""
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:                       # renamed or removed between the listing and the stat
            pass
    return total


def refpose(*argv, cwd, kill_at: int | None = None) -> tuple[int, int, str]:
    """`python -m refpose ARGV` in `cwd`, SIGKILLed as soon as its `out` folder holds `kill_at`
    bytes or more, and at least one byte more than when it started (a rerun finds a killed run's
    files there): (status, the most bytes seen under `out` while it ran, stderr)."""
    out, most = Path(cwd) / "out", 0
    if kill_at is not None:
        kill_at = max(kill_at, (written(out) if out.exists() else 0) + 1)
    p = subprocess.Popen([sys.executable, "-m", "refpose", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    while p.poll() is None:
        most = max(most, written(out) if out.exists() else 0)
        if kill_at is not None and most >= kill_at:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = p.communicate(timeout=600)
    return p.returncode, most, err


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    """Hidden files and folders under `folder`: refpose's temporary names all start with a dot."""
    return [str(p) for p in folder.rglob(".*")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic dataset of 12 small images, and a 60-frame video made of them."""
    root = tmp_path_factory.mktemp("crash")
    code, _, err = refpose("synth", "ds", "--images", "12", "--seed", "3", "--size", "128x96", "--quiet", cwd=root)
    assert code == 0, err
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (128, 96))
    images = sorted((root / "ds" / "images").iterdir())
    for i in range(60):
        writer.write(cv2.imread(str(images[i % len(images)])))
    writer.release()
    return root


COMMANDS = {
    "eval": (["eval", "--ann", "../ds/annotations.json", "--images", "../ds/images", "--config", "tiny",
              "--results-out", "out/res.json", "--json"], ["res.json"]),
    "infer-images": (["infer", "../ds/images", "--config", "tiny", "--out", "out"], None),
    "infer-video": (["infer", "../clip.avi", "--config", "tiny", "--out", "out"],
                    ["clip.pose.jsonl", "clip.pose.mp4"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_runs_then_a_rerun_give_an_uninterrupted_runs_files(data, name):
    argv, expected = COMMANDS[name]
    reference = data / f"{name}-reference"
    reference.mkdir()
    code, most, err = refpose(*argv, cwd=reference)
    assert code == 0 and most > 0, err
    want = files(reference / "out")
    if expected is not None:
        assert sorted(want) == expected
    else:
        assert len(want) == 2 * 12                             # <stem>.pose.json and .pose.png per image

    rng = np.random.default_rng(SEED + sorted(COMMANDS).index(name))
    run = data / f"{name}-killed"
    run.mkdir()
    moments, killed = [], 0
    for _ in range(KILLS):
        moments.append(int(rng.uniform(1, 0.9 * most)))       # bytes written: the work is under way
        code, _, _ = refpose(*argv, cwd=run, kill_at=moments[-1])
        killed += code == -signal.SIGKILL
    assert killed, f"no run was under way at {moments} bytes: the test interrupted nothing"
    code, _, err = refpose(*argv, cwd=run)
    assert code == 0, f"killed at {moments} bytes: {err}"
    got = files(run / "out")
    assert sorted(got) == sorted(want), f"killed at {moments} bytes"
    differ = [k for k in want if got[k] != want[k]]
    assert differ == [], f"killed at {moments} bytes: {differ} differ from the uninterrupted run's"
    assert hidden(run) == [] and hidden(data) == [], f"killed at {moments} bytes"
