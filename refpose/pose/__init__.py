"""From an image to poses: person crops, the network's heatmaps decoded, COCO records.

`pipeline` runs the top-down steps on images in memory; `driver` runs them over image files (and
video frames), reading, batching the crops of several images together and reporting each image's
errors. Around them: reading images (`imageio`) and videos (`video`), person boxes from files
(`boxes`) or an ONNX detector (`detector`), OKS-NMS, drawing and smoothing over time.
"""
