"""Decoding images from paths, bytes or arrays into validated uint8 OpenCV arrays.

Failures raise :class:`ImageError` naming the source and the problem. The cost of any input is
bounded before anything is allocated: the format and size are read from the header
(:mod:`._headers`; an unrecognised or non-8-bit format is refused) and checked against two
limits, options of every caller: ``max_pixels`` (width x height, default 40 M) and
``max_aspect_ratio`` (longer side / shorter side, default 100). A "decompression bomb" or a
1 x 200000 strip is refused in microseconds with :class:`ImageTooLargeError`.

JPEGs are turned upright by their EXIF orientation (as ``cv2.imread`` does), and, given a
preprocessing contract that allows it, decoded at a reduced scale (1/2, 1/4 or 1/8, in the
DCT domain) when the contract needs fewer pixels than the photo has: a phone photo or a
camera frame decodes several times faster. Other formats always decode in full (OpenCV
decodes PNG and WebP in full even when asked for a reduced size, so nothing would be saved).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ._errors import ImageError, ImageTooLargeError
from ._headers import ImageHeader, JpegHeader, png_end, read_header
from ._preprocess import PreprocessConfig, check_image_array

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 40 MP photo; configurable per call / per classifier
DEFAULT_MAX_ASPECT_RATIO = 100.0  # a shelf panorama passes; a 1 x 200000 strip does not


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def _check_complete(data: bytes, name: str, jpeg: JpegHeader | None = None) -> None:
    """Reject truncated JPEG/PNG streams that OpenCV would otherwise decode as partial garbage."""
    if data[:3] == b"\xff\xd8\xff":
        # Scan data never holds FF D9 (an FF byte there is stuffed as FF 00), so an end-of-image
        # marker after the first scan ends the image; searched from the end, it is found at once.
        # The scan is where the marker walk got to: an EXIF thumbnail's own markers are skipped.
        sos = jpeg.scan_offset if jpeg is not None and jpeg.scan_offset is not None else data.rfind(b"\xff\xda")
        if sos < 0 or data.rfind(b"\xff\xd9", sos) < 0:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker after the scan data)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and png_end(data) is None:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def decode_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 preprocess: PreprocessConfig | None = None,
                 max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> np.ndarray:
    """Return a uint8 image (HxW gray, HxWx3 BGR or HxWx4 BGRA) from a path, bytes or array.

    JPEGs come out upright (EXIF orientation applied). ``preprocess``: the contract the image
    is decoded for; a JPEG is then decoded at the reduced scale its ``decode_scale`` allows
    (a contract with ``reduced_decode`` 0, and any other format, decode in full).

    Raises ImageError for a missing/unreadable file, empty, corrupt, truncated or non-image
    bytes, an unrecognised format, 16-bit or float data and unsupported channel counts, and
    ImageTooLargeError (an ImageError) for images over ``max_pixels`` or ``max_aspect_ratio``,
    checked from the header before decoding.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        check_image_array(source)
        check_size(source.shape[1], source.shape[0], name, max_pixels, max_aspect_ratio)
        return source
    data = _read_bytes(source, name)
    jpeg = check_encoded(data, name, max_pixels, max_aspect_ratio).jpeg
    _check_complete(data, name, jpeg)
    scale = 1
    if jpeg is not None and preprocess is not None:
        scale = preprocess.decode_scale(*jpeg.upright_size)
    image = _imdecode(data, _decode_flags(jpeg, scale), name)
    if jpeg is not None:
        if _grey_tail(image, scale):
            raise ImageError(f"{name}: truncated or corrupt JPEG (it ends in the flat grey (128, 128, 128) the "
                             "decoder puts in place of missing data)")
        image = apply_orientation(image, jpeg.orientation)
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: {image.dtype} images are not supported "
                         "(16-bit or float data; convert to 8-bit)")
    try:
        check_image_array(image)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    check_size(image.shape[1], image.shape[0], name, max_pixels, max_aspect_ratio)
    return image


def check_encoded(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> ImageHeader:
    """What is checked of encoded bytes before any decoding: a recognised 8-bit format
    (ImageError), the declared size within the limits, a pixel of JPEG 2000 or AVIF counting as
    several (ImageTooLargeError), and a size the bytes can really encode (ImageError)."""
    header = read_header(data, name)
    cost = header.pixel_cost
    note = f"; {header.format} counts {cost} pixels per pixel: its decoder needs that much more memory"
    check_size(header.width, header.height, name, max_pixels // cost, max_aspect_ratio, note if cost > 1 else "")
    if header.implausible(len(data)):
        raise ImageError(f"{name}: {header.format} header declares {header.width}x{header.height} pixels, more "
                         f"than {len(data)} bytes can hold (a truncated or forged file)")
    return header


def _grey_tail(image: np.ndarray, scale: int) -> bool:
    """True when a decoded JPEG (as stored, before its orientation) ends in exactly 128 in every
    channel (its bottom-right 4 x 4 pixels at full scale) and is not grey all over: what libjpeg
    decodes where the scan data ran out (a file cut short and closed with an end marker), as it
    zeroes every block after that point and the last block in the scan is the bottom-right one.
    None of the 5502 Grocery photos (train, val, test and catalogue images) ends so."""
    side = max(1, 4 // scale)  # half a block: chroma upsampling blends the grey block's first rows
    if min(image.shape[:2]) <= side or not np.all(image[-1, -1] == 128):
        return False  # the cheap test first: one pixel
    return bool((image[-side:, -side:] == 128).all()) and not bool((image == 128).all())


def _read_bytes(source, name: str) -> bytes:
    """The encoded bytes of a path or bytes-like source (ImageError for anything else)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if not path.is_file():
                raise ImageError(f"{name}: no such image file")
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


def check_size(width: int, height: int, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO, note: str = "") -> None:
    """ImageTooLargeError unless a ``width`` x ``height`` image is within the limits (and has
    pixels at all: ImageError); ``note`` is added to the pixel-limit message."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: image is {width}x{height} = {width * height} pixels, over the "
                                 f"limit of {max_pixels} (raise max_pixels to allow it){note}")
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageTooLargeError(f"{name}: image is {width}x{height}, an aspect ratio over the limit of "
                                 f"{max_aspect_ratio:g}:1 (raise max_aspect_ratio to allow it)")
