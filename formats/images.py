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
import threading
from collections import OrderedDict

import cv2
import numpy as np


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

    def __init__(self, compression: int = 0):
        super().__init__()
        self.compression = compression
        if compression == 0:
            # stored deflate blocks and no filter: size depends on shape only, and fast
            self.params = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
        else:
            self.params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
            self.size_from_shape = False


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
