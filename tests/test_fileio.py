"""The atomic writer (refpose/fileio.py): whole or nothing, and an output path that cannot be a
file (a folder, under a file, not writable) is one `OutputError` naming it, for every command."""
import os

import pytest

from refpose.cli import main
from refpose.errors import OutputError
from refpose.fileio import write_atomic, write_files


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(path.parent)) == ["a.bin"]          # no temporary file left


@pytest.mark.parametrize("name", ["folder", "folder/"])
def test_a_folder_is_refused(tmp_path, name):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep").write_bytes(b"x")
    with pytest.raises(OutputError, match="is a folder"):
        write_atomic(f"{tmp_path}/{name}", b"data")
    assert os.listdir(tmp_path / "folder") == ["keep"]


@pytest.mark.parametrize("under", ["file/out.bin", "file/deeper/out.bin"])
def test_a_parent_that_is_a_file_is_refused(tmp_path, under):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputError, match=f"{tmp_path / 'file'}, which is a file"):
        write_atomic(tmp_path / under, b"data")
    assert (tmp_path / "file").read_bytes() == b"x"


def test_a_folder_among_several_outputs_replaces_none(tmp_path):
    (tmp_path / "x.json").write_bytes(b"old")
    (tmp_path / "x.png").mkdir()
    with pytest.raises(OutputError, match="x.png"):
        write_files({tmp_path / "x.json": b"new", tmp_path / "x.png": b"png"})
    assert (tmp_path / "x.json").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.json", "x.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write: Permission denied"):
            write_atomic(ro / "a.bin", b"data")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("target", ["folder", "file/out.safetensors"])
