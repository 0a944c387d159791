"""refpose: a from-scratch NumPy reference implementation of WGNet for human pose estimation.

`import refpose` needs NumPy and Numba only: the image functions (`read_image`, `estimate`)
and the evaluation (`evaluate_images`, `score_results`) load OpenCV and pycocotools when
they are first used.
"""
from . import threads as _threads  # noqa: F401  first: OpenMP runtimes loaded after this do not spin
from .config import CONFIGS, StageConfig, WGNetConfig, get_config
from .counting import count_ops
from .errors import BoxError, ConfigError, DataError, ImageError, InputShapeError, RefposeError, WeightsError
from .model import TAPS, WGNet
from .weights import build, init_weights, load, read_weights, save_weights

__version__ = "0.1.0"

# name -> module, imported on first access (PEP 562)
_LAZY = {"read_image": "pose.imageio", "estimate": "pose.pipeline", "predict": "pose.pipeline",
         "evaluate_images": "data.evaluate", "score_results": "data.coco"}

__all__ = [
    "CONFIGS", "StageConfig", "WGNetConfig", "get_config", "count_ops", "TAPS", "WGNet",
    "build", "init_weights", "load", "read_weights", "save_weights",
    "read_image", "estimate", "predict",
    "score_results", "evaluate_images",
    "RefposeError", "ConfigError", "InputShapeError", "WeightsError", "ImageError", "BoxError", "DataError",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
