"""A conformance suite that checks any WGNet port against refpose float64, run with pytest:

    pytest --pyargs refpose.conformance --refpose-backend onnx:model.onnx --refpose-weights w.safetensors

The options come from a pytest plugin (refpose.porting.conformance.plugin, registered through the
`pytest11` entry point, so installing refpose is enough); without them the suite skips itself
and the plugin does nothing. See `pytest --help` (group "refpose conformance") and the README.
"""
