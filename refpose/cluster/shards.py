"""The output folder of `refpose infer --ray`: JSON Lines shards written whole, what is done, what failed.

    OUT/run.json               what the records depend on (weights, config, options); a rerun must match
    OUT/part-00000.jsonl       one line per person: a COCO keypoint record, as `refpose infer` writes it
    OUT/part-00000.done.json   the images of that shard (persons, the node and process that ran each)
                               and the images of its batch that failed, with their one-line reasons
    OUT/failed.txt             the images that failed in the last run, one reason per line
    OUT/<name>.pose.png        with --draw; a video's <name>.pose.mp4 and <name>.pose.jsonl

A shard's files are written under temporary names and renamed into place, its `.done.json` last
(`refpose.fileio.write_files`): an image counts as done when a `.done.json` lists it, so a rerun
skips it, and records without their `.done.json` (a crash between two renames) are removed and
redone. Images that failed are not done: a rerun tries them again.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import DataError, OutputError
from ..fileio import read_json, write_atomic, write_files

RUN_FILE = "run.json"
FAILED_FILE = "failed.txt"
FORMAT = "refpose-infer-ray/1"
SHARD = re.compile(r"^part-(\d{5,})\.jsonl$")
DONE_SUFFIX = ".done.json"


class OutputFolder:
    """The folder one run (and its reruns) writes; `done` holds the keys of the images finished."""

    def __init__(self, path: "str | os.PathLike", settings: dict):
        self.path = Path(path)
        self.settings = settings
        self.done: dict[str, dict] = {}         # image key -> its entry in a .done.json
        self.next_shard = 0
        self.new = False

    def open(self) -> "OutputFolder":
        """Check run.json (a new folder gets it with its first shard), read the finished images,
        remove what a crash left half done."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.path}: the output directory is a file")
        run = self.path / RUN_FILE
        if run.exists():
            header = read_json(run, "run")
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise DataError(f"{run}: not the run file of a `refpose infer --ray` output folder")
            if header.get("settings") != self.settings:
                diff = sorted(k for k in self.settings if header.get("settings", {}).get(k) != self.settings[k])
                raise DataError(f"{self.path}: holds the output of a run with other settings ({', '.join(diff)}); "
                                "give another --out")
        else:
            self.new = True                                    # run.json comes with the first shard
            if not self.path.exists():
                return self
        for entry in sorted(os.listdir(self.path)):
            m = SHARD.match(entry)
            if entry.startswith(".part-") and entry.endswith(".tmp"):
                os.unlink(self.path / entry)                   # a write a kill interrupted
            if not m:
                continue
            index = int(m.group(1))
            self.next_shard = max(self.next_shard, index + 1)
            done = self.path / f"part-{m.group(1)}{DONE_SUFFIX}"
            if not done.exists():
                os.unlink(self.path / entry)                   # records without their list: redone
                continue
            for image in _read_done(done)["images"]:
                self.done[image["key"]] = image
        return self

    def write_shard(self, images: list[dict], records: list[dict], failed: list[dict],
                    files: "dict[Path, bytes] | None" = None) -> Path:
        """One shard: the records of `images` (and `files`, the drawings), then the list that makes it done."""
        name = f"part-{self.next_shard:05d}"
        self.next_shard += 1
        shard = self.path / f"{name}.jsonl"
        out = dict(files or {})
        out[shard] = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()
        out[self.path / f"{name}{DONE_SUFFIX}"] = (json.dumps({"images": images, "failed": failed}, indent=1)
                                                   + "\n").encode()
        self.write(out)                                        # in this order: the .done.json last
        for image in images:
            self.done[image["key"]] = image
        return shard

    def write(self, files: "dict[Path, bytes]") -> None:
        """Files of the folder, written together (`write_files`), run.json first when the folder is new."""
        if self.new:
            files = {self.path / RUN_FILE: (json.dumps({"format": FORMAT, "settings": self.settings}, indent=1)
                                            + "\n").encode(), **files}
        write_files(files)
        self.new = False

    def write_failures(self, lines: list[str]) -> None:
        """failed.txt of this run; none left when every image went well."""
        path = self.path / FAILED_FILE
        if lines:
            write_atomic(path, "".join(line + "\n" for line in lines).encode())
        elif path.exists():
            os.unlink(path)


def _read_done(path: Path) -> dict:
    data = read_json(path, "shard list")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and all(isinstance(i, dict) and isinstance(i.get("key"), str) for i in data["images"])):
        raise DataError(f"{path}: not the list of a shard; delete it and its .jsonl to redo those images")
    return data


def read_records(path: "str | os.PathLike") -> list[dict]:
    """Every record of an output folder's shards, shard by shard."""
    records = []
    for entry in sorted(os.listdir(path)):
        if SHARD.match(entry):
            with open(Path(path) / entry, encoding="utf-8") as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records


def read_done(path: "str | os.PathLike") -> list[dict]:
    """Every image entry of an output folder's `.done.json` lists (key, file_name, persons, node, pid)."""
    return [image for entry in sorted(os.listdir(path)) if entry.endswith(DONE_SUFFIX)
            for image in _read_done(Path(path) / entry)["images"]]
