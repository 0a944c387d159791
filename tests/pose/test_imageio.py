"""Tests of image reading (refpose/imageio.py).

PNG files are written here by a small encoder of the PNG spec (zlib + CRC chunks), so the
expected pixels (channel order, bit depth, alpha, EXIF orientation) do not depend on OpenCV's
encoder; orientations are checked against numpy rotations written from the EXIF definition,
and once against OpenCV's own EXIF handling (`cv2.imread` in colour mode applies it).
"""
import struct
import zlib

import cv2
import numpy as np
import pytest

from refpose.errors import ImageError
from refpose.pose.imageio import apply_orientation, exif_orientation, read_image


def png_bytes(arr: np.ndarray, color_type: int, bit_depth: int = 8, extra_chunks: bytes = b"") -> bytes:
    """A PNG file (PNG spec: IHDR, optional chunks, one IDAT, IEND; filter 0 on every row)."""
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[y].astype(dt).tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra_chunks + chunk(b"IDAT", zlib.compress(raw)) \
        + chunk(b"IEND", b"")


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def tiff_orientation(value: int, order: str = ">") -> bytes:
    """A TIFF structure whose IFD0 holds only the orientation tag (0x0112, SHORT, count 1)."""
    head = (b"MM" if order == ">" else b"II") + struct.pack(order + "HI", 42, 8)
    entry = struct.pack(order + "HHIHH", 0x0112, 3, 1, value, 0)
    return head + struct.pack(order + "H", 1) + entry + struct.pack(order + "I", 0)


