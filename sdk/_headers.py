"""What an encoded image declares before it is decoded: its format and its size.

:func:`read_header` recognises every format the bundled OpenCV decodes (JPEG, PNG, BMP, WebP,
GIF, TIFF, PNM/PAM, JPEG 2000, AVIF, Sun raster) and reads the dimensions its decoder will
allocate for, so that the pixel and aspect-ratio limits are checked before any allocation. A
format it does not recognise, or one whose pixels are not 8-bit (PFM, Radiance HDR, OpenEXR), is
refused: OpenCV would decode it without the check. The parsers only walk headers: their cost is
bounded by the file's length, never by the dimensions it declares.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ._errors import ImageError


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


@dataclass(frozen=True)
class ImageHeader:
    """An encoded image's format and the size (width, height) its decoder allocates for.
    ``jpeg``: the JPEG header details (orientation, components) for a JPEG, else None."""

    format: str
    width: int
    height: int
    jpeg: JpegHeader | None = None

    @property
    def pixel_cost(self) -> int:
        """How many pixels of the budget one of this image's pixels counts for: OpenJPEG holds
        every sample as a 32-bit integer (4x what other decoders need), libavif a YUV frame and
        an RGBA copy beside the output (3x); a 12 MP AVIF still fits the default budget."""
        return {"JPEG 2000": 4, "AVIF": 3}.get(self.format, 1)

    def implausible(self, n_bytes: int) -> bool:
        """True when ``n_bytes`` of data cannot describe this many pixels: a JPEG (Huffman coded)
        spends at least 1 bit per 8 x 8 block, a GIF at least 3 bits per LZW code of at most 4096
        pixels. Such a file is truncated or forged, and its decoder would fill the missing
        pixels with grey at the full size's cost."""
        per_byte = {"JPEG": 512, "GIF": 4096 * 8 // 3}.get(self.format)
        return per_byte is not None and self.width * self.height > per_byte * n_bytes


_EXIF_ORIENTATION_TAG = 0x0112
_SHORT, _LONG = 3, 4  # TIFF field types


def exif_orientation(tiff: bytes) -> int:
    """The orientation (1-8) in an EXIF block (a TIFF header and its first IFD), else 1."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return 1
    for tag, kind, value in _ifd_entries(tiff, order, struct.unpack(order + "I", tiff[4:8])[0]):
        if tag == _EXIF_ORIENTATION_TAG and kind == _SHORT:
            return value if 1 <= value <= 8 else 1
    return 1


def _ifd_entries(tiff: bytes, order: str, ifd: int):
    """(tag, type, value) of the entries of the TIFF directory at offset ``ifd``: value is the
    field's first number for SHORT/LONG fields (read where the field points when it does not fit
    in the entry), else 0."""
    if ifd + 2 > len(tiff):
        return
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, n = struct.unpack(order + "HHI", tiff[entry:entry + 8])
        value = 0
        if kind in (_SHORT, _LONG):
            fmt, size = (order + "H", 2) if kind == _SHORT else (order + "I", 4)
            at = entry + 8 if n * size <= 4 else struct.unpack(order + "I", tiff[entry + 8:entry + 12])[0]
            if at + size <= len(tiff):
                (value,) = struct.unpack(fmt, tiff[at:at + size])
        yield tag, kind, value


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


# -- one parser per format: (width, height), or None when the header is malformed ---------------
def _png(data: bytes):
    if len(data) >= 25 and data[12:16] == b"IHDR":
        if data[24] > 8:
            raise ImageError(f"{data[24]}-bit PNG images are not supported (convert to 8-bit)")
        return struct.unpack(">II", data[16:24])
    return None


def _bmp(data: bytes):
    if len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # BITMAPCOREHEADER: 16-bit sides
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _webp(data: bytes):
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = data[21:25]
        return (1 + (((b[1] & 0x3F) << 8) | b[0]),
                1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6)))
    return None


def _gif(data: bytes):
    """The logical screen, grown to hold the first frame (its descriptor can reach past it)."""
    if len(data) < 13:
        return None
    w, h = struct.unpack("<HH", data[6:10])
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while i < len(data):
        block = data[i]
        if block == 0x21:  # extension: label, then data sub-blocks up to a 0-length one
            i += 2
            while i < len(data) and data[i]:
                i += 1 + data[i]
            i += 1
        elif block == 0x2C and i + 9 <= len(data):  # the first image descriptor
            left, top, fw, fh = struct.unpack("<HHHH", data[i + 1:i + 9])
            return max(w, left + fw), max(h, top + fh)
        else:
            break
    return w, h


def _tiff(data: bytes):
    """The first directory's image size, or its tile's where a tile is larger; more than 4
    samples per pixel is refused (the decoder allocates for each)."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    fields = {tag: value for tag, _, value in _ifd_entries(data, order, struct.unpack(order + "I", data[4:8])[0])}
    if 256 not in fields or 257 not in fields:
        return None
    if fields.get(277, 1) > 4:
        raise ImageError(f"TIFF with {fields[277]} samples per pixel is not supported (at most 4)")
    if fields.get(258, 8) > 8:
        raise ImageError(f"{fields[258]}-bit TIFF images are not supported (convert to 8-bit)")
    return max(fields[256], fields.get(322, 0)), max(fields[257], fields.get(323, 0))


