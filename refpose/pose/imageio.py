"""Reading images for inference: any file OpenCV decodes, as RGB uint8 (H, W, 3), upright.

OpenCV decodes (JPEG, PNG, BMP, WebP, TIFF, ...); this module adds what a pose pipeline
needs on top of `cv2.imread`:
- EXIF orientation (tag 0x0112) applied, read from JPEG APP1, PNG eXIf, WebP EXIF or TIFF
  IFD0 by a small parser of our own, so that every format and every OpenCV version agree
  (OpenCV applies the tag only in some modes and formats);
- grayscale -> three equal channels; RGBA -> composited over white (transparent regions
  become a plain background, not whatever colour happens to be stored under alpha 0);
  16-bit -> 8-bit by round(v / 257), which maps 0..65535 exactly onto 0..255;
- a missing, empty, truncated or non-image file -> `ImageError` naming the file, with
  nothing printed by the decoders (libpng and OpenCV write to stderr themselves);
- an image whose header declares more than `max_pixels` pixels -> `ImageError` ("too large"),
  before anything is decoded: a file of a few hundred KB can declare 20000x20000 pixels, which
  the decoder allocates in full. The size is read from the header of PNG, JPEG, BMP, GIF, WebP,
  TIFF and PNM files by `image_size`; other formats are checked after decoding (OpenCV refuses
  more than 2^30 pixels itself, `OPENCV_IO_MAX_IMAGE_PIXELS`).
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import sys

import cv2
import numpy as np

from ..errors import ImageError
from ..fileio import path_problem

# magic bytes -> format name, for messages that tell "truncated JPEG" from "not an image"
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff",
                  ".pbm", ".pgm", ".ppm", ".pnm", ".jp2")
EXIF_ORIENTATION_TAG = 0x0112
TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG = 0x0100, 0x0101
# 200 megapixels: above every production camera sensor (the largest, medium format, is ~150 MP)
# and far above what a person crop of 256x192 needs; decoded as RGB it takes 600 MB per copy.
MAX_PIXELS = 200_000_000
BYTES_PER_PIXEL_MAX = 8              # uncompressed 16-bit RGBA: no image file is larger per pixel


def read_image(path: "str | os.PathLike", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image at `path` as RGB uint8 (H, W, 3), EXIF orientation applied; at most `max_pixels`."""
    path = os.fspath(path)
    problem = path_problem(path)
    if problem:
        raise ImageError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            limit = BYTES_PER_PIXEL_MAX * max_pixels + 2 ** 20
            data = f.read(limit + 1)              # bounded: a device or a pipe may never end
        if len(data) > limit:
            raise ImageError(f"{path}: file too large for an image of at most {max_pixels:,} pixels "
                             f"(more than {limit:,} bytes)")
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    return decode_image(data, path, max_pixels)


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode the bytes of an image file (see `read_image`); `name` is used in messages."""
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    kind = image_format(data)
    declared = image_size(data)
    if declared is not None:
        check_pixels(name, kind or "the header", declared, max_pixels)
    if kind == "JPEG" and _jpeg_truncated(data):
        raise ImageError(f"{name}: truncated JPEG file (no end-of-image marker after the last scan)")
    with quiet_stderr():
        try:
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            raw = None
    if raw is None:
        if kind is None:
            raise ImageError(f"{name}: not an image file OpenCV can decode (JPEG, PNG, BMP, WebP, TIFF, ...)")
        raise ImageError(f"{name}: truncated or corrupt {kind} file")
    check_pixels(name, "the decoder", (raw.shape[1], raw.shape[0]), max_pixels)
    rgb = to_rgb8(raw, name)
    return apply_orientation(rgb, exif_orientation(data))


def image_format(data: bytes) -> str | None:
    """'JPEG', 'PNG', 'BMP', 'TIFF', 'GIF' or 'WebP' from the magic bytes; None if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    return None


def check_pixels(name: str, source: str, size: tuple[int, int], max_pixels: int = MAX_PIXELS,
                 error: type = ImageError, what: str = "image") -> None:
    """`error` unless `size` (width, height), as `source` declares it, is at most `max_pixels`:
    the one pixel limit of images and video frames."""
    w, h = size
    if w * h > max_pixels:
        raise error(f"{name}: {what} too large: {source} declares {w}x{h} pixels ({w * h:,}), "
                    f"more than the {max_pixels:,} allowed")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM);
    None for other formats or a header too damaged to read. Nothing is decoded."""
    try:
        return _header_size(data)
    except (struct.error, IndexError, ValueError):
        return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    kind = image_format(data)
    if kind == "PNG" and data[12:16] == b"IHDR":                 # PNG spec 11.2.2: IHDR comes first
        return struct.unpack(">II", data[16:24])
    if kind == "JPEG":                                           # ITU T.81 B.2.2: the frame header
        for marker, i in _jpeg_segments(data):
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # SOF0..SOF15
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
        return None
    if kind == "BMP":                                            # BITMAPCOREHEADER or BITMAPINFOHEADER+
        if struct.unpack("<I", data[14:18])[0] == 12:
            return struct.unpack("<HH", data[18:22])
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)                                    # a negative height: rows top-down
    if kind == "GIF":                                            # the logical screen
        return struct.unpack("<HH", data[6:10])
    if kind == "WebP":                                           # the first chunk: VP8, VP8L or VP8X
        ctype = data[12:16]
        if ctype == b"VP8 ":                                     # RFC 6386 9.1: 14-bit sizes after the start code
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if ctype == b"VP8L":                                     # 14-bit width-1 and height-1 after the signature
            bits = struct.unpack("<I", data[21:25])[0]
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if ctype == b"VP8X":                                     # 24-bit canvas width-1 and height-1
            return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
        return None
    if kind == "TIFF":
        tags = _ifd0_values(data, (TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG))
        if TIFF_WIDTH_TAG in tags and TIFF_HEIGHT_TAG in tags:
            return tags[TIFF_WIDTH_TAG], tags[TIFF_HEIGHT_TAG]
        return None
    m = re.match(rb"P[1-6](?:\s|#[^\n]*\n)+(\d{1,12})(?:\s|#[^\n]*\n)+(\d{1,12})", data[:4096])   # PNM (Netpbm)
    if m:
        return int(m.group(1)), int(m.group(2))
    return None


def _jpeg_segments(data: bytes):
    """(marker, offset) of each marker segment of a JPEG file before its first scan (ITU T.81
    B.1.1: FF, the marker, a 2-byte length that counts itself; fill bytes FF may come between)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:                  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:        # markers without a length
            i += 2
            continue
        if marker in (0xDA, 0xD9):          # start of scan / end of image: no more headers
            return
        yield marker, i
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]


