"""Exceptions raised by refpose. The CLI turns every one of them into one line on stderr."""


class RefposeError(Exception):
    """Base class of every error refpose raises on purpose."""


class ConfigError(RefposeError, ValueError):
    """A configuration that cannot be built (names the stage at fault)."""


class InputShapeError(RefposeError, ValueError):
    """An input array whose shape or dtype the model cannot take."""


class WeightsError(RefposeError, ValueError):
    """A weights file that is missing, unreadable, or does not match the config."""


class ImageError(RefposeError):
    """An image that is missing, unreadable, or not an image."""


class BoxError(RefposeError, ValueError):
    """A person box that is malformed, empty, or outside the image."""


class DataError(RefposeError):
    """A JSON file (annotations, detections, results) that is malformed or inconsistent."""


class BackendError(RefposeError):
    """A backend under test (an ONNX file, or the runtime it needs) that is missing, unreadable,
    or does not fit the interface of DESIGN section 5 (input/output names and shapes)."""


class BenchError(RefposeError, ValueError):
    """A benchmark that cannot run as asked (thread count, number of runs, batch size)."""


class OutputError(RefposeError):
    """An output file that cannot be written: a folder of that name, a parent that is a file,
    no permission, a full disk."""
