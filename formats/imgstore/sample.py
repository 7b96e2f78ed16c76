"""A built-in sample imgstore: `python -m scopefs.formats.imgstore.sample DIR [--format F]`.

Synthetic frames that make mistakes visible: a moving colour gradient (a BGR/RGB swap
shows), the frame number as text, and rows 16-31 a 16-bit barcode of the frame number
that survives lossy codecs (so a wrong frame from a bad seek is caught by `barcode`).
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from .writer import ImgStoreWriter

T0 = 1700000000.0   # 2023-11-14T22:13:20Z
BARCODE_ROWS = slice(16, 32)


def sample_frame(number: int, shape=(240, 320, 3)) -> np.ndarray:
    h, w = shape[:2]
    x = np.linspace(0, 255, w, dtype=np.float32)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = ((x + 4 * number) % 256).astype(np.uint8)          # blue: moves right
    img[..., 1] = y.astype(np.uint8)                                  # green: top to bottom
    img[..., 2] = 255 - ((x + 4 * number) % 256).astype(np.uint8)    # red: opposite of blue
    img[:16, :48] = (255, 0, 0)                                       # pure blue mark (BGR)
    img[:16, 48:96] = (0, 0, 255)                                     # pure red mark
    draw_barcode(img, number)
    cv2.putText(img, str(number), (8, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    if len(shape) == 2:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img


def draw_barcode(img: np.ndarray, value: int) -> None:
    w = img.shape[1]
    img[BARCODE_ROWS] = 0
    for bit in range(16):
        if (value >> (15 - bit)) & 1:
            img[BARCODE_ROWS, bit * w // 16:(bit + 1) * w // 16] = 255


def barcode(img: np.ndarray) -> int:
    """The 16-bit value drawn by `draw_barcode`, read at each band's centre."""
    gray = img if img.ndim == 2 else img.mean(axis=2)
    w = gray.shape[1]
    row = gray[(BARCODE_ROWS.start + BARCODE_ROWS.stop) // 2]
    value = 0
    for bit in range(16):
        centre = (bit * w // 16 + (bit + 1) * w // 16) // 2
        value = (value << 1) | int(row[centre] > 127)
    return value


def make_sample(path: str, fmt: str = "mjpeg/avi", frames: int = 300, chunksize: int = 100) -> None:
    meta = {"experiment": {"arena": 3, "fps": 25}, "genotype": "wt", "timezone": "Europe/Vienna"}
    with ImgStoreWriter(path, fmt, (240, 320, 3), chunksize=chunksize, metadata=meta) as store:
        for i in range(frames):
            store.add_image(sample_frame(i), i, T0 + 0.04 * i)
            if i % 10 == 0:
                store.add_extra_data(temperature=20 + i / 100, label=f"f{i}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--format", default="mjpeg/avi")
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    make_sample(args.path, args.format, args.frames)
    print(f"sample imgstore ({args.format}, {args.frames} frames) written to {args.path}")


if __name__ == "__main__":
    main()
