"""Datasets and metrics: COCO keypoint files and AP (`coco`), MPII PCKh (`mpii`), the resumable
evaluation runner (`evaluate`) and synthetic COCO-style data for smoke tests (`synth`)."""
