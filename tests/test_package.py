"""The package root: what `import refpose` loads, and `python -m refpose`."""
import json
import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_import_refpose_loads_no_opencv_torch_or_onnxruntime():
    # a fresh interpreter: this test process has loaded them already
    code = ("import sys, numpy as np, refpose\n"
            "m = refpose.build('tiny', impl='reference')\n"
            "m(np.zeros((1, 3, 128, 96)))\n"
            "import refpose.porting.oracle, refpose.weights, refpose.pose.pipeline, refpose.data.evaluate\n"
            "print(__import__('json').dumps(sorted(k for k in ('cv2', 'torch', 'onnxruntime', 'pycocotools') "
            "if k in sys.modules)))")
    assert json.loads(run_python(code)) == []


def test_image_functions_load_opencv_when_used():
    pytest.importorskip("cv2", reason="the image functions need OpenCV")
    code = ("import sys, numpy as np, refpose\n"
            "before = 'cv2' in sys.modules\n"
            "refpose.estimate(np.zeros((64, 48, 3), np.uint8), refpose.build('tiny'))\n"
            "print(before, 'cv2' in sys.modules)")
    assert run_python(code).split() == ["False", "True"]


def test_python_m_refpose_runs_the_cli_with_export_onnx_beside_export():
    r = subprocess.run([sys.executable, "-m", "refpose", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the command list of --help: one indented name per command, in the order argparse prints them
    listing = r.stdout.split("  COMMAND\n", 1)[1].split("\n\n")[0]
    commands = [line.split()[0] for line in listing.splitlines() if line.startswith("    ") and line[4] != " "]
    assert commands.index("export-onnx") == commands.index("export") + 1
    assert {"infer", "eval", "info", "init", "bench", "oracle"} <= set(commands)
