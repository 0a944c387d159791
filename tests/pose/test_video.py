"""Tests of video in, video out (refpose/video.py) and of `refpose infer` on videos and detectors.

Test videos are written here with cv2.VideoWriter (MPEG-4, 64x48, 10 frames at 10 fps) from smooth
gradients, which the codec keeps to within a few grey levels; the pose model is the tiny config.
"""
import json
import os

import cv2
import numpy as np
import pytest

import refpose
from refpose.cli import main
from refpose.errors import RefposeError
from refpose.pose.video import VideoError, frame_range, run_video

W, H, FPS, N = 64, 48, 10.0, 10


def write_video(path, frames=N, fps=FPS, size=(W, H)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    xs = np.linspace(0, 1, size[0])[None, :, None]
    ys = np.linspace(0, 1, size[1])[:, None, None]
    for i in range(frames):                                   # a gradient whose colour changes per frame
        frame = 255 * (0.5 * xs + 0.3 * ys + 0.2 * (i / max(frames - 1, 1))) * np.array([1.0, 0.7, 0.4])
        writer.write(frame.astype(np.uint8))
    writer.release()
    return path


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames, fps


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def model():
    return refpose.build("tiny", seed=0)


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4")


def test_round_trip(clip, tmp_path, model):
    out = tmp_path / "out"
    summary = run_video(clip, model, out, progress=False)
    assert summary["frames"] == N and summary["processed"] == N and summary["persons"] == N
    frames, fps = read_video(out / "clip.pose.mp4")
    assert len(frames) == N and frames[0].shape == (H, W, 3) and fps == FPS
    lines = read_lines(out / "clip.pose.jsonl")
    assert [d["frame"] for d in lines] == list(range(N))
    assert [d["time"] for d in lines] == pytest.approx([i / FPS for i in range(N)], abs=1e-6)
    for d in lines:
        (r,) = d["records"]                                    # no boxes: one person, the whole frame
        assert r["image_id"] == d["frame"] and r["bbox"] == [0, 0, W, H] and r["box_score"] == 1.0
        assert len(r["keypoints"]) == 51
    assert sorted(os.listdir(out)) == ["clip.pose.jsonl", "clip.pose.mp4"]      # no temporaries


def test_every_copies_the_frames_between(clip, tmp_path, model):
    out = tmp_path / "out"
    summary = run_video(clip, model, out, every=3, boxes=[[8, 4, 30, 40]], progress=False)
    assert summary["processed"] == 4                           # frames 0, 3, 6, 9
    lines = read_lines(out / "clip.pose.jsonl")
    assert len(lines) == N
    assert [bool(d["records"]) for d in lines] == [i % 3 == 0 for i in range(N)]
    assert lines[3]["records"][0]["bbox"] == [8, 4, 30, 40]
    written, _ = read_video(out / "clip.pose.mp4")
    source, _ = read_video(clip)
    # copied frames are the input re-encoded: within a few grey levels (MPEG-4 on a smooth gradient)
    for i in (1, 2, 4, 5, 7, 8):
        assert np.abs(written[i].astype(int) - source[i].astype(int)).mean() < 3
    # a processed frame carries the drawing (the white box outline at x = 8 at least)
    assert np.abs(written[3].astype(int) - source[3].astype(int)).mean() > np.abs(
        written[4].astype(int) - source[4].astype(int)).mean()


def test_start_end_cut_a_range(clip, tmp_path, model):
    assert frame_range(10.0, 0.25, 0.65) == (3, 7)             # times 0.3, 0.4, 0.5, 0.6 lie in [0.25, 0.65)
    assert frame_range(10.0, 0.3, 0.6) == (3, 6)               # start included, end excluded
    out = tmp_path / "out"
    run_video(clip, model, out, start=0.25, end=0.65, progress=False)
    assert [d["frame"] for d in read_lines(out / "clip.pose.jsonl")] == [3, 4, 5, 6]
    frames, _ = read_video(out / "clip.pose.mp4")
    assert len(frames) == 4
    with pytest.raises(VideoError, match="no frames"):
        run_video(clip, model, tmp_path / "late", start=5.0, progress=False)
    assert not (tmp_path / "late" / "clip.pose.mp4").exists()


def test_smooth_tracks_the_person(clip, tmp_path, model):
    out = tmp_path / "out"
    run_video(clip, model, out, smooth=True, progress=False)
    lines = read_lines(out / "clip.pose.jsonl")
    assert [r["track_id"] for d in lines for r in d["records"]] == [0] * N


def test_unwritable_codec_leaves_nothing(clip, tmp_path, model):
    out = tmp_path / "out"
    with pytest.raises(VideoError, match="cannot write"):
        run_video(clip, model, out, fourcc="\0\0\0\0", progress=False)    # no encoder: VideoWriter fails to open
    assert os.listdir(out) == []


def test_interrupted_run_leaves_nothing(clip, tmp_path, model):
    calls = []

    def detector(rgb):                                         # interrupts the run at the fifth frame
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return np.array([[0.0, 0.0, W, H]]), np.array([0.9])

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_video(clip, model, out, detector=detector, progress=False)
    assert os.listdir(out) == []


def test_bad_videos(tmp_path, model):
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    (tmp_path / "empty.mp4").write_bytes(b"")
    no_frames = write_video(tmp_path / "none.mp4", frames=0)
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "link.mp4").symlink_to(tmp_path / "gone.mp4")
    for path, message in ((tmp_path / "text.mp4", "cannot read"), (tmp_path / "empty.mp4", "empty file"),
                          (tmp_path / "missing.mp4", "no such file"),
                          (tmp_path / "folder.mp4", "is a directory, not a video"),
                          (tmp_path / "link.mp4", "broken symbolic link")):
        with pytest.raises(VideoError, match=message):
            run_video(path, model, tmp_path / "out", progress=False)
    with pytest.raises(VideoError):
        run_video(no_frames, model, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# --- through the command line ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    refpose.save_weights(path, refpose.init_weights("tiny", seed=0), "tiny", trained=True)
    return str(path)


def run(args, capfd):
    code = main(["infer", *map(str, args)])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.onnx
def test_cli_folder_of_images_and_videos_with_a_detector(tmp_path, capfd, tiny_weights):
    pytest.importorskip("onnx", reason="the test detector is built with the onnx package")
    from test_detector import constant_graph, yolox_output

    detector = constant_graph({"output": yolox_output()}, path=tmp_path / "yolox.onnx")
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "clip.mp4", frames=4)
    cv2.imwrite(str(d / "photo.png"), np.full((H, W, 3), 90, np.uint8))
    out = tmp_path / "out"
    code, stdout, stderr = run([d, "--weights", tiny_weights, "--detector", detector, "--out", out], capfd)
    assert code == 0 and stderr == ""
    assert sorted(os.listdir(out)) == ["clip.pose.jsonl", "clip.pose.mp4", "photo.pose.json", "photo.pose.png"]
    # 64x48 into the 64x64 network: ratio 1, so the persons' input boxes are image boxes (test_detect)
    expected = [([20, 8, 16, 24], 0.72), ([32, 0, 32, 32], 0.6)]
    photo = json.loads((out / "photo.pose.json").read_text())
    for records in [photo] + [d["records"] for d in read_lines(out / "clip.pose.jsonl")]:
        np.testing.assert_allclose([r["bbox"] for r in records], [b for b, _ in expected], atol=1e-4)
        assert [r["box_score"] for r in records] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert "clip.mp4: 4 frames, 4 estimated, 8 poses" in stdout


