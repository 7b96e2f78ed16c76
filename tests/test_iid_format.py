""".iid codec without FUSE: round trips, and damaged files fail only in the allowed ways."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scopefs.backends.iid import decode_mask, readable, unreadable
from scopefs.formats.iid import IIDFile, IIDFormatError, SegmentError, encode_segment


def small_file() -> bytes:
    f = IIDFile()
    rng = np.random.default_rng(3)
    for i in range(4):
        f.add(rng.random((4 + i, 5)) < 0.5, (i, 2 * i, i + 4 + i, 2 * i + 5), address=f"e{i}".encode(),
              domain=b"d" if i % 2 else None, groups=("g",) if i < 2 else ())
    f.meta = {"k": [1, 2]}
    return f.to_bytes()


def survive(data: bytes, tmp_path) -> None:
    """Opening either refuses the file or gives entries whose masks decode or fail alone."""
    path = tmp_path / "x.iid"
    path.write_bytes(data)
    try:
        f = IIDFile.open(str(path))
    except IIDFormatError as exc:
        assert "\n" not in str(exc)
        return
    for entry in f.entries:
        try:
            mask = entry.mask()
            assert mask.shape == entry.shape and int(mask.sum()) == entry.area
        except SegmentError:
            pass
    f.close()


def test_truncated_at_every_offset(tmp_path):
    data = small_file()
    for cut in range(len(data)):
        survive(data[:cut], tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=6))
def test_random_byte_flips(tmp_path_factory, flips):
    data = bytearray(small_file())
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    survive(bytes(data), tmp_path_factory.mktemp("flip"))


class InMemory:
    """An .iid in memory, read by ranges as from an object store."""

    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    def read_ranges(self, ranges):
        return [self.read(offset, length) for offset, length in ranges]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1), st.floats(0, 1),
       st.integers(0, 60000), st.integers(0, 60000))
def test_masks_round_trip(h, w, seed, density, minr, minc):
    mask = np.random.default_rng(seed).random((h, w)) < density
    segment, area = encode_segment(mask, (minr, minc, minr + h, minc + w))
    f = IIDFile()
    f.add(mask, (minr, minc, minr + h, minc + w), address=b"x")
    back = IIDFile.open_ranged(InMemory(f.to_bytes()), "x.iid")       # segments read lazily
    assert area == int(mask.sum()) and np.array_equal(back.entries[0].mask(), mask)


def test_bbox_limits_and_shape_checks():
    with pytest.raises(ValueError, match="uint16"):
        encode_segment(np.ones((2, 2), bool), (65535, 0, 65537, 2))
    with pytest.raises(ValueError, match="does not fit"):
        encode_segment(np.ones((2, 2), bool), (0, 0, 3, 3))


@given(st.binary(max_size=40))
def test_names_are_safe_and_reversible(raw):
    name = readable(raw)
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
    assert len(name.encode("utf-8", errors="surrogateescape")) <= 255
    if len(raw) < 30:
        assert unreadable(name) == raw


def test_what_counts_as_a_mask():
    import cv2
    png = lambda a: cv2.imencode(".png", a)[1].tobytes()  # noqa: E731
    assert decode_mask(png(np.array([[0, 255], [255, 0]], np.uint8))).tolist() == [[False, True], [True, False]]
    assert decode_mask(png(np.full((2, 2), 7, np.uint8))).all()
    for bad in (png(np.array([[0, 1, 2]], np.uint8)), png(np.array([[3, 4]], np.uint8)), b"junk", b""):
        with pytest.raises(OSError):
            decode_mask(bad)
