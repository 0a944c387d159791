"""`refpose infer --ray` on real Ray instances (refpose/cluster/infer.py, actors.py, shards.py): a
private local instance, and the cluster of two nodes on this machine of conftest.py.

Every run is the console command in a subprocess, as a user runs it. The workload is the
synthetic images of `refpose synth` plus examples/cameraman.jpg, with the tiny-synthetic weights
that ship in the package, 12 person boxes per image and the flip test: about 10 s of work for one
core, long enough to stop a driver or kill an actor while batches are still to run. The records
are compared with those of the local `refpose infer` of the same images and options.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs Ray Data (pip install -e '.[ray]')")

from raycluster import ray_env  # noqa: E402

from refpose.cli import main  # noqa: E402
from refpose.cluster.shards import read_done, read_records  # noqa: E402

pytestmark = pytest.mark.ray

REFPOSE = [sys.executable, "-m", "refpose"]
BOXES = [a for i in range(12) for a in ("--bbox", f"{4 * i},{3 * i},{70 + 5 * i},{100 + 6 * i}")]
OPTIONS = ["--weights", "tiny-synthetic", "--flip", *BOXES]


@pytest.fixture(scope="module")
def local_records(dataset, tmp_path_factory):
    """The records of the local command, each with its file_name (the local command leaves it out
    of an image with a numeric name, whose image_id says which it is)."""
    out = tmp_path_factory.mktemp("local")
    assert main(["infer", str(dataset / "images"), *OPTIONS, "--out", str(out)]) == 0
    records = []
    for path in sorted(out.glob("*.pose.json")):
        stem = path.name[:-len(".pose.json")]
        name = next(p.name for p in (dataset / "images").iterdir() if p.stem == stem)
        records += [{**r, "file_name": r.get("file_name", name)} for r in json.loads(path.read_text())]
    return canonical(records)


def canonical(records):
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def refpose(args, env=None, **kw):
    return subprocess.Popen([*REFPOSE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ray_env(), **kw)


def finish(p, timeout=240):
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, out, err


def done_keys(out):
    return Counter(i["key"] for i in read_done(out))


def wait_for_first_shard(out, p, timeout=180):
    deadline = time.time() + timeout
    while not list(Path(out).glob("part-*.done.json")):
        assert p.poll() is None, "the run ended before its first shard could be seen: " + p.communicate()[1]
        assert time.time() < deadline, "no shard within the time-out"
        time.sleep(0.05)


def test_local_instance_gives_the_records_of_the_local_command(dataset, local_records, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = finish(refpose(["infer", dataset / "images", *OPTIONS, "--ray", "local", "--workers", "2",
                                        "--threads", "1", "--out", out]))
    assert code == 0, err
    assert "21 images done now, 0 by an earlier run, 0 failed" in stdout and "2 actors x 1 thread" in stdout
    assert canonical(read_records(out)) == local_records
    assert set(done_keys(out).values()) == {1} and len(done_keys(out)) == 21
    assert err == "", err                                   # Ray's own chatter stays off the terminal


def test_two_nodes_both_work_and_give_the_same_records(cluster, dataset, local_records, tmp_path):
    out = tmp_path / "out"
    # three batches for two actors: Ray Data is told to give them out once both actors are up (it
    # starts handing out batches as soon as one is, by default), so that each node gets one
    env = ray_env(RAY_ADDRESS=cluster.address, RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="120")
    code, stdout, err = finish(refpose(["infer", dataset / "images", *OPTIONS, "--ray", "auto", "--out", out], env=env))
    assert code == 0, err
    assert canonical(read_records(out)) == local_records
    # each image's entry names the node whose actor ran it: both nodes' actors did work
    nodes = Counter(i["node"] for i in read_done(out))
    assert len(nodes) == 2 and "on 2 nodes" in stdout, (nodes, stdout)


def test_a_killed_actor_is_restarted_and_every_image_is_done_once(cluster, dataset, local_records, tmp_path):
    out = tmp_path / "out"
    p = refpose(["infer", dataset / "images", *OPTIONS, "--ray", cluster.address, "--out", out])
    try:
        wait_for_first_shard(out, p)
        victim = read_done(out)[0]["pid"]                   # an actor of this run, on this machine
        os.kill(victim, signal.SIGKILL)
        assert p.poll() is None                             # killed while the run goes on
    finally:
        code, stdout, err = finish(p)
    assert code == 0, err
    assert canonical(read_records(out)) == local_records
    keys = done_keys(out)
    assert len(keys) == 21 and set(keys.values()) == {1}
    after = [i for i in read_done(out)[1:] if i["pid"] != victim]
    assert after, "the images after the kill were run by the other actor or the restarted one"


def test_a_stopped_run_continues_where_it_stopped(cluster, dataset, local_records, tmp_path):
    out = tmp_path / "out"
    args = ["infer", dataset / "images", *OPTIONS, "--ray", cluster.address, "--out", out]
    p = refpose(args)
    try:
        wait_for_first_shard(out, p)
        p.send_signal(signal.SIGINT)                        # Ctrl-C
    finally:
        code, _, err = finish(p)
    assert code == 130 and "interrupted" in err, err
    first = done_keys(out)
    assert 0 < len(first) < 21, "the run was stopped before it finished"
    code, stdout, err = finish(refpose(args))
    assert code == 0, err
    assert f"{21 - len(first)} images done now, {len(first)} by an earlier run" in stdout
    keys = done_keys(out)
    assert len(keys) == 21 and set(keys.values()) == {1}     # nothing written twice
    assert canonical(read_records(out)) == local_records


def test_unreadable_images_are_listed_not_fatal(cluster, dataset, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(dataset / "images" / "000001.jpg", src / "good.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    out = tmp_path / "out"
    code, stdout, err = finish(refpose(["infer", src, "--weights", "tiny-synthetic", "--ray", cluster.address,
                                        "--workers", "1", "--out", out, "--draw"]))
    assert code == 1, err
    assert "1 images done now, 0 by an earlier run, 1 failed" in stdout
    assert [line for line in err.splitlines() if "broken.jpg" in line] == [
        line for line in err.splitlines() if line.startswith("refpose infer: error:")]
    assert (out / "failed.txt").read_text().startswith(f"{src / 'broken.jpg'}:")
    assert (out / "good.pose.png").stat().st_size > 0 and not (out / "broken.pose.png").exists()


def test_a_pool_larger_than_the_cluster_is_refused(cluster, dataset, tmp_path):
    out = tmp_path / "out"
    code, _, err = finish(refpose(["infer", dataset / "images" / "000001.jpg", "--weights", "tiny-synthetic",
                                   "--ray", cluster.address, "--workers", "3", "--out", out]))
    assert code == 2 and err.strip().endswith("a pool of 3 actors x 1 threads needs 3 CPUs; the cluster has 2: "
                                              "give fewer --workers or --threads"), err
    assert len(err.splitlines()) == 1 and not out.exists()


def write_video(path, frames=20, size=(64, 48)):
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    xs, ys = np.linspace(0, 1, size[0])[None, :, None], np.linspace(0, 1, size[1])[:, None, None]
    for i in range(frames):                                  # a gradient whose colour changes per frame
        writer.write((255 * (0.5 * xs + 0.3 * ys + 0.2 * i / frames) * np.array([1.0, 0.7, 0.4])).astype(np.uint8))
    writer.release()


def test_videos_run_one_per_task_with_smoothing_as_locally(cluster, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_video(src / name)
    options = ["--weights", "tiny-synthetic", "--smooth", "--bbox", "4,4,40,30", "--bbox", "20,10,40,36"]
    assert main(["infer", str(src), *options, "--out", str(tmp_path / "local")]) == 0
    out = tmp_path / "out"
    code, stdout, err = finish(refpose(["infer", src, *options, "--ray", cluster.address, "--out", out]))
    assert code == 0, err
    assert "2 videos" in stdout
    for name in ("a", "b"):                                 # frames in order on one actor: the same smoothing
        lines = (out / f"{name}.pose.jsonl").read_text()
        assert lines == (tmp_path / "local" / f"{name}.pose.jsonl").read_text()
        assert len(lines.splitlines()) == 20 and '"track_id"' in lines
        assert (out / f"{name}.pose.mp4").stat().st_size > 0


def test_a_folder_given_as_a_uri_is_listed_and_read_through_pyarrow(cluster, dataset, local_records, tmp_path):
    # file:// stands in for s3:// and gs://, which take the same path through pyarrow's file systems
    src = tmp_path / "src"
    src.mkdir()
    for name in ("000003.jpg", "cameraman.jpg"):
        shutil.copy(dataset / "images" / name, src)
    out = tmp_path / "out"
    code, stdout, err = finish(refpose(["infer", f"file://{src}", *OPTIONS, "--ray", cluster.address,
                                        "--workers", "1", "--out", out]))
    assert code == 0, err
    records = canonical(read_records(out))
    assert len(records) == 24 and set(records) <= set(local_records)
    assert {i["key"] for i in read_done(out)} == {f"file://{src}/000003.jpg", f"file://{src}/cameraman.jpg"}