def _pnm(data: bytes):
    """P1-P6: magic, then width and height as text (``#`` comments between tokens)."""
    tokens, i, head = [], 2, data[:1024]
    while len(tokens) < 2 and i < len(head):
        c = head[i:i + 1]
        if c == b"#":
            end = head.find(b"\n", i)
            i = len(head) if end < 0 else end + 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < len(head) and head[j:j + 1].isdigit():
                j += 1
            if j == i:
                return None
            tokens.append(int(head[i:j]))
            i = j
    return tuple(tokens) if len(tokens) == 2 else None


def _pam(data: bytes):
    """P7: ``WIDTH n``, ``HEIGHT n`` and ``DEPTH n`` lines up to ``ENDHDR``."""
    fields = {}
    for line in data[3:1024].split(b"\n"):
        parts = line.split()
        if parts[:1] == [b"ENDHDR"]:
            break
        if len(parts) == 2 and parts[1].isdigit():
            fields[parts[0]] = int(parts[1])
    if b"WIDTH" not in fields or b"HEIGHT" not in fields:
        return None
    if fields.get(b"DEPTH", 1) > 4:
        raise ImageError(f"PAM with depth {fields[b'DEPTH']} is not supported (at most 4)")
    return fields[b"WIDTH"], fields[b"HEIGHT"]


def _j2k_siz(data: bytes, at: int):
    """The image size in a JPEG 2000 codestream's SIZ segment (the codestream starts at ``at``)."""
    siz = data[at + 4:at + 42]
    if data[at:at + 4] != b"\xff\x4f\xff\x51" or len(siz) < 38:
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    if components > 4:
        raise ImageError(f"JPEG 2000 with {components} components is not supported (at most 4)")
    return max(0, xsiz - xo), max(0, ysiz - yo)


def _boxes(data: bytes, start: int, end: int):
    """(type, content start, content end) of the ISO base-media boxes in data[start:end]."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        body = i + 8
        if size == 1 and i + 16 <= end:
            size, body = struct.unpack(">Q", data[i + 8:i + 16])[0], i + 16
        elif size == 0:
            size = end - i
        if size < body - i:
            return
        yield kind, body, min(i + size, end)
        i += size


def _jp2(data: bytes):
    """The codestream's SIZ (what the decoder allocates for), else the header box's size."""
    size = None
    for kind, body, stop in _boxes(data, 0, len(data)):
        if kind == b"jp2c":
            return _j2k_siz(data, body)
        if kind == b"jp2h":
            for sub, sbody, _ in _boxes(data, body, stop):
                if sub == b"ihdr" and sbody + 10 <= len(data):
                    h, w, components = struct.unpack(">IIH", data[sbody:sbody + 10])
                    if components > 4:
                        raise ImageError(f"JPEG 2000 with {components} components is not supported (at most 4)")
                    size = (w, h)
    return size


def _avif(data: bytes):
    """The largest image spatial extent (``ispe``) among the items' properties: meta/iprp/ipco."""
    sizes = []
    for kind, body, stop in _boxes(data, 0, len(data)):
        if kind == b"meta":  # a full box: 4 bytes of version and flags before its children
            for sub, sbody, sstop in _boxes(data, body + 4, stop):
                if sub == b"iprp":
                    for prop, pbody, pstop in _boxes(data, sbody, sstop):
                        if prop == b"ipco":
                            sizes += [struct.unpack(">II", data[b + 4:b + 12])
                                      for k, b, e in _boxes(data, pbody, pstop) if k == b"ispe" and e - b >= 12]
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


