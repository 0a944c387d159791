"""A damaged or edited last.pt is one line, found when it is read, before the run folder changes
(refpose.train.checkpoint)."""
import zipfile

import pytest

from train_runs import fails, train_args

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def run(small_set, tmp_path_factory):
    """A finished 2-step run to damage copies of."""
    from refpose.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(train_args(small_set, out, "--batch", 16, "--epochs", 1, "--max-steps", 2, "--log-every", 1)) == 0
    return out


def _edit(ckpt):
    shapes = dict(ckpt["state_dict"])
    first = next(iter(shapes))
    return {
        "no settings": lambda c: c.pop("settings"),
        "no world": lambda c: c.pop("world"),
        "wrong shape": lambda c: c["state_dict"].__setitem__(first, torch.zeros(3, 3)),
        "negative step": lambda c: c.__setitem__("step", -5),
        "text step": lambda c: c.__setitem__("step", "abc"),
        "moment shape": lambda c: c["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(1)),
    }


@pytest.mark.parametrize("damage, match", [
    ("no settings", "missing settings"), ("no world", "missing world"),
    ("wrong shape", "has shape (3, 3)"), ("negative step", "step must be a whole number >= 0, got -5"),
    ("text step", "step must be a whole number >= 0, got 'abc'"), ("moment shape", "exp_avg of parameter 0"),
])
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(small_set, run, tmp_path, capsys, damage, match):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    _edit(ckpt)[damage](ckpt)
    torch.save(ckpt, out / "last.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = fails(capsys, train_args(small_set, out, "--batch", 16, "--epochs", 1, "--resume"), match)
    assert "last.pt" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_checkpoint_that_unpacks_too_far_is_refused_before_unpacking(small_set, run, tmp_path, capsys):
    # a zip (the .pt format) whose one member declares 200 MB of zeros, deflated to ~200 KB: the
    # bound (16 bytes per weight of the config + 16 MiB) refuses it from the zip directory alone
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    with zipfile.ZipFile(out / "last.pt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", bytes(200 << 20))
    assert (out / "last.pt").stat().st_size < 1 << 20
    fails(capsys, train_args(small_set, out, "--batch", 16, "--epochs", 1, "--resume"), "unpacks to 209,715,200 bytes")


FIELDS = ("state_dict", "optimizer", "scheduler", "scaler", "step", "rng", "settings", "world", "best",
          "validated_step")


def test_any_checkpoint_structure_is_a_phrase_never_an_exception():
    # fuzzing the reader's checks: whatever a (weights-only) unpickled checkpoint holds, the
    # check names a problem or accepts it; it never raises (a traceback instead of one line)
    from hypothesis import given, settings, strategies as st

    from refpose.porting.twin import WGNetTwin
    from refpose.train.checkpoint import CHECKPOINT_FORMAT, check_fields, check_tensors

    model = WGNetTwin("tiny")
    leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
              | st.builds(torch.zeros, st.integers(0, 3)))
    values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3), max_leaves=8)

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(FIELDS), values))
    def check(fields):
        ckpt = {"format": CHECKPOINT_FORMAT, **fields}
        for problem in (check_fields(ckpt),
                        check_tensors({"state_dict": ckpt.get("state_dict"), "optimizer": ckpt.get("optimizer")}, model)):
            assert problem is None or isinstance(problem, str)

    check()


def test_a_state_dict_with_keys_that_are_not_names_is_a_phrase():
    # keys of mixed types cannot be sorted into a message: the check refuses them first
    from refpose.porting.twin import WGNetTwin
    from refpose.train.checkpoint import check_tensors

    state = {"": torch.zeros(0), 0: torch.zeros(0)}
    assert check_tensors({"state_dict": state, "optimizer": None}, WGNetTwin("tiny")) == \
        "state_dict must be a dict of tensors named by strings"


def test_a_resumed_runs_paths_are_compared_as_files_not_as_text(tmp_path, monkeypatch):
    # a run started with absolute paths and resumed with relative ones (or through a link) is the
    # same run; another file, or another setting that happens to name a file, is not
    from refpose.train.checkpoint import _same_setting

    (tmp_path / "ann.json").write_text("{}")
    (tmp_path / "other.json").write_text("{}")
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    assert _same_setting("train_ann", str(tmp_path / "ann.json"), "ann.json")
    assert _same_setting("train_images", "images", str(tmp_path / "link"))
    assert not _same_setting("train_ann", "ann.json", "other.json")
    assert not _same_setting("train_ann", "ann.json", "gone.json")
    assert not _same_setting("config", "ann.json", str(tmp_path / "ann.json"))
