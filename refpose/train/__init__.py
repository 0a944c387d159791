"""Training WGNet (DESIGN section 6): COCO keypoints in, a refpose weights file out.

`data` and `targets` are NumPy/OpenCV and share the crop, keypoint conventions and
normalisation with inference; `loop` (PyTorch) trains the twin. Importing this package does
not import torch: `refpose.train.loop` does.
"""
from ..errors import RefposeError


class TrainError(RefposeError):
    """A run that cannot start or continue as asked (missing torch, device, resume, settings)."""


def require_torch():
    """The torch module, or TrainError naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise TrainError("training needs PyTorch, which is not installed: pip install 'refpose[torch]'") from None
    return torch
