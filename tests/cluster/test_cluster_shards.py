"""The output folder of `refpose infer --ray` (refpose/cluster/shards.py): shards whole, done lists, reruns."""
import json

import pytest

from refpose.cluster.shards import FAILED_FILE, OutputFolder, read_done, read_records
from refpose.errors import DataError

SETTINGS = {"weights": "abc", "flip": False}


def image(key, persons=1):
    return {"key": key, "file_name": key.rsplit("/", 1)[-1], "persons": persons, "node": "n1", "pid": 7}


def test_a_shard_and_its_list_make_images_done_for_a_rerun(tmp_path):
    out = tmp_path / "out"
    folder = OutputFolder(out, SETTINGS).open()
    assert not out.exists()                                # nothing is written before the first shard
    folder.write_shard([image("/a/1.jpg"), image("/a/2.jpg", 0)], [{"file_name": "1.jpg", "score": 0.5}],
                       [{"key": "/a/3.jpg", "file_name": "3.jpg", "error": "/a/3.jpg: no such file"}])
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.done.json", "part-00000.jsonl", "run.json"]
    again = OutputFolder(out, SETTINGS).open()
    assert set(again.done) == {"/a/1.jpg", "/a/2.jpg"}    # the failed image is tried again
    assert again.next_shard == 1
    assert read_records(out) == [{"file_name": "1.jpg", "score": 0.5}]
    assert [i["key"] for i in read_done(out)] == ["/a/1.jpg", "/a/2.jpg"]


def test_records_without_their_list_are_removed_and_redone(tmp_path):
    folder = OutputFolder(tmp_path, SETTINGS).open()
    folder.write_shard([image("/a/1.jpg")], [{"score": 1.0}], [])
    folder.write_shard([image("/a/2.jpg")], [{"score": 2.0}], [])
    (tmp_path / "part-00001.done.json").unlink()            # as a kill between the two renames leaves it
    (tmp_path / ".part-00002.jsonl.0123.tmp").write_text("half")
    again = OutputFolder(tmp_path, SETTINGS).open()
    assert set(again.done) == {"/a/1.jpg"}
    assert not (tmp_path / "part-00001.jsonl").exists() and not (tmp_path / ".part-00002.jsonl.0123.tmp").exists()
    assert read_records(tmp_path) == [{"score": 1.0}]


def test_a_folder_of_a_run_with_other_settings_is_refused(tmp_path):
    OutputFolder(tmp_path, SETTINGS).open().write_shard([image("/a/1.jpg")], [], [])
    with pytest.raises(DataError, match=r"other settings \(flip\); give another --out"):
        OutputFolder(tmp_path, {**SETTINGS, "flip": True}).open()
    (tmp_path / "run.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not the run file"):
        OutputFolder(tmp_path, SETTINGS).open()


def test_failures_file_lists_this_runs_failures_and_goes_when_there_are_none(tmp_path):
    folder = OutputFolder(tmp_path, SETTINGS).open()
    folder.write_failures(["x.jpg: no such file", "y.jpg: not an image"])
    assert (tmp_path / FAILED_FILE).read_text() == "x.jpg: no such file\ny.jpg: not an image\n"
    folder.write_failures([])
    assert not (tmp_path / FAILED_FILE).exists()
