"""Keypoint conventions of a dataset, as data: joint names, flip pairs, OKS sigmas, skeleton.

One `Keypoints` entry per dataset (DESIGN section 7). Decoding (flip test), drawing,
evaluation, the twin and training read them from here, so a second dataset (MPII's 16
joints) is one more entry, not a second code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Keypoints:
    """The conventions of one dataset's person keypoints (0-based joint indices)."""
    name: str
    names: tuple[str, ...]                          # joint names, in the dataset's order
    flip_pairs: tuple[tuple[int, int], ...]         # joints that swap under a horizontal flip
    skeleton: tuple[tuple[int, int], ...]           # links drawn between joints
    sigmas: tuple[float, ...] | None = None         # per-joint OKS sigmas (None: no OKS metric)
    person_category: int = 1                        # the category id of a person in the files
    flip_index: tuple[int, ...] = field(init=False)  # joint k of a mirrored person is joint flip_index[k]

    def __post_init__(self):
        index = list(range(len(self.names)))
        for a, b in self.flip_pairs:
            index[a], index[b] = b, a
        object.__setattr__(self, "flip_index", tuple(index))

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def oks_sigmas(self) -> np.ndarray:
        if self.sigmas is None:
            raise ValueError(f"the {self.name} keypoints define no OKS sigmas")
        return np.asarray(self.sigmas, dtype=np.float64)


# COCO person keypoints (cocodataset.org/#format-data). The skeleton is the annotations'
# 19 links made 0-based; the sigmas are pycocotools' `Params.kpt_oks_sigmas`.
COCO = Keypoints(
    name="coco",
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear",
           "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
           "left_wrist", "right_wrist", "left_hip", "right_hip",
           "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
              (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
    sigmas=tuple(s / 10.0 for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                                    1.07, 1.07, .87, .87, .89, .89)),
)

# MPII Human Pose (Andriluka et al., CVPR 2014), 16 joints in the order of the benchmark's
# annotations and of MMPose `TopDownMpiiDataset` / HRNet `lib/dataset/mpii.py` (0 = right ankle
# ... 15 = left wrist); flip pairs as there. The skeleton follows MMPose's `mpii.py` dataset
# info: legs to the pelvis, pelvis - thorax - upper neck - head top, arms to the thorax.
# MPII is scored with PCKh (refpose.data.mpii), so there are no OKS sigmas.
MPII = Keypoints(
    name="mpii",
    names=("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
           "pelvis", "thorax", "upper_neck", "head_top",
           "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
              (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15)),
)

DATASETS = {COCO.name: COCO, MPII.name: MPII}


def for_joints(num_joints: int) -> Keypoints:
    """The dataset whose persons have `num_joints` joints (each dataset's count is its own)."""
    for kp in DATASETS.values():
        if kp.num_joints == num_joints:
            return kp
    raise ValueError(f"no keypoint conventions for {num_joints} joints; known: "
                     + ", ".join(f"{k.name} ({k.num_joints})" for k in DATASETS.values()))
