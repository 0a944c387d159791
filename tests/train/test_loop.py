"""`refpose train`: a short run that learns, resume, the run folder and bad input (several processes: test_distributed).

Runs go through the command (`refpose.cli.main`) on small synthetic sets from `refpose synth`.
"""
import json
import subprocess
import sys

import pytest

from refpose.cli import main

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A training set (60 images, 1-4 figures each: 168 persons) and a held-out set of 16
    images made with another seed."""
    from refpose.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "train", 60, seed=11, progress=False)
    synthesize(root / "heldout", 16, seed=12, progress=False)
    return root


def _args(sets, out, *extra):
    return ["train", "--config", "tiny", "--train-ann", str(sets / "train" / "annotations.json"),
            "--train-images", str(sets / "train" / "images"), "--out", str(out), "--workers", "0",
            "--no-progress", *extra]


def _fails(capsys, argv, match):
    """The command exits with status 2 and one line on stderr that contains `match`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    return err[0]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _eval(capsys, sets, weights, results):
    argv = ["eval", "--ann", str(sets / "heldout" / "annotations.json"), "--images", str(sets / "heldout" / "images"),
            "--weights", str(weights), "--results-out", str(results), "--json"]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_short_run_learns(sets, tmp_path, capsys):
    # 160 steps of 16 crops (~1.5 min of CPU), without augmentation and with a higher lr than the
    # paper's so that a few epochs of 168 persons show learning; the held-out images are new figures
    out = tmp_path / "learn"
    assert main(_args(sets, out, "--batch", "16", "--epochs", "16", "--lr", "3e-3", "--warmup-iters", "10",
                      "--no-augment", "--log-every", "10", "--threads", "2")) == 0
    loss = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    # the first 10 steps are the loss of near-zero heatmaps (the head starts at std 0.001): about
    # the mean square of the targets. Predicting any fixed map cannot go far below it, since the
    # joints are all over the crops; falling to 0.6 of it takes peaks where the joints are
    # (measured when written: 0.43)
    assert loss[-1] <= 0.6 * loss[0], loss
    assert main(["init", "--config", "tiny", "--seed", "0", str(tmp_path / "untrained.safetensors")]) == 0
    capsys.readouterr()
    untrained = _eval(capsys, sets, tmp_path / "untrained.safetensors", tmp_path / "u.json")
    trained = _eval(capsys, sets, out / "model.safetensors", tmp_path / "t.json")
    # untrained weights put their peaks anywhere: no pose is within OKS 0.5 (measured 0.000).
    # AP50 0.1 on 40 held-out persons means several poses with most joints on their figures
    # (measured when written: 0.26, with AR50 0.4)
    assert untrained["AP50"] <= 0.02
    assert trained["AP50"] >= untrained["AP50"] + 0.1, trained


def test_resume_gives_the_weights_of_a_run_never_stopped(sets, tmp_path, capsys):
    # CPU, deterministic mode, one thread: a run stopped after 2 steps and resumed to 5 must end
    # with the same bits as one that ran 5 steps (the stop falls inside the first epoch)
    common = ["--batch", "4", "--epochs", "3", "--warmup-iters", "2", "--seed", "3", "--deterministic",
              "--threads", "1", "--log-every", "1"]
    assert main(_args(sets, tmp_path / "a", *common, "--max-steps", "5")) == 0
    assert main(_args(sets, tmp_path / "b", *common, "--max-steps", "2")) == 0
    capsys.readouterr()
    assert main(_args(sets, tmp_path / "b", *common, "--max-steps", "5", "--resume")) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 5
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the resumed run's log has each step once
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    # resuming with another recipe is refused, naming what differs
    _fails(capsys, _args(sets, tmp_path / "b", *common, "--resume", "--lr", "0.01"), "lr 0.001 -> 0.01")
    _fails(capsys, [a if a != "tiny" else "wgnet" for a in _args(sets, tmp_path / "b", *common, "--resume")],
           "config 'tiny' -> 'wgnet'")
    # and a second run into the same folder without --resume too
    _fails(capsys, _args(sets, tmp_path / "b", *common), "already holds a run")


