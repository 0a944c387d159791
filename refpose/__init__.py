"""refpose: a from-scratch NumPy reference implementation of WGNet for human pose estimation."""
from .config import CONFIGS, StageConfig, WGNetConfig, get_config
from .counting import count_ops
from .errors import (BoxError, ConfigError, DataError, ImageError, InputShapeError, RefposeError,
                     WeightsError)
from .model import TAPS, WGNet
from .weights import build, init_weights, load, read_weights, save_weights
from .imageio import read_image
from .topdown import estimate
from .evaluate import evaluate_images, score_results

__version__ = "0.1.0"

__all__ = [
    "CONFIGS", "StageConfig", "WGNetConfig", "get_config", "count_ops", "TAPS", "WGNet",
    "build", "init_weights", "load", "read_weights", "save_weights",
    "read_image", "estimate",
    "score_results", "evaluate_images",
    "RefposeError", "ConfigError", "InputShapeError", "WeightsError", "ImageError", "BoxError", "DataError",
]