def png_end(data: bytes) -> int | None:
    """Where a PNG's IEND chunk ends (bytes after it are ignored by decoders), walking the chunk
    lengths; None when the stream ends before an IEND chunk (a truncated file)."""
    i = 8
    while i + 12 <= len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, i = data[i + 4:i + 8], i + 12 + length
        if kind == b"IEND":
            return i if i <= len(data) else None
    return None


def _sun(data: bytes):
    return struct.unpack(">II", data[4:12]) if len(data) >= 32 else None


_NOT_8BIT = ((b"PF", "PFM"), (b"Pf", "PFM"), (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"),
             (b"\x76\x2f\x31\x01", "OpenEXR"))
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _sniff(data: bytes):
    """(format name, size parser) for the encoded ``data``, or None when unrecognised."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG", None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG", _png
    if data[:2] == b"BM":
        return "BMP", _bmp
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP", _webp
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", _gif
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF", _tiff
    if data[:1] == b"P" and data[1:2] in b"123456" and data[1:2] and data[2:3].isspace():
        return "PNM", _pnm
    if data[:2] == b"P7" and data[2:3].isspace():
        return "PAM", _pam
    if data[:12] == _JP2_SIGNATURE:
        return "JPEG 2000", _jp2
    if data[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000", lambda d: _j2k_siz(d, 0)
    if data[4:8] == b"ftyp" and any(b in data[8:min(len(data), 8 + struct.unpack(">I", data[:4])[0])]
                                    for b in (b"avif", b"avis")):
        return "AVIF", _avif
    if data[:4] == b"\x59\xa6\x6a\x95":
        return "Sun raster", _sun
    return None


def read_header(data: bytes, name: str) -> ImageHeader:
    """The format and declared size of encoded image ``data`` (``name`` goes in messages).

    Raises ImageError for an unrecognised format, a format whose pixels are not 8-bit, and a
    header that cannot be read (a truncated or corrupt file, or a BigTIFF)."""
    for magic, fmt in _NOT_8BIT:
        if data.startswith(magic):
            raise ImageError(f"{name}: {fmt} images hold floating-point pixels, which are not supported "
                             "(convert to an 8-bit format such as PNG or JPEG)")
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        raise ImageError(f"{name}: BigTIFF files are not supported (save as a classic TIFF, PNG or JPEG)")
    sniffed = _sniff(data)
    if sniffed is None:
        raise ImageError(f"{name}: not a recognised image format (expected JPEG, PNG, WebP, BMP, GIF, TIFF, "
                         "PNM, JPEG 2000, AVIF or Sun raster)")
    fmt, parse = sniffed
    try:
        if parse is None:  # JPEG: the orientation and scan position come along with the size
            jpeg = jpeg_header(data)
            if jpeg is not None:
                return ImageHeader(fmt, jpeg.width, jpeg.height, jpeg)
            size = None
        else:
            size = parse(data)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    except (struct.error, IndexError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt {fmt} header ({exc})") from None
    if size is None:
        raise ImageError(f"{name}: {fmt} file without a readable image size (truncated or corrupt header)")
    return ImageHeader(fmt, int(size[0]), int(size[1]))