@pytest.mark.onnx
def test_cli_unrecognised_detector_exit_2(tmp_path, capfd, tiny_weights):
    pytest.importorskip("onnx", reason="the test detector is built with the onnx package")
    from test_detector import constant_graph

    bad = constant_graph({"output0": np.zeros((1, 7, 84))}, path=tmp_path / "yolov8.onnx")
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    code, stdout, stderr = run([clip, "--weights", tiny_weights, "--detector", bad, "--out", tmp_path / "out"], capfd)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert "unrecognised detector outputs output0 (1, 7, 84)" in stderr
    assert not (tmp_path / "out" / "clip.pose.mp4").exists()


def test_cli_bad_video_and_options(tmp_path, capfd, tiny_weights):
    (tmp_path / "bad.mp4").write_text("not a video")
    code, stdout, stderr = run([tmp_path / "bad.mp4", "--weights", tiny_weights, "--out", tmp_path / "out"], capfd)
    assert code == 2 and stderr.splitlines() == [f"refpose infer: error: {tmp_path / 'bad.mp4'}: "
                                                 "OpenCV cannot read this file as a video"]
    assert not (tmp_path / "out").exists()         # nothing was written, so no folder either
    with pytest.raises(SystemExit) as e:
        main(["infer", str(tmp_path / "bad.mp4"), "--every", "0"])
    assert e.value.code == 2
    code, _, stderr = run([tmp_path / "bad.mp4", "--start", "2", "--end", "1"], capfd)
    assert code == 2 and "--end" in stderr
    code, _, stderr = run([tmp_path / "bad.mp4", "--bbox", "0,0,4,4", "--detector", "x.onnx"], capfd)
    assert code == 2 and "with --bbox or with --detector, not both" in stderr