def to_rgb8(raw: np.ndarray, name: str = "image") -> np.ndarray:
    """An array from `cv2.imdecode(..., IMREAD_UNCHANGED)` (BGR/BGRA/gray, 8 or 16 bit) -> RGB uint8."""
    if raw.dtype == np.uint16:
        raw = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)    # round(v / 257): 65535 -> 255
    elif raw.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {raw.dtype} (8- and 16-bit images are read)")
    if raw.ndim == 2:
        raw = raw[:, :, None]
    channels = raw.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(raw, 3, axis=2))           # (H, W, 3)
    if channels == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return _over_white(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA))
    raise ImageError(f"{name}: unsupported number of channels {channels}")


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA uint8 over a white background: rgb * a + 255 * (1 - a), rounded."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    a = rgba[:, :, 3:].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _jpeg_truncated(data: bytes) -> bool:
    """True when no EOI marker (FF D9) follows the last start-of-scan (FF DA).

    Entropy-coded data never holds FF D9 (an FF there is stuffed as FF 00), so in a complete
    file the last scan is always followed by the EOI; some decoders fill a cut-off scan with
    grey instead of failing, which would pass a truncated photo off as a valid one.
    """
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (libpng and OpenCV print there) for the duration."""
    fd = 2                                    # where C libraries write, whatever sys.stderr is now
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):             # no descriptor 2 at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


# --- EXIF orientation ------------------------------------------------------------------------
def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) stored in a JPEG, PNG, WebP or TIFF file; 1 when absent or unreadable."""
    try:
        tiff = _exif_block(data)
        value = _tiff_orientation(tiff) if tiff else None
    except (struct.error, IndexError, ValueError):
        value = None
    return value if value in range(1, 9) else 1


def _exif_block(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF payload of the file, or None."""
    kind = image_format(data)
    if kind == "TIFF":
        return data
    if kind == "JPEG":
        for marker, i in _jpeg_segments(data):
            segment = data[i + 4:i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]]
            if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
                return segment[6:]
        return None
    if kind == "PNG":
        i = 8
        while i + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[i:i + 8])
            if ctype == b"eXIf":
                return data[i + 8:i + 8 + length]
            if ctype in (b"IDAT", b"IEND"):     # eXIf must come before the image data
                return None
            i += 12 + length
        return None
    if kind == "WebP":
        i = 12
        while i + 8 <= len(data):
            ctype, length = struct.unpack("<4sI", data[i:i + 8])
            if ctype == b"EXIF":
                block = data[i + 8:i + 8 + length]
                return block[6:] if block.startswith(b"Exif\x00\x00") else block
            i += 8 + length + (length & 1)      # chunks are padded to an even size
        return None
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of IFD0 in a TIFF structure."""
    return _ifd0_values(tiff, (EXIF_ORIENTATION_TAG,)).get(EXIF_ORIENTATION_TAG)


def _ifd0_values(tiff: bytes, tags: tuple[int, ...]) -> dict[int, int]:
    """The SHORT or LONG values of `tags` in IFD0 of a TIFF structure (TIFF 6.0 section 2:
    header, IFD entries of 12 bytes, a value of count 1 stored left-justified in the entry)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return {}
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    values = {}
    for n in range(count):
        entry = tiff[ifd + 2 + 12 * n:ifd + 14 + 12 * n]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in tags and tag not in values:
            if typ == 3:                        # SHORT
                values[tag] = struct.unpack(order + "H", entry[8:10])[0]
            elif typ == 4:                      # LONG
                values[tag] = struct.unpack(order + "I", entry[8:12])[0]
    return values


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF orientation 1..8 upright (EXIF 2.3, tag 0x0112).

    2 mirror, 3 rotate 180, 4 flip vertically, 5 transpose, 6 rotate 90 clockwise,
    7 transverse (mirror, then rotate 90 clockwise), 8 rotate 90 counter-clockwise.
    """
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.flip(image, 1), cv2.ROTATE_90_CLOCKWISE)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image
