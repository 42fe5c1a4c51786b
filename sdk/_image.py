"""Decoding images from paths, bytes or arrays into validated uint8 OpenCV arrays.

Failures raise :class:`ImageError` naming the source and the problem. The pixel limit is
checked from the file header *before* decoding for JPEG, PNG, BMP and WebP so a hostile
"decompression bomb" never allocates; other formats are checked after decoding.

JPEGs are turned upright by their EXIF orientation (as ``cv2.imread`` does), and, given a
preprocessing contract that allows it, decoded at a reduced scale (1/2, 1/4 or 1/8, in the
DCT domain) when the contract needs fewer pixels than the photo has: a phone photo or a
camera frame decodes several times faster. Other formats always decode in full (OpenCV
decodes PNG and WebP in full even when asked for a reduced size, so nothing would be saved).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ._errors import ImageError
from ._preprocess import PreprocessConfig, check_image_array

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 40 MP photo; configurable per call / per classifier


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


@dataclass(frozen=True)
class JpegHeader:
    """What decoding needs from a JPEG's header: its stored size, its number of colour
    components and its EXIF orientation (1 = upright, 2-8 as in the EXIF standard)."""

    width: int
    height: int
    components: int
    orientation: int = 1
    scan_offset: int | None = None  # where the first scan header (SOS) is; None: none found

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once turned by the orientation (5-8 swap the sides)."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


_EXIF_ORIENTATION_TAG = 0x0112
_SHORT = 3  # TIFF field type of the orientation value


def exif_orientation(tiff: bytes) -> int:
    """The orientation (1-8) in an EXIF block (a TIFF header and its first IFD), else 1."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == _EXIF_ORIENTATION_TAG and kind == _SHORT:
            (value,) = struct.unpack(order + "H", tiff[entry + 8:entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Walk a JPEG's marker segments up to its first scan: the frame header (SOF), the EXIF
    orientation and where the scan starts; None when there is no frame header before it."""
    orientation, frame = 1, None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:
            return None if frame is None else JpegHeader(*frame, orientation=orientation, scan_offset=i)
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            orientation = exif_orientation(data[i + 10:i + 2 + length])
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and frame is None:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            frame = (w, h, data[i + 9])
        i += 2 + length
    return None if frame is None else JpegHeader(*frame, orientation=orientation)


def _jpeg_size(data: bytes):
    """(width, height) as stored (before EXIF orientation), or None when not found."""
    header = jpeg_header(data)
    return None if header is None else (header.width, header.height)


def header_size(data: bytes):
    """(width, height) read from the header of a JPEG/PNG/BMP/WebP, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = 1 + int.from_bytes(data[24:27], "little")
            h = 1 + int.from_bytes(data[27:30], "little")
            return w, h
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and len(data) >= 25:
            b = data[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return w, h
    return None


def _check_complete(data: bytes, name: str, jpeg: JpegHeader | None = None) -> None:
    """Reject truncated JPEG/PNG streams that OpenCV would otherwise decode as partial garbage."""
    if data[:3] == b"\xff\xd8\xff":
        # Scan data never holds FF D9 (an FF byte there is stuffed as FF 00), so an end-of-image
        # marker after the first scan ends the image; searched from the end, it is found at once.
        # The scan is where the marker walk got to: an EXIF thumbnail's own markers are skipped.
        sos = jpeg.scan_offset if jpeg is not None and jpeg.scan_offset is not None else data.rfind(b"\xff\xda")
        if sos < 0 or data.rfind(b"\xff\xd9", sos) < 0:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker after the scan data)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def decode_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 preprocess: PreprocessConfig | None = None) -> np.ndarray:
    """Return a uint8 image (HxW gray, HxWx3 BGR or HxWx4 BGRA) from a path, bytes or array.

    JPEGs come out upright (EXIF orientation applied). ``preprocess``: the contract the image
    is decoded for; a JPEG is then decoded at the reduced scale its ``decode_scale`` allows
    (a contract with ``reduced_decode`` 0, and any other format, decode in full).

    Raises ImageError for a missing/unreadable file, empty, corrupt, truncated or non-image
    bytes, 16-bit or float data, unsupported channel counts and images over ``max_pixels``.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        check_image_array(source)
        _check_pixels(source.shape[1], source.shape[0], max_pixels, name)
        return source
    data = _read_bytes(source, name)
    jpeg = jpeg_header(data) if data[:3] == b"\xff\xd8\xff" else None
    size = (jpeg.width, jpeg.height) if jpeg is not None else header_size(data)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels, name)
    _check_complete(data, name, jpeg)
    scale = 1
    if jpeg is not None and preprocess is not None:
        scale = preprocess.decode_scale(*jpeg.upright_size)
    image = _imdecode(data, _decode_flags(jpeg, scale), name)
    if jpeg is not None:
        image = apply_orientation(image, jpeg.orientation)
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: {image.dtype} images are not supported "
                         "(16-bit or float data; convert to 8-bit)")
    try:
        check_image_array(image)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    _check_pixels(image.shape[1], image.shape[0], max_pixels, name)
    return image


def _read_bytes(source, name: str) -> bytes:
    """The encoded bytes of a path or bytes-like source (ImageError for anything else)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise ImageError(f"{name}: unsupported image source type; pass a path, encoded bytes "
                         "or a uint8 numpy array")
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return data


_REDUCED_FLAGS = {  # (scale, gray?) -> OpenCV flag; orientation is applied by apply_orientation
    (2, False): cv2.IMREAD_REDUCED_COLOR_2, (4, False): cv2.IMREAD_REDUCED_COLOR_4,
    (8, False): cv2.IMREAD_REDUCED_COLOR_8, (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4, (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _decode_flags(jpeg: JpegHeader | None, scale: int) -> int:
    """The cv2.imdecode flags: the image as stored (no orientation), at 1/``scale`` for a JPEG."""
    if jpeg is None or scale == 1:
        return cv2.IMREAD_UNCHANGED  # also leaves the EXIF orientation alone
    return _REDUCED_FLAGS[(scale, jpeg.components == 1)] | cv2.IMREAD_IGNORE_ORIENTATION


def _imdecode(data: bytes, flags: int, name: str) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({exc.err or exc})") from exc
    if image is None:
        raise ImageError(f"{name}: not a decodable image (corrupt data or unsupported format)")
    return image


# EXIF orientation -> (transpose first?, then cv2.flip code or None), as OpenCV's imread applies it
_ORIENTATIONS = {1: (False, None), 2: (False, 1), 3: (False, -1), 4: (False, 0),
                 5: (True, None), 6: (True, 1), 7: (True, -1), 8: (True, 0)}


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a decoded image upright by its EXIF orientation (1-8; 1 = as stored)."""
    transpose, flip = _ORIENTATIONS.get(orientation, (False, None))
    if transpose:
        image = cv2.transpose(image)
    if flip is not None:
        image = cv2.flip(image, flip)
    return image


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: image is {width}x{height} = {width * height} pixels, over the "
                         f"limit of {max_pixels} (raise max_pixels to allow it)")
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
