"""For people who port WGNet to other backends: the PyTorch twin, ONNX export, the oracle that
compares a port with refpose float64 stage by stage, the conformance suite and the benchmark."""
