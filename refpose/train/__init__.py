"""Training WGNet (DESIGN section 6): COCO keypoints in, a refpose weights file out.

`data` and `targets` are NumPy/OpenCV and share the crop, keypoint conventions and
normalisation with inference; `loop` (PyTorch) trains the twin. Importing this package does
not import torch: `refpose.train.loop` does.
"""
from ..errors import RefposeError

# torch.amp.GradScaler for CUDA and the CPU and `device_id` in init_process_group (2.3),
# torch.OutOfMemoryError (2.4): what the training loop uses
TORCH_MINIMUM = (2, 4)


class TrainError(RefposeError):
    """A run that cannot start or continue as asked (missing torch, device, resume, settings)."""


def require_torch():
    """The torch module, or TrainError naming the extra that installs it, or the version needed."""
    try:
        import torch
    except ImportError:
        raise TrainError("training needs PyTorch, which is not installed: pip install 'refpose[torch]'") from None
    if torch_version(torch.__version__) < TORCH_MINIMUM:
        need = ".".join(map(str, TORCH_MINIMUM))
        raise TrainError(f"training needs PyTorch {need} or later, this is {torch.__version__}: "
                         f"pip install 'torch>={need}'")
    return torch


def torch_version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '2.13.0+cpu' or '2.4.0a0+git1234'."""
    import re

    found = re.match(r"(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else (0, 0)
