"""The files of `refpose infer` (refpose/pose/files.py): what a folder gives as inputs, and the
leftovers of a killed run, which are neither inputs nor kept."""
import os
import subprocess
import sys

import cv2
import numpy as np

from refpose.cli import main
from refpose.pose.files import collect_inputs


def _video(path, frames=3, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()


def test_refposes_temporary_names_are_not_inputs(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    for name in (".a.pose.json.0123456789ab.tmp", ".b.pose.0123456789ab.tmp.png", ".c.png",
                 ".long.pose.0123456789ab.tmp.mp4", ".x.png.0123456789ab.old"):
        (tmp_path / name).write_bytes((tmp_path / "a.jpg").read_bytes())
    jobs, problems = collect_inputs([str(tmp_path)])
    assert problems == []
    assert jobs == [str(tmp_path / n) for n in (".c.png", "a.jpg")]     # a user's hidden image is one


def test_a_killed_runs_leftovers_are_skipped_and_removed(tmp_path, capfd):
    """`refpose infer clips --out clips` after a SIGKILL: the hidden .long.pose.<hex>.tmp.mp4 was
    taken for an input video (exit 1) and stayed."""
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "long.avi")
    for leftover in (".long.pose.0123456789ab.tmp.mp4", ".long.pose.0123456789ab.tmp.jsonl"):
        (clips / leftover).write_bytes(b"half a file")
    assert main(["infer", str(clips), "--config", "tiny", "--out", str(clips)]) == 0, capfd.readouterr().err
    assert sorted(os.listdir(clips)) == ["long.avi", "long.pose.jsonl", "long.pose.mp4"]


def test_a_live_runs_temporary_files_are_left_alone(tmp_path):
    """A temporary file held by a running refpose (its lock) is not removed by another run."""
    out = tmp_path / "out"
    out.mkdir()
    live = out / ".a.pose.json.0123456789ab.tmp"
    live.write_bytes(b"being written")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from refpose.fileio import hold; "
                               "fd = hold(sys.argv[1]); print(fd is not None, flush=True); time.sleep(60)", str(live)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 16, 3), np.uint8))
        assert main(["infer", str(tmp_path / "a.png"), "--config", "tiny", "--out", str(out)]) == 0
        assert live.read_bytes() == b"being written"
    finally:
        holder.kill()
        holder.wait()