def test_video_error_is_a_refpose_error():
    assert issubclass(VideoError, RefposeError)


def test_odd_size_loses_one_column_and_row(tmp_path, model):
    # OpenCV's own MJPEG writer keeps odd sizes; its FFmpeg writer (used for the output) does not
    path = tmp_path / "odd.avi"
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (65, 49))
    for _ in range(3):
        writer.write(np.full((49, 65, 3), 100, np.uint8))
    writer.release()
    summary = run_video(path, model, tmp_path / "out", progress=False)
    assert summary["size"] == (65, 49) and summary["size_written"] == (64, 48)
    frames, _ = read_video(tmp_path / "out" / "odd.pose.mp4")
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    (r,) = read_lines(tmp_path / "out" / "odd.pose.jsonl")[0]["records"]
    assert r["bbox"] == [0, 0, 65, 49]                          # records stay in the input's pixels


# --- frames beyond the pixel limit, frame rates the output cannot take (issue 23, items 19, 25) ------
def _mjpeg_avi(path, size=(W, H), frames=1, fps=FPS):
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for _ in range(frames):
        writer.write(np.full((size[1], size[0], 3), 100, np.uint8))
    writer.release()
    return bytearray(path.read_bytes())


def _declare(path, data, size=None, rate=None):
    """Rewrite what an AVI's headers declare (RIFF AVI, Microsoft's AVI file format: the main
    header avih, the stream header strh, the format strf = BITMAPINFOHEADER) and its JPEG frames' SOF."""
    import struct

    i, j, k = data.find(b"avih"), data.find(b"strf"), data.find(b"strh")
    if size is not None:
        struct.pack_into("<II", data, i + 8 + 32, *size)         # dwWidth, dwHeight
        struct.pack_into("<ii", data, j + 8 + 4, *size)          # biWidth, biHeight
        s = data.find(b"\xff\xc0")                               # the frame's baseline SOF: height, width
        struct.pack_into(">HH", data, s + 5, size[1], size[0])
    if rate is not None:
        struct.pack_into("<II", data, k + 8 + 20, 1, rate)       # dwScale, dwRate: rate / scale frames/s
    path.write_bytes(bytes(data))
    return path


def test_a_frame_beyond_the_pixel_limit_is_refused_before_decoding(tmp_path, model):
    """A 15000x15000 JPEG as a one-frame MJPEG AVI (3.5 MB) was decoded (1.78 GB), then failed
    with a message about the codec."""
    path = _declare(tmp_path / "big.avi", _mjpeg_avi(tmp_path / "big.avi"), size=(15000, 15000))
    with pytest.raises(VideoError, match=r"big.avi: frame too large: the container declares 15000x15000 pixels "
                                         r"\(225,000,000\), more than the 200,000,000 allowed$"):
        run_video(path, model, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_frame_rate_or_size_the_output_cannot_take_names_the_cause(tmp_path, model):
    path = _declare(tmp_path / "fast.avi", _mjpeg_avi(tmp_path / "fast.avi"), rate=2 ** 31)
    with pytest.raises(VideoError, match=r"fast.avi: the container declares 2,147,483,64\d frames per second; the "
                                         r"output video \(codec mp4v\) takes 0.002 to 65,535$"):
        run_video(path, model, tmp_path / "out", progress=False)
    wide = tmp_path / "wide.avi"
    _mjpeg_avi(wide, size=(9000, 16))
    with pytest.raises(VideoError, match=r"wide.avi: frames of 9000x16 pixels; the output video \(codec mp4v\) "
                                         r"takes at most 8190 pixels a side$"):
        run_video(wide, model, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_heatmaps_with_a_video_says_it_saves_none(clip, tmp_path, capfd, tiny_weights):
    """--heatmaps was silently ignored for a video."""
    code, stdout, stderr = run([clip, "--weights", tiny_weights, "--heatmaps", "--out", tmp_path / "out"], capfd)
    assert code == 0
    assert stderr == f"refpose infer: note: {clip}: --heatmaps applies to images; no heatmaps are saved for a video\n"
