"""`refpose eval --images --ray` (refpose/cluster/evaluate.py): the evaluation's jobs on the cluster of
conftest.py, scored on the driver."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("ray", reason="needs Ray Data (pip install -e '.[ray]')")

from raycluster import ray_env  # noqa: E402

from refpose.cli import main  # noqa: E402

pytestmark = pytest.mark.ray


def test_eval_on_the_cluster_gives_the_local_ap(cluster, dataset, tmp_path, capfd):
    base = ["eval", "--ann", dataset / "annotations.json", "--images", dataset / "images", "--weights",
            "tiny-synthetic", "--json"]
    assert main([*map(str, base), "--results-out", str(tmp_path / "local.json")]) == 0
    local = json.loads(capfd.readouterr().out)
    r = subprocess.run([sys.executable, "-m", "refpose", *map(str, base), "--results-out", str(tmp_path / "ray.json"),
                        "--ray", cluster.address], capture_output=True, text=True, env=ray_env(), timeout=240)
    code, stdout, err = r.returncode, r.stdout, r.stderr
    assert code == 0, err
    assert json.loads(stdout) == local and local["AP"] > 0      # the same figures, to the last digit
    assert json.loads((tmp_path / "ray.json").read_text()) == json.loads((tmp_path / "local.json").read_text())