def jpeg_with_exif(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment right after SOI."""
    payload = b"Exif\x00\x00" + tiff_orientation(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# what each EXIF orientation asks for, written from the definition (EXIF 2.3, tag 0x0112)
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                         # mirrored
    3: lambda a: a[::-1, ::-1],                      # rotated 180
    4: lambda a: a[::-1],                            # upside down mirror
    5: lambda a: a.transpose(1, 0, 2),               # 0th row is the left side, 0th column the top
    6: lambda a: np.rot90(a, -1),                    # needs 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),   # 0th row is the right side, 0th column the bottom
    8: lambda a: np.rot90(a, 1),                     # needs 90 degrees counter-clockwise
}


def distinct_rgb(h=3, w=5) -> np.ndarray:
    """An RGB image whose every pixel differs from the others, and whose channels differ."""
    v = np.arange(h * w, dtype=np.uint8).reshape(h, w)
    return np.stack([v * 10, v * 10 + 1, 255 - v * 10], axis=-1)


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- pixel formats -------------------------------------------------------------------------------
def test_png_rgb_channel_order(tmp_path):
    a = distinct_rgb()
    got = read_image(write(tmp_path, "a.png", png_bytes(a, 2)))
    assert got.dtype == np.uint8 and got.shape == (3, 5, 3)
    np.testing.assert_array_equal(got, a)


def test_png_gray_is_three_equal_channels(tmp_path):
    g = np.array([[0, 7, 255], [128, 1, 2]], np.uint8)
    got = read_image(write(tmp_path, "g.png", png_bytes(g, 0)))
    np.testing.assert_array_equal(got, np.repeat(g[..., None], 3, axis=2))


def test_png_16_bit_scaled_to_8_bit(tmp_path):
    v = np.array([[0, 65535, 257 * 7, 257 * 7 + 128, 257 * 7 + 129]], np.uint16)
    got = read_image(write(tmp_path, "g16.png", png_bytes(v, 0, 16)))
    # round(v / 257): 7 + 128/257 < 7.5 rounds down, 7 + 129/257 > 7.5 rounds up
    np.testing.assert_array_equal(got[0, :, 0], [0, 255, 7, 7, 8])
    rgb16 = np.stack([v, v // 2, 65535 - v], axis=-1)
    got = read_image(write(tmp_path, "rgb16.png", png_bytes(rgb16, 2, 16)))
    np.testing.assert_array_equal(got[0, 1], [255, 127, 0])     # 65535, 32767 (= 127.498 x 257), 0


def test_png_rgba_over_white(tmp_path):
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [200, 100, 0, 51]]], np.uint8)
    got = read_image(write(tmp_path, "a.png", png_bytes(rgba, 6)))
    # alpha 51 = 0.2: 0.2 * c + 0.8 * 255 -> 244, 224, 204
    np.testing.assert_array_equal(got[0], [[255, 255, 255], [200, 100, 0], [244, 224, 204]])


def test_png_gray_alpha_over_white(tmp_path):
    ga = np.array([[[100, 0], [100, 255], [100, 51]]], np.uint8)
    got = read_image(write(tmp_path, "ga.png", png_bytes(ga, 4)))
    np.testing.assert_array_equal(got[0, :, 0], [255, 100, 224])   # 0.2 * 100 + 0.8 * 255 = 224


@pytest.mark.parametrize("ext, params", [(".bmp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
                                         (".png", []), (".tiff", [])])
def test_lossless_formats_round_trip(tmp_path, ext, params):
    a = distinct_rgb(6, 7)
    ok, buf = cv2.imencode(ext, a[..., ::-1], params)       # OpenCV writes BGR
    assert ok
    np.testing.assert_array_equal(read_image(write(tmp_path, "a" + ext, buf.tobytes())), a)


def test_jpeg(tmp_path):
    a = np.zeros((32, 48, 3), np.uint8)
    a[..., 0] = 200                                           # a flat red-ish image
    a[..., 1] = 60
    ok, buf = cv2.imencode(".jpg", a[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    got = read_image(write(tmp_path, "a.jpg", buf.tobytes()))
    assert got.shape == (32, 48, 3)
    # a flat colour survives JPEG at quality 95 to within a few levels (chroma quantisation)
    assert np.abs(got.astype(int) - a).max() <= 4


# --- EXIF orientation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_exif_orientation(tmp_path, orientation):
    a = distinct_rgb()
    data = png_bytes(a, 2, extra_chunks=chunk(b"eXIf", tiff_orientation(orientation, "<")))
    assert exif_orientation(data) == orientation
    np.testing.assert_array_equal(read_image(write(tmp_path, "o.png", data)), UPRIGHT[orientation](a))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_the_definition(orientation):
    a = distinct_rgb(4, 6)
    np.testing.assert_array_equal(apply_orientation(a, orientation), UPRIGHT[orientation](a))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_jpeg_exif_orientation_agrees_with_opencv(tmp_path, orientation):
    a = np.zeros((40, 64, 3), np.uint8)
    a[:8, :16] = 255                                          # a white corner, top left when stored
    ok, buf = cv2.imencode(".jpg", a)
    p = write(tmp_path, "o.jpg", jpeg_with_exif(buf.tobytes(), orientation))
    got = read_image(p)
    expected = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)   # applies EXIF
    np.testing.assert_array_equal(got, expected)
    assert got.shape == UPRIGHT[orientation](a).shape
    # and the corner went where the definition says (JPEG blurs edges: compare block means)
    moved = UPRIGHT[orientation](a).astype(float)
    assert np.abs(got.astype(float).mean(axis=2) - moved.mean(axis=2)).mean() < 8


def test_webp_exif_orientation(tmp_path):
    a = distinct_rgb(4, 6)
    ok, buf = cv2.imencode(".webp", a[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
    simple = buf.tobytes()
    image_chunk = simple[12:]                                  # the VP8L chunk of the simple file
    exif = b"EXIF" + struct.pack("<I", len(tiff_orientation(6))) + tiff_orientation(6)
    # extended format (WebP container spec): VP8X with the EXIF flag (bit 3), canvas size - 1 (24 bits)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) \
        + (6 - 1).to_bytes(3, "little") + (4 - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + image_chunk + exif
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    assert exif_orientation(data) == 6
    np.testing.assert_array_equal(read_image(write(tmp_path, "o.webp", data)), UPRIGHT[6](a))


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe1\x00", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x05eXIf\x00",
                                  b"II*\x00\xff\xff\xff\xff", b"not an image at all"])
def test_exif_orientation_of_damaged_headers_is_1(data):
    assert exif_orientation(data) == 1


# --- bad files ----------------------------------------------------------------------------------------
def _jpeg() -> bytes:
    a = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", a)[1].tobytes()


@pytest.mark.parametrize("name, make, problem", [
    ("empty.jpg", lambda: b"", "empty"),
    ("cut.jpg", lambda: _jpeg()[:-2], "truncated JPEG"),            # only the end-of-image marker gone
    ("half.jpg", lambda: _jpeg()[:len(_jpeg()) // 2], "truncated JPEG"),
    ("cut.png", lambda: png_bytes(distinct_rgb(20, 20), 2)[:-30], "truncated or corrupt PNG"),
    ("cut.bmp", lambda: cv2.imencode(".bmp", distinct_rgb(20, 20))[1].tobytes()[:-50], "truncated or corrupt BMP"),
    ("text.jpg", lambda: b"hello, I am a text file\n", "not an image"),
])
def test_bad_files_raise_image_error_naming_the_file(tmp_path, capfd, name, make, problem):
    p = write(tmp_path, name, make())
    with pytest.raises(ImageError, match=problem) as e:
        read_image(p)
    assert str(e.value).startswith(f"{p}: ")
    out, err = capfd.readouterr()
    assert out == "" and err == ""          # libpng and OpenCV kept quiet


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file") as e:
        read_image(tmp_path / "nope.jpg")
    assert str(tmp_path / "nope.jpg") in str(e.value)
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)
