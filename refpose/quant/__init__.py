"""int8 WGNet: integer semantics (`qdq`), the int8 file (`fileformat`), calibration (`calibrate`),
the int8 network on a plain NumPy reference or a Numba fast path (`network`, `reference`, `fast`),
its QDQ ONNX export (`onnx_qdq`) and the per-stage error report (`report`). DESIGN section 9."""
