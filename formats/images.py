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
import struct
import threading
from collections import OrderedDict

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
        layout = self._layout(img) if self.compression == 0 and img.nbytes >= self.LAYOUT_MIN_BYTES else None
        return layout.encode(img) if layout is not None else super().encode_buffer(img)

    def _layout(self, img: np.ndarray) -> StoredLayout | None:
        """The layout of this shape's encoding, learned at its first image (None: OpenCV's
        encoding is not one that `StoredLayout` reproduces, so OpenCV encodes)."""
        key = (img.shape, img.dtype.str)
        with self._lock:
            if key in self._layouts:
                self._layouts.move_to_end(key)
                return self._layouts[key]
        layout = StoredLayout.learn(img.shape, img.dtype, super().encode_buffer)
        with self._lock:
            self._layouts[key] = layout
            if len(self._layouts) > self.SIZES_KEPT:
                self._layouts.popitem(last=False)
        return layout


class StoredLayout:
    """A PNG without compression (stored deflate blocks) and without row filters, as
    libpng writes it through OpenCV, made without them. Such a file is the image's rows
    (a filter byte, then RGB or gray, 16-bit big-endian) cut into stored blocks and IDAT
    chunks at places that depend on the shape alone, plus an Adler-32 of the rows and a
    CRC-32 per chunk. So the file of a blank image of the shape is a template: an image
    is encoded by converting its rows into place (one `cvtColor`) and computing the
    checksums with zlib-ng (SIMD). libpng computes them with the system's zlib, whose
    CRC-32 and Adler-32 were 70% of an encoding, and copies the image four times on
    the way (rows, deflate's window, a growing vector, the array OpenCV returns). A
    layout is used only if it reproduces OpenCV's bytes exactly for a random image."""

    def __init__(self, template: bytes, shape: tuple[int, ...], dtype: np.dtype):
        self.template = np.frombuffer(template, np.uint8)
        self.shape, self.dtype = shape, np.dtype(dtype)
        channels = shape[2] if len(shape) == 3 else 1
        self.row_bytes = 1 + shape[1] * channels * self.dtype.itemsize
        chunks, position = [], 8                    # (start, data length, type) after the signature
        while position < len(template):
            length, kind = struct.unpack(">I4s", template[position:position + 8])
            chunks.append((position, length, kind))
            position += 12 + length
        # the zlib stream (IDAT data, concatenated): where each of its bytes is in the file
        stream_spans, stream = [], 0                # (stream offset, file offset, length)
        self.crc_spans = []                         # (type start, data end) of each IDAT chunk
        for start, length, kind in chunks:
            if kind == b"IDAT":
                stream_spans.append((stream, start + 8, length))
                stream += length
                self.crc_spans.append((start + 4, start + 8 + length))
        data = b"".join(template[f:f + n] for _, f, n in stream_spans)
        raw_spans, at, raw = [], 2, 0               # (raw offset, stream offset, length) of the rows
        while True:
            final, length, inverse = struct.unpack("<BHH", data[at:at + 5])
            if final & 0b110 or length ^ inverse != 0xFFFF:
                raise ValueError("not stored deflate blocks")
            raw_spans.append((raw, at + 5, length))
            raw, at = raw + length, at + 5 + length
            if final & 1:
                break
        if raw != shape[0] * self.row_bytes or at + 4 != len(data):
            raise ValueError("the blocks do not hold the rows")

        def file_pieces(offset: int, length: int):
            """(file offset, stream offset, length) of the stream's bytes offset..offset+length,
            chunk by chunk."""
            for s, f, n in stream_spans:
                lo, hi = max(offset, s), min(offset + length, s + n)
                if lo < hi:
                    yield f + lo - s, lo, hi - lo

        # what `encode` copies (into the file, from the rows) and checksums, as slices made
        # once; the chunks' CRC-32s (the last one covers the Adler-32) go into place at once
        self.row_pieces = [(slice(f, f + m), slice(r + lo - s, r + lo - s + m))
                           for r, s, n in raw_spans for f, lo, m in file_pieces(s, n)]
        self.adler_at = [f + k for f, _, m in file_pieces(at, 4) for k in range(m)]
        self.crc_spans = [slice(start, end) for start, end in self.crc_spans]
        self.crcs_at = np.asarray([span.stop + k for span in self.crc_spans for k in range(4)], np.intp)
        self._rows = threading.local()          # each encoding thread's rows, made once

    @classmethod
    def learn(cls, shape: tuple[int, ...], dtype: np.dtype, encode) -> StoredLayout | None:
        """The layout of OpenCV's encoding `encode` for this shape, if it reproduces it."""
        try:
            layout = cls(bytes(encode(np.zeros(shape, dtype))), shape, dtype)
        except (ValueError, struct.error):
            return None
        probe = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
        return layout if layout.encode(probe) == encode(probe) else None

    def encode(self, img: np.ndarray) -> memoryview:
        try:
            flat, pixels = self._rows.made
        except AttributeError:                      # (a thread's first frame: its rows, filter bytes 0)
            rows = np.zeros((self.shape[0], self.row_bytes), np.uint8)
            flat, pixels = self._rows.made = (memoryview(rows).cast("B"),
                                              rows[:, 1:].view(self.dtype.newbyteorder(">")).reshape(self.shape))
        if img.ndim == 3:
            cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=pixels) if img.dtype == np.uint8 else np.copyto(
                pixels, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        else:
            np.copyto(pixels, img)
        out = self.template.copy()
        view = memoryview(out)
        for to, source in self.row_pieces:
            view[to] = flat[source]
        out[self.adler_at] = np.frombuffer(zlib_ng.adler32(flat).to_bytes(4, "big"), np.uint8)
        out[self.crcs_at] = np.asarray([zlib_ng.crc32(view[data]) for data in self.crc_spans], ">u4").view(np.uint8)
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