def test_run_folder_and_a_weights_file_refpose_loads_as_trained(sets, tmp_path, capsys):
    import refpose

    out = tmp_path / "run"
    assert main(_args(sets, out, "--batch", "8", "--epochs", "1", "--val-every", "1",
                      "--val-ann", str(sets / "heldout" / "annotations.json"),
                      "--val-images", str(sets / "heldout" / "images"))) == 0
    for name in ("run.json", "metrics.jsonl", "last.pt", "best.pt", "model.safetensors", "curves.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["epochs"] == 1 and info["settings"]["lr"] == 1e-3
    assert info["data"]["persons"] == len(json.loads((sets / "train" / "annotations.json").read_text())["annotations"])
    assert "torch" in info["versions"] and info["world_size"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val" in r for r in rows)
    model = refpose.load(out / "model.safetensors")
    assert model.trained is True
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert meta["epochs"] == "1" and "val_AP" in meta and meta["dataset"].endswith("annotations.json")
    # the trained file runs in `refpose infer` without the untrained warning
    image = sorted((sets / "heldout" / "images").iterdir())[0]
    assert main(["infer", str(image), "--weights", str(out / "model.safetensors"), "--out", str(tmp_path / "inf")]) == 0
    assert "untrained" not in capsys.readouterr().err


def test_bad_input_is_one_line_and_status_2(sets, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1}],
                               "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5]}]}))
    argv = _args(sets, tmp_path / "r1")
    argv[argv.index("--train-ann") + 1] = str(bad)
    _fails(capsys, argv, "missing category_id, keypoints")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = _args(sets, tmp_path / "r2")
    argv[argv.index("--train-images") + 1] = str(empty)
    _fails(capsys, argv, "none of the 60 images")
    _fails(capsys, _args(sets, tmp_path / "r3", "--resume"), "nothing to continue")
    if not torch.cuda.is_available():
        _fails(capsys, _args(sets, tmp_path / "r4", "--device", "cuda"), "no CUDA device")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_without_torch_one_line_names_the_extra(sets, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # `import torch` raises ImportError
    _fails(capsys, _args(sets, tmp_path / "r"), "pip install 'refpose[torch]'")


def test_refpose_and_the_data_pipeline_import_without_torch():
    code = ("import sys, refpose, refpose.cli, refpose.train, refpose.train.data, refpose.train.targets; "
            "refpose.cli.build_parser(); assert 'torch' not in sys.modules, 'torch was imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_a_finished_run_writes_last_pt_once_per_epoch(sets, tmp_path, monkeypatch):
    # without validation, each epoch's end writes last.pt once and the end of the run adds no
    # second copy of the same state; a run stopped inside an epoch (--max-steps) saves at its step
    import refpose.train.loop as loop

    saves = []
    save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, obj: (saves.append((path.name, obj["step"])), save(path, obj)))
    # 168 persons in batches of 56: 3 steps per epoch
    assert main(_args(sets, tmp_path / "full", "--batch", "56", "--epochs", "2", "--warmup-iters", "1")) == 0
    assert saves == [("last.pt", 3), ("last.pt", 6)]
    saves.clear()
    assert main(_args(sets, tmp_path / "part", "--batch", "56", "--epochs", "2", "--warmup-iters", "1",
                      "--max-steps", "4")) == 0
    assert saves == [("last.pt", 3), ("last.pt", 4)]


def test_the_cli_gives_the_settings_defaults():
    # `refpose train` with only the required arguments runs with TrainSettings' own defaults,
    # flags included (--no-augment, --scale-lr, --amp, --resume, --deterministic, --no-progress)
    from refpose.cli import build_parser
    from refpose.cli.train import settings_from_args
    from refpose.train.settings import TrainSettings

    required = dict(config="tiny", train_ann="a.json", train_images="imgs", out="run")
    args = build_parser().parse_args(["train"] + [x for k, v in required.items() for x in (f"--{k.replace('_', '-')}", v)])
    assert settings_from_args(args) == TrainSettings(**required)


def test_ctrl_c_on_an_epoch_boundary_still_validates(sets, tmp_path, capsys, monkeypatch):
    # 168 persons in batches of 56 are 3 steps per epoch; Ctrl-C arrives during step 3, the last
    # of epoch 1. The run must stop with status 130, save last.pt at step 3, and still run the
    # epoch's validation first: a resumed run starts at step 3 and would never validate epoch 1
    import refpose.train.loop as loop

    calls = {"n": 0}

    def stop_at_step_3(vote):               # the loop asks once per step whether Ctrl-C was pressed
        calls["n"] += 1
        return calls["n"] >= 3
    monkeypatch.setattr(loop.StopVote, "poll", stop_at_step_3)
    out = tmp_path / "stopped"
    argv = _args(sets, out, "--batch", "56", "--epochs", "2", "--warmup-iters", "1", "--threads", "2",
                 "--val-ann", str(sets / "heldout" / "annotations.json"),
                 "--val-images", str(sets / "heldout" / "images"), "--val-every", "1")
    assert main(argv) == 130
    assert _state(out / "last.pt")["step"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val" in r] == [3]
