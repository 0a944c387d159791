"""Settings of a run that are refused before anything is read or written (refpose.train.settings,
the option types of refpose.cli.args), and the default number of loader processes."""
import pytest

from refpose.train.settings import default_workers
from train_runs import fails, train_args

pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch


@pytest.mark.parametrize("option, value, match", [
    ("--lr", "nan", "--lr"), ("--weight-decay", "-1", "--weight-decay"), ("--weight-decay", "nan", "--weight-decay"),
    ("--sigma", "nan", "--sigma"), ("--sigma", "1e5", "--sigma"), ("--sigma", "-3", "--sigma"), ("--sigma", "0", "--sigma"),
    ("--threads", "0", "--threads"), ("--min-lr", "nan", "--min-lr"), ("--warmup-factor", "nan", "--warmup-factor"),
    ("--max-steps", "0", "--max-steps"), ("--workers", "-1", "--workers"), ("--amp", "fp8", "--amp"),
    ("--min-lr", "0.01", "--min-lr 0.01 is above --lr 0.001"),
    ("--config", "wgnet-mpii", "training supports COCO keypoint configs only"),
    ("--val-boxes", "dets.json", "--val-boxes needs --val-ann"),
])
def test_a_bad_setting_is_one_line_and_nothing_is_written(small_set, tmp_path, capsys, option, value, match):
    argv = train_args(small_set, tmp_path / "run")
    if option == "--config":
        argv[argv.index("--config") + 1] = value
    else:
        argv += [option, value]
    fails(capsys, argv, match)
    assert not (tmp_path / "run").exists()


def test_an_old_torch_is_one_line_naming_the_minimum(small_set, tmp_path, capsys, monkeypatch):
    # torch.amp.GradScaler on the CPU and torch.OutOfMemoryError, which the loop uses, are newer
    import torch

    monkeypatch.setattr(torch, "__version__", "2.3.1")
    fails(capsys, train_args(small_set, tmp_path / "run"), "needs PyTorch 2.4 or later, this is 2.3.1")


@pytest.mark.parametrize("cores, processes, expected", [
    (2, 1, 1),        # this machine: one core for training, one for loading
    (1, 1, 0),        # a single core: loading in-process is all it can do
    (64, 8, 7),       # 8 GPUs on 64 cores: 8 cores each, one of them for the training process
    (128, 4, 8),      # capped: 8 loaders (~14 ms a crop each) outrun one GPU
    (16, 8, 1),
])
def test_default_workers_follow_the_cores_per_process(cores, processes, expected):
    assert default_workers(cores, processes) == expected


def test_a_run_without_workers_takes_them_from_the_cores(small_set, tmp_path, monkeypatch):
    # 6 cores shared by 2 training processes on this machine: 3 each, 2 of them for loading
    import json
    import os

    from refpose.cli import main

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    argv = train_args(small_set, tmp_path / "run", "--batch", 16, "--epochs", 1, "--max-steps", 1)
    del argv[argv.index("--workers"):argv.index("--workers") + 2]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["workers"] == 2
