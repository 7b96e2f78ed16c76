"""Encoding decoded frames (numpy, OpenCV BGR order) as image files.

A mounted frame must have an exact `st_size` before anyone reads it, and `ls -l` must
not decode frames. The default encodings are chosen so that the size follows from the
shape alone: PNG with stored (uncompressed) deflate blocks and no row filter, TIFF
without compression, BMP, PNM and NPY. Their size is learned once per shape by encoding
a blank frame, and every real encoding is checked against it. Lossy or compressed
encodings (JPEG, deflated PNG) have no such size: `fixed_size` returns None and the size
is only known after encoding.
"""
from __future__ import annotations

import io
import math
import struct
import threading
from collections import OrderedDict
from typing import Callable

import cv2
import numpy as np
from zlib_ng import zlib_ng


class EncodeError(Exception):
    pass


class ImageFormat:
    name = ""
    extension = ""
    lossless = True
    dtypes: tuple[str, ...] = ("uint8",)
    #: whether the size follows from shape and dtype
    size_from_shape = True

    #: shapes whose size is remembered (masks of an .iid come in many shapes)
    SIZES_KEPT = 4096

    def __init__(self):
        self._sizes: OrderedDict[tuple, int] = OrderedDict()
        self._lock = threading.Lock()

    def supports(self, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        """None if frames of this shape and dtype can be encoded, else the reason."""
        if np.dtype(dtype).name not in self.dtypes:
            return f"{self.name} cannot hold {np.dtype(dtype).name} frames"
        return None

    def extension_for(self, shape: tuple[int, ...]) -> str:
        return self.extension

    def encode(self, img: np.ndarray) -> bytes:
        raise NotImplementedError

    def encode_buffer(self, img: np.ndarray) -> bytes | memoryview:
        """`encode`, as the encoder's own buffer where it has one (no copy into bytes)."""
        return self.encode(img)

    def fixed_size(self, shape: tuple[int, ...], dtype: np.dtype) -> int | None:
        if not self.size_from_shape:
            return None
        size = self.known_size(shape, dtype)
        if size is None:
            size = len(self.encode(np.zeros(shape, dtype)))
            with self._lock:
                self._sizes[(tuple(shape), np.dtype(dtype).str)] = size
                if len(self._sizes) > self.SIZES_KEPT:
                    self._sizes.popitem(last=False)
        return size

    def known_size(self, shape: tuple[int, ...], dtype: np.dtype) -> int | None:
        """`fixed_size` if it is already known (no encoding), else None."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            size = self._sizes.get(key)
            if size is not None:
                self._sizes.move_to_end(key)
        return size

    def encode_checked(self, img: np.ndarray, copy: bool = True) -> bytes | memoryview:
        """Encode, and refuse to return bytes whose length differs from the advertised size
        (`copy=False`: as `encode_buffer`)."""
        data = self.encode(img) if copy else self.encode_buffer(img)
        expected = self.fixed_size(img.shape, img.dtype)
        if expected is not None and len(data) != expected:
            raise EncodeError(f"{self.name} encoding gave {len(data)} bytes, expected {expected}")
        return data

    def buffer_encoder(self, shape: tuple[int, ...], dtype: np.dtype) -> Callable[[np.ndarray], bytes | memoryview]:
        """`encode_checked(img, copy=False)` for images of this shape and dtype only, as
        one call: a store's frames are thousands of one shape."""
        return lambda img: self.encode_checked(img, copy=False)


class _OpenCVFormat(ImageFormat):
    params: list[int] = []

    def encode(self, img: np.ndarray) -> bytes:
        return self.encode_buffer(img).tobytes()

    def encode_buffer(self, img: np.ndarray) -> memoryview:
        ok, buf = cv2.imencode(self.extension_for(img.shape), img, self.params)
        if not ok:
            raise EncodeError(f"OpenCV could not encode a {img.shape} {img.dtype} frame as {self.name}")
        return memoryview(buf.reshape(-1))


class PNG(_OpenCVFormat):
    name, extension = "png", ".png"
    dtypes = ("uint8", "uint16")
    #: images of at least this many bytes are encoded through a `StoredLayout` (smaller
    #: ones, such as most masks of an .iid, are not worth learning one)
    LAYOUT_MIN_BYTES = 64 << 10

    def __init__(self, compression: int = 0):
        super().__init__()
        self.compression = compression
        self._layouts: OrderedDict[tuple, StoredLayout | None] = OrderedDict()
        if compression == 0:
            # stored deflate blocks and no filter: size depends on shape only, and fast
            self.params = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
        else:
            self.params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
            self.size_from_shape = False

    def encode_buffer(self, img: np.ndarray) -> memoryview:
        layout = self._layout(img.shape, img.dtype) if self._layout_fits(img.nbytes) else None
        return layout.encode(img) if layout is not None else super().encode_buffer(img)

    def buffer_encoder(self, shape: tuple[int, ...], dtype: np.dtype) -> Callable[[np.ndarray], bytes | memoryview]:
        """A `StoredLayout`'s own `encode` where there is one: its size is the shape's by
        construction (5 Python calls, 2 locks and a check fewer a frame)."""
        dtype = np.dtype(dtype)
        fits = self._layout_fits(math.prod(shape) * dtype.itemsize)
        layout = self._layout(tuple(shape), dtype) if fits else None
        return layout.encode if layout is not None else super().buffer_encoder(shape, dtype)

    def _layout_fits(self, nbytes: int) -> bool:
        """Whether images of `nbytes` are encoded through a `StoredLayout`."""
        return self.compression == 0 and nbytes >= self.LAYOUT_MIN_BYTES

    def _layout(self, shape: tuple[int, ...], dtype: np.dtype) -> StoredLayout | None:
        """The layout of this shape's encoding, learned at its first image (None: no
        `StoredLayout` for it, so OpenCV encodes)."""
        key = (shape, dtype.str)
        with self._lock:
            if key in self._layouts:
                self._layouts.move_to_end(key)
                return self._layouts[key]
        layout = StoredLayout.learn(shape, dtype, super().encode_buffer)
        with self._lock:
            self._layouts[key] = layout
            if len(self._layouts) > self.SIZES_KEPT:
                self._layouts.popitem(last=False)
        return layout


class StoredLayout:
    """A PNG without compression and without row filters, made without libpng: the
    image's rows (a filter byte 0, then RGB or gray, 16-bit big-endian) in stored deflate
    blocks of whole rows, all in one IDAT chunk, between the chunks libpng writes before
    and after its IDATs for the shape (OpenCV's encoding of a blank image). The size
    follows from the shape, and each block's rows are one run of the file: an encoding
    converts a block's rows into place (one `cvtColor`), and computes an Adler-32 of the
    rows and one CRC-32 with zlib-ng (SIMD). libpng cuts the stream into 8 KiB IDAT
    chunks and its blocks across rows: a 320x240 frame was 29 chunks, 33 pieces of rows
    copied from a buffer and a CRC-32 each (and libpng's own checksums, the system zlib's,
    and copies were 70% of its encoding). A layout is used only if OpenCV decodes its
    encoding of a random image back to that image."""

    def __init__(self, template: bytes, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        channels = shape[2] if len(shape) == 3 else 1
        self.row_bytes = 1 + shape[1] * channels * self.dtype.itemsize
        rows_per_block = 0xFFFF // self.row_bytes          # (a stored block holds 65535 bytes at most)
        chunks, position = [], 8                            # (start, data length, type) after the signature
        while position < len(template):
            length, kind = struct.unpack(">I4s", template[position:position + 8])
            chunks.append((position, length, kind))
            position += 12 + length
        idats = [k for k, (_, _, kind) in enumerate(chunks) if kind == b"IDAT"]
        if not rows_per_block or not idats or idats != list(range(idats[0], idats[-1] + 1)):
            raise ValueError("not a layout of stored blocks of whole rows in IDAT chunks")
        first, (last, last_length, _) = chunks[idats[0]][0], chunks[idats[-1]]
        head, tail = template[:first], template[last + 12 + last_length:]
        out = bytearray(head)
        out += struct.pack(">I", 0) + b"IDAT" + template[first + 8:first + 10]    # (its zlib header)
        self.blocks = []                            # (rows of the image, file offset of the first)
        for top in range(0, shape[0], rows_per_block):
            bottom = min(top + rows_per_block, shape[0])
            length = (bottom - top) * self.row_bytes
            out += struct.pack("<BHH", bottom == shape[0], length, length ^ 0xFFFF)
            self.blocks.append((slice(top, bottom), len(out)))
            out += bytes(length)
        self.adler_at = slice(len(out), len(out) + 4)
        self.crc_span = slice(len(head) + 4, len(out) + 4)  # (the chunk's type and data)
        self.crc_at = slice(self.crc_span.stop, self.crc_span.stop + 4)
        if self.crc_span.stop - self.crc_span.start - 4 > 0x7FFFFFFF:
            raise ValueError("too big for one IDAT chunk")
        out[len(head):len(head) + 4] = struct.pack(">I", self.crc_span.stop - self.crc_span.start - 4)
        out += bytes(8) + tail
        self.size = len(out)
        # each encoding writes the pixels; what is not a pixel is copied from here at once
        pixel = np.zeros(self.size, bool)
        for rows, at in self.blocks:
            pixel[at:at + (rows.stop - rows.start) * self.row_bytes] = True
        pixel[[at + k * self.row_bytes for rows, at in self.blocks for k in range(rows.stop - rows.start)]] = False
        self.fixed_at = np.flatnonzero(~pixel)
        self.fixed = np.frombuffer(bytes(out), np.uint8)[self.fixed_at]
        self._pixels_dtype = self.dtype.newbyteorder(">")
        self._pixels_strides = (self.row_bytes,) + ((channels * self.dtype.itemsize, self.dtype.itemsize)
                                                    if channels > 1 else (self.dtype.itemsize,))

    @classmethod
    def learn(cls, shape: tuple[int, ...], dtype: np.dtype, encode) -> StoredLayout | None:
        """The layout for this shape, from OpenCV's encoding `encode` of a blank image, if
        OpenCV decodes the layout's encoding of a random image back to it."""
        try:
            layout = cls(bytes(encode(np.zeros(shape, dtype))), shape, dtype)
        except (ValueError, struct.error):
            return None
        probe = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
        back = cv2.imdecode(np.frombuffer(layout.encode(probe), np.uint8), cv2.IMREAD_UNCHANGED)
        return layout if back is not None and back.dtype == probe.dtype and np.array_equal(back, probe) else None

    def encode(self, img: np.ndarray) -> memoryview:
        """The file of `img` (of this layout's shape and dtype), a new buffer each time."""
        out = np.empty(self.size, np.uint8)
        out[self.fixed_at] = self.fixed
        view = memoryview(out)
        adler = 1
        for rows, at in self.blocks:
            pixels = np.ndarray((rows.stop - rows.start,) + self.shape[1:], self._pixels_dtype, out, at + 1,
                                self._pixels_strides)
            if img.ndim == 2:
                np.copyto(pixels, img[rows])
            elif img.dtype == np.uint8:
                cv2.cvtColor(img[rows], cv2.COLOR_BGR2RGB, dst=pixels)
            else:
                np.copyto(pixels, cv2.cvtColor(img[rows], cv2.COLOR_BGR2RGB))
            adler = zlib_ng.adler32(view[at:at + (rows.stop - rows.start) * self.row_bytes], adler)
        view[self.adler_at] = adler.to_bytes(4, "big")
        view[self.crc_at] = zlib_ng.crc32(view[self.crc_span]).to_bytes(4, "big")
        return view


class TIFF(_OpenCVFormat):
    name, extension = "tiff", ".tif"
    dtypes = ("uint8", "uint16", "float32")
    params = [cv2.IMWRITE_TIFF_COMPRESSION, 1]


class BMP(_OpenCVFormat):
    name, extension = "bmp", ".bmp"


class PNM(_OpenCVFormat):
    """Binary PGM for gray frames, PPM for colour ones."""
    name = "pnm"
    dtypes = ("uint8", "uint16")
    params = [cv2.IMWRITE_PXM_BINARY, 1]

    def extension_for(self, shape) -> str:
        return ".ppm" if len(shape) == 3 else ".pgm"


class JPEG(_OpenCVFormat):
    name, extension = "jpg", ".jpg"
    lossless = False
    size_from_shape = False

    def __init__(self, quality: int = 95):
        super().__init__()
        self.params = [cv2.IMWRITE_JPEG_QUALITY, quality]


class NPY(ImageFormat):
    """numpy's .npy; colour frames in RGB order, like every other format here shows them."""
    name, extension = "npy", ".npy"
    dtypes = ("uint8", "uint16", "int16", "int32", "uint32", "float32", "float64", "bool")

    def encode(self, img: np.ndarray) -> bytes:
        if img.ndim == 3 and img.shape[2] == 3:
            img = img[:, :, ::-1]
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(img), allow_pickle=False)
        return out.getvalue()


def make_format(name: str, png_compression: int = 0, jpeg_quality: int = 95) -> ImageFormat:
    name = name.lower()
    if name == "png":
        return PNG(png_compression)
    if name in ("jpg", "jpeg"):
        return JPEG(jpeg_quality)
    simple = {"tif": TIFF, "tiff": TIFF, "bmp": BMP, "pnm": PNM, "pgm": PNM, "ppm": PNM, "npy": NPY}
    if name in simple:
        return simple[name]()
    raise ValueError(f"unknown image format {name!r} (choose from png, tiff, npy, bmp, pnm, jpg)")


#: stored file formats of directory stores that a served format can pass through untouched
PASSTHROUGH = {"png": ("png",), "tiff": ("tif",), "bmp": ("bmp",), "jpg": ("jpg",), "pnm": ("pgm", "ppm"),
               "npy": ("npy",)}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the chunks that make a PNG's pixels and nothing else: a decoder inflates no text or
#: colour profile of a file that holds only these
PIXEL_CHUNKS = frozenset((b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"))
#: channels of each PNG colour type (gray, RGB, palette, gray + alpha, RGBA)
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def small_plain_png(data: bytes | bytearray, max_pixels: int, max_bytes: int, max_chunks: int = 64) -> bool:
    """Whether `data` is a PNG file of at most `max_pixels` and `max_bytes` whose decoding
    costs no more than its pixels: at most `max_chunks` chunks, all PIXEL_CHUNKS, not interlaced, its
    IDAT data one zlib stream of exactly the rows IHDR promises (inflated here at most
    that far: libpng inflates all of it, a zlib bomb too). If not, decode it in a thread,
    if at all. Reads `data` in place: only the IDAT data is copied."""
    if not 29 <= len(data) <= max_bytes or data[:8] != PNG_SIGNATURE or data[8:16] != b"\0\0\0\x0dIHDR":
        return False
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if width * height > max_pixels or interlace or colour not in PNG_CHANNELS:
        return False
    idat, offset = [], 8
    for _ in range(max_chunks):
        if offset + 8 > len(data):
            return False
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind not in PIXEL_CHUNKS:
            return False
        if kind == b"IDAT":
            idat.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
        if kind == b"IEND":
            break
    else:
        return False
    rows = height * (1 + (width * depth * PNG_CHANNELS[colour] + 7) // 8)   # (a filter byte each)
    stream = zlib_ng.decompressobj()
    try:
        raw = stream.decompress(b"".join(idat), rows + 1)
    except zlib_ng.error:
        return False
    return offset == len(data) and stream.eof and len(raw) == rows
