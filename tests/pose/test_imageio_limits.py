"""Image size limits (refpose/imageio.py): the size a header declares is read without decoding,
and an image above `max_pixels` is refused as "too large" before the decoder allocates it.

Expected sizes come from the arrays that were encoded (their shapes), never from the reader.
"""
import struct

import cv2
import numpy as np
import pytest
from test_imageio import chunk, distinct_rgb, png_bytes

import refpose.pose.imageio as imageio
from refpose.errors import ImageError
from refpose.pose.imageio import MAX_PIXELS, decode_image, image_size, read_image

H, W = 37, 53                               # odd sizes, width != height


def encoded(ext, params=()):
    a = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return cv2.imencode(ext, a[:, :, 0] if ext == ".pgm" else a, list(params))[1].tobytes()


FORMATS = [(".png", ()), (".jpg", ()), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), (".bmp", ()),
           (".webp", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)), (".tif", ()), (".ppm", ()), (".pgm", ())]


@pytest.mark.parametrize("ext, params", FORMATS)
def test_header_size_is_the_encoded_size(ext, params):
    assert image_size(encoded(ext, params)) == (W, H)


def test_header_size_of_gif_and_unknown():
    gif = b"GIF89a" + struct.pack("<HH", W, H) + b"\x00\x00\x00"
    assert image_size(gif) == (W, H)
    assert image_size(b"not an image") is None
    assert image_size(b"\x89PNG\r\n\x1a\n") is None          # cut inside the header


def png_declaring(w, h):
    """A small valid PNG whose IHDR is rewritten to declare w x h (CRC recomputed)."""
    data = png_bytes(distinct_rgb(20, 20), 2)
    ihdr = struct.pack(">II", w, h) + data[24:29]
    return data[:8] + chunk(b"IHDR", ihdr) + data[33:]


def no_decoding(*args, **kwargs):
    raise AssertionError("the decoder was called")


@pytest.mark.parametrize("w, h", [(100000, 100000), (20000, 20000)])
def test_png_declaring_a_huge_size_is_too_large_not_corrupt(tmp_path, monkeypatch, w, h):
    """A 389 KB PNG declaring 20000x20000 was decoded into 3.7 GB; 100000x100000 was 'truncated or corrupt'."""
    p = tmp_path / "huge.png"
    p.write_bytes(png_declaring(w, h))
    monkeypatch.setattr(imageio.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageError, match=rf"{p}: image too large: PNG declares {w}x{h} pixels \({w * h:,}\), "
                                         rf"more than the {MAX_PIXELS:,} allowed"):
        read_image(p)


def patched_jpeg(w, h):
    data = bytearray(encoded(".jpg"))
    i = data.index(b"\xff\xc0")                              # baseline frame header
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def patched_bmp(w, h):
    data = bytearray(encoded(".bmp"))
    data[18:26] = struct.pack("<ii", w, -h)                  # top-down rows: a negative height
    return bytes(data)


def patched_tiff(w, h):
    order = "<"
    entries = [(0x0100, 4, 1, w), (0x0101, 4, 1, h)]
    ifd = struct.pack(order + "H", len(entries)) + b"".join(struct.pack(order + "HHII", *e) for e in entries)
    return b"II" + struct.pack(order + "HI", 42, 8) + ifd + b"\x00" * 4


def vp8l(w, h):
    bits = (w - 1) | ((h - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("kind, data", [
    ("JPEG", patched_jpeg(60000, 60000)),
    ("BMP", patched_bmp(30000, 30000)),
    ("TIFF", patched_tiff(100000, 100000)),
    ("WebP", vp8l(16384, 16384)),
    ("GIF", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 8),
    ("the header", b"P6\n# a comment\n30000 30000\n255\n" + b"\x00" * 64),
])
def test_every_header_format_is_checked_before_decoding(monkeypatch, kind, data):
    monkeypatch.setattr(imageio.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageError, match=f"image too large: {kind} declares"):
        decode_image(data, "x")


def test_max_pixels_is_a_parameter(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(encoded(".png"))
    assert read_image(p, max_pixels=W * H).shape == (H, W, 3)
    with pytest.raises(ImageError, match=f"declares {W}x{H} pixels"):
        read_image(p, max_pixels=W * H - 1)


def test_a_file_too_big_for_any_image_within_the_limit_is_not_read(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(encoded(".png") + b"\x00" * (2 ** 20 + 8 * 100))
    with pytest.raises(ImageError, match="file too large"):
        read_image(p, max_pixels=100)


def test_the_default_limit_passes_a_large_photo_header():
    # 150 MP, the largest production camera sensor (14204x10652), is below the default
    assert image_size(png_declaring(14204, 10652)) == (14204, 10652)
    assert 14204 * 10652 < MAX_PIXELS < 20000 * 20000


def test_a_device_that_never_ends_is_refused_before_it_is_read():
    """read_image('/dev/zero') read until memory ran out; anything but a regular file is refused."""
    with pytest.raises(ImageError, match="/dev/zero: a device, not a regular file"):
        read_image("/dev/zero", max_pixels=1000)