def test_cli_output_that_cannot_be_a_file(tmp_path, capsys, target):
    """`refpose init ... DIR` and a parent that is a file: one line, exit 2 (was a traceback)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    code = main(["init", "--config", "tiny", str(tmp_path / target)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("refpose init: error: ") and err.count("\n") == 1 and str(tmp_path / target) in err
    assert sorted(os.listdir(tmp_path / "folder")) == []


def test_a_rename_that_fails_puts_back_the_files_renamed_before(tmp_path, monkeypatch):
    """Whole set or nothing even when the folder changes after the checks: the third rename
    fails, and the first two files are as they were (one old, one absent)."""
    (tmp_path / "x.json").write_bytes(b"old json")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="x.c.png: cannot write: Permission denied"):
        write_files({tmp_path / "x.json": b"new json", tmp_path / "x.png": b"png", tmp_path / "x.c.png": b"c"})
    monkeypatch.undo()
    assert (tmp_path / "x.json").read_bytes() == b"old json"
    assert sorted(os.listdir(tmp_path)) == ["x.json"]        # no new file, no temporary, no backup left


# --- the one path check of every input -----------------------------------------------------------
def test_path_problem_names_what_is_not_a_regular_file(tmp_path):
    from refpose.fileio import path_problem
    import socket

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "ok").write_bytes(b"x")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    try:
        assert path_problem(tmp_path / "ok") is None
        assert path_problem(tmp_path / "pipe") == "a named pipe (FIFO), not a regular file"
        assert path_problem("/dev/null") == "a device, not a regular file"
        assert path_problem(tmp_path / "sock") == "a socket, not a regular file"
        assert path_problem(tmp_path / "missing") == "no such file"
        assert path_problem(tmp_path / "dangling").startswith("broken symbolic link")
        assert path_problem(tmp_path, kind="a video") == "is a directory, not a video"
        assert path_problem(tmp_path / "ok", folder=True) == "not a folder"
    finally:
        s.close()


def test_reading_a_fifo_as_json_is_one_error_not_a_hang(tmp_path):
    from refpose.errors import DataError
    from refpose.fileio import read_json

    os.mkfifo(tmp_path / "ann.json")
    with pytest.raises(DataError, match="ann.json: a named pipe"):
        read_json(tmp_path / "ann.json", "annotations")


def test_an_output_that_is_an_input_is_refused_links_included(tmp_path):
    from refpose.errors import OutputError
    from refpose.fileio import check_output_path

    src = tmp_path / "gt.json"
    src.write_text("{}")
    os.link(src, tmp_path / "hard.json")
    os.symlink(src, tmp_path / "soft.json")
    for out in (src, tmp_path / "hard.json", tmp_path / "soft.json"):
        with pytest.raises(OutputError, match="is the input"):
            check_output_path(out, [tmp_path / "other.json", src])
    check_output_path(tmp_path / "new.json", [src])                   # not yet there: not an input
    check_output_path(src, [])                                        # no inputs named: nothing to compare


@pytest.mark.parametrize("content, expected", [
    (b"", b"new\n"), (b"a\n", b"a\nnew\n"), (b"a\n{\"image_id\": 3, \"rec", b"a\nnew\n"),
    (b"torn", b"new\n"), (b"a\n" * 50000 + b"b" * 70000, b"a\n" * 50000 + b"new\n")])
def test_open_append_cuts_a_torn_last_line_first(tmp_path, content, expected):
    from refpose.fileio import open_append

    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    with open_append(path) as f:
        f.write("new\n")
    assert path.read_bytes() == expected


# --- every command that writes: an output that is one of its inputs is refused (issue 23, item 2) ----
def _files_for_output_checks(tmp_path):
    import json

    import cv2
    import numpy as np

    import refpose

    refpose.save_weights(tmp_path / "w.safetensors", refpose.init_weights("tiny", 0), "tiny", trained=False)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "1.jpg"), np.full((48, 64, 3), 90, np.uint8))
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [10, 10, 2] * 17,
                         "num_keypoints": 17, "area": 400.0, "bbox": [5, 5, 30, 30], "iscrowd": 0}]}))
    (tmp_path / "1.pose.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [5, 5, 30, 30],
                                                       "score": 0.9}]))     # detections named like an output


@pytest.mark.parametrize("argv, needs", [
    (["eval", "--ann", "gt.json", "--images", "images", "--config", "tiny", "--results-out", "gt.json"], None),
    (["eval", "--ann", "gt.json", "--images", "images", "--config", "tiny", "--results-out", "images/1.jpg",
      "--limit", "1"], None),
    (["eval", "--ann", "gt.json", "--images", "images", "--weights", "w.safetensors", "--results-out",
      "w.safetensors"], None),
    (["infer", "images/1.jpg", "--config", "tiny", "--boxes", "1.pose.json", "--out", "."], None),
    (["infer", "images/1.jpg", "--weights", "w.safetensors", "--out", "images", "--bbox", "1,1,9,9"], "link"),
    (["export-onnx", "w.safetensors", "w.safetensors"], "onnx"),
    (["oracle", "dump", "w.safetensors", "w.safetensors"], None),
    (["export", "ckpt.pt", "ckpt.pt"], "torch"),
])
def test_an_output_that_is_an_input_is_one_line_and_the_input_stays(tmp_path, capsys, monkeypatch, argv, needs):
    """`refpose eval --results-out gt.json` turned the annotations into results, `export-onnx w w`
    and `oracle dump w w` replaced the weights, all with status 0."""
    _files_for_output_checks(tmp_path)
    monkeypatch.chdir(tmp_path)
    if needs in ("onnx", "torch"):
        pytest.importorskip("torch", reason="the command needs torch")
        if needs == "onnx":
            pytest.importorskip("onnx", reason="export-onnx needs onnx")
        import torch

        from refpose.porting.twin import WGNetTwin

        torch.save(WGNetTwin("tiny").state_dict(), "ckpt.pt")
    if needs == "link":                          # the image's output name is a link to the weights
        os.symlink(tmp_path / "w.safetensors", tmp_path / "images" / "1.pose.json")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, err
    assert err.count("\n") == 1 and "is the input" in err and "an output never replaces an input" in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before                      # nothing replaced, nothing written


# --- refpose's temporary names and the leftovers of killed runs -----------------------------------
def test_temporary_names_are_recognised():
    from refpose.fileio import is_temporary, temporary_path

    for path in (temporary_path("out/a.pose.json"), temporary_path("b.npz", "old"),
                 temporary_path("c.pose.mp4", keep_suffix=True)):
        assert path.name.startswith(".") and is_temporary(path)
    assert temporary_path("c.pose.mp4", keep_suffix=True).suffix == ".mp4"
    for name in (".hidden.png", "a.tmp", ".a.0123456789ab.tmp.", ".a.0123456789AB.tmp", "a.0123456789ab.tmp"):
        assert not is_temporary(name)


def test_sweep_removes_only_what_killed_runs_left(tmp_path):
    import subprocess
    import sys

    from refpose.fileio import _sweep, sweep_temporaries

    (tmp_path / "target").mkdir()
    stale = [".a.json.0123456789ab.tmp", ".b.png.0123456789ab.old", ".c.pose.0123456789ab.tmp.mp4"]
    for name in stale + [".d.json.0123456789ab.tmp", ".user-file", "e.json"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".ds.0123456789ab.tmp").mkdir()                             # synth's folder
    (tmp_path / ".ds.0123456789ab.tmp" / "annotations.json").write_bytes(b"{}")
    os.symlink(tmp_path / "target", tmp_path / ".link.0123456789ab.old")    # a link: removed, not followed
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from refpose.fileio import hold; "
                               "print(hold(sys.argv[1]) is not None, flush=True); time.sleep(60)",
                               str(tmp_path / ".d.json.0123456789ab.tmp")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        _sweep.cache_clear()
        sweep_temporaries(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(os.listdir(tmp_path)) == [".d.json.0123456789ab.tmp", ".user-file", "e.json", "target"]


@pytest.mark.parametrize("name, inside", [
    ("a.jpg", "a.jpg"), ("sub/a.jpg", "sub/a.jpg"), ("sub/../a.jpg", "a.jpg"), ("./a.jpg", "a.jpg"),
    ("..", None), ("../a.jpg", None), ("sub/../../a.jpg", None), ("/etc/passwd", None), ("..a.jpg", "..a.jpg"),
])
def test_a_name_from_an_annotation_file_stays_in_its_folder(name, inside):
    from refpose.fileio import name_in_folder

    path, problem = name_in_folder("imgs", name)
    if inside is None:
        assert path == name and "leads outside imgs" in problem
    else:
        assert problem is None and path == os.path.join("imgs", inside)
