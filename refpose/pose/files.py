"""The files of `refpose infer`: the inputs a list of paths and folders names, and the outputs of
each image (`<name>.pose.json`, `<name>.pose.png`, heatmap montages), written together or not at all."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import RefposeError
from ..fileio import InputFiles, check_output_path, write_files

OUTPUT_SUFFIXES = (".pose.png", ".heatmaps.png", ".pose.mp4")   # our own outputs, skipped when scanning a folder


def collect_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """Image and video paths to run (a folder gives its image and video files, sorted) and the
    problems found on the way.

    Every entry of a folder with an image or video name is run, except folders, refpose's own
    outputs and its temporary files (`refpose.fileio.is_temporary`: those a killed run left): a
    broken link, a link loop or an unreadable file is reported with its reason when it is read
    (`refpose.fileio.path_problem`), never skipped in silence."""
    from ..fileio import is_temporary, path_problem
    from .imageio import IMAGE_SUFFIXES
    from .video import VIDEO_SUFFIXES

    jobs, problems = [], []
    for p in paths:
        if not os.path.isdir(p):
            jobs.append(p)                 # a missing file is reported when it is read
            continue
        problem = path_problem(p, folder=True)
        try:
            with os.scandir(p) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problem = problem or (e.strerror or str(e))
        if problem:
            problems.append(f"{p}: cannot list this directory: {problem}")
            continue
        found = [e.path for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
                 and not e.name.endswith(OUTPUT_SUFFIXES) and not is_temporary(e.name) and not _is_dir(e)]
        if not found:
            problems.append(f"{p}: no image files in this directory")
        jobs += found
    return jobs, problems


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:                        # a link loop: not a folder; reading it says why
        return False


class OutputNames:
    """The outputs (`<stem>.pose.*` in `out_dir`) the inputs of one run claim. Refused before
    anything of an input runs: outputs that would overwrite an earlier input's, and an output that
    is one of the run's `inputs` (the images and videos, the weights, boxes or detector file)."""

    def __init__(self, out_dir: "str | os.PathLike | None" = None, inputs=()):
        self.out_dir = None if out_dir is None else Path(out_dir)     # None: the names only are claimed
        self.inputs = InputFiles(inputs)
        self.taken: dict[str, str] = {}          # stem -> the input that claimed it

    def claim(self, path: str) -> None:
        from .video import is_video, output_paths as video_outputs

        name = Path(path).stem
        if name in self.taken:
            if os.path.realpath(self.taken[name]) == os.path.realpath(path):
                raise RefposeError(f"{path}: given more than once (its outputs are written already)")
            raise RefposeError(f"{path}: its outputs {name}.pose.* would overwrite those of {self.taken[name]}")
        if self.out_dir is not None:
            for out in (video_outputs if is_video(path) else output_paths)(path, self.out_dir):
                check_output_path(out, self.inputs)
        self.taken[name] = path


def output_paths(path: str, out_dir: Path) -> tuple[Path, Path]:
    """`<out_dir>/<stem>.pose.json` and `<out_dir>/<stem>.pose.png` of an image."""
    stem = Path(path).stem
    return out_dir / f"{stem}.pose.json", out_dir / f"{stem}.pose.png"


def write_outputs(path: str, image, poses: list, records: list, out_dir: Path, kpt_thr: float,
                  input_size: tuple[int, int], inputs=()) -> None:
    """`<name>.pose.json`, `<name>.pose.png` and, for poses with heatmaps, the heatmap montages,
    none of them over one of the run's `inputs` (paths, or `refpose.fileio.InputFiles`)."""
    from .draw import draw_poses, encode_png, heatmap_montage

    json_path, png_path = output_paths(path, out_dir)
    files = {json_path: (json.dumps(records, indent=1, allow_nan=False) + "\n").encode(),
             png_path: encode_png(draw_poses(image, poses, kpt_thr))}
    for i, pose in enumerate(poses):
        if "heatmaps" in pose:
            files[out_dir / f"{Path(path).stem}.person{i}.heatmaps.png"] = encode_png(
                heatmap_montage(image, pose, input_size))
    write_files(files, inputs)
