"""Bad input gets a clear ImageError naming the problem."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from skulens import ImageError, decode_image


def _png(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decodes_path_bytes_and_array(grocery_image):
    from_path = decode_image(grocery_image)
    assert from_path.dtype == np.uint8 and from_path.ndim == 3 and from_path.shape[2] == 3
    np.testing.assert_array_equal(decode_image(grocery_image.read_bytes()), from_path)
    assert decode_image(from_path) is from_path


def test_missing_file_and_empty_bytes(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        decode_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        decode_image(tmp_path / "empty.jpg")


def test_truncated_jpeg_is_refused_not_half_decoded(grocery_image, tmp_path):
    data = grocery_image.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.jpg"
        bad.write_bytes(data[:cut])
        with pytest.raises(ImageError, match=f"cut{cut}.jpg: truncated JPEG"):
            decode_image(bad)


def test_truncated_png_and_non_image_bytes(grocery_image):
    ok, png = cv2.imencode(".png", decode_image(grocery_image))
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(png.tobytes()[:-200])
    with pytest.raises(ImageError, match="not a recognised image format"):
        decode_image(b"hello, this is not an image at all" * 10)


def test_sixteen_bit_images_are_refused():
    ok, png16 = cv2.imencode(".png", np.full((8, 8), 40000, np.uint16))
    with pytest.raises(ImageError, match="16-bit PNG images are not supported"):  # from the header
        decode_image(png16.tobytes())
    ok, tiff16 = cv2.imencode(".tiff", np.full((8, 8), 40000, np.uint16))
    with pytest.raises(ImageError, match="16-bit TIFF images are not supported"):
        decode_image(tiff16.tobytes())


def test_pixel_limit_is_checked_from_the_header_before_decoding(grocery_image):
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(_png(100_000, 100_000))  # a "bomb" header: never allocated
    with pytest.raises(ImageError, match=r"348x464 = 161472 pixels, over the limit of 100000"):
        decode_image(grocery_image, max_pixels=100_000)


def test_unsupported_source_type():
    with pytest.raises(ImageError, match="unsupported image source type"):
        decode_image(12345)


@pytest.mark.parametrize("exif", [
    b"Exif\x00\x00XX*\x00\x08\x00\x00\x00",                    # unknown byte order
    b"Exif\x00\x00II*\x00\xff\xff\x00\x00",                    # IFD offset past the end
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x09\x00\x12\x01",    # 9 entries announced, half of one there
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00",  # value 9
])
def test_broken_exif_is_read_as_upright(grocery_image, exif):
    data = grocery_image.read_bytes()
    tagged = data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:]
    np.testing.assert_array_equal(decode_image(tagged), decode_image(data))
