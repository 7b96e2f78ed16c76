"""PNG files made chunk by chunk: honest ones and ones whose decoding costs far more than
their pixels (side chunks, a zlib bomb in IDAT), as a copied-in mask could be."""
from __future__ import annotations

import struct
import zlib


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def gray_png(width: int, height: int, value: int = 255, before_idat: tuple[bytes, ...] = (),
             extra_zeros: int = 0, interlace: int = 0) -> bytes:
    """An 8-bit gray PNG of `value`, with `before_idat` chunks and its pixel rows followed
    in the zlib stream by `extra_zeros` bytes that no row needs (a bomb, if many)."""
    rows = (b"\x00" + bytes([value]) * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(before_idat)
            + chunk(b"IDAT", zlib.compress(rows + bytes(extra_zeros), 9)) + chunk(b"IEND", b""))


def ztxt(megabytes: int) -> bytes:
    """A zTXt chunk of text that inflates to `megabytes` MB (a decoder inflates it)."""
    return chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(megabytes << 20), 9))
