"""Pure format code: the frame index, encoders, extra data, caches (no FUSE)."""
from __future__ import annotations

import fcntl
import io
import os
import signal
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from PIL import Image

from scopefs.backends.cache import ByteCache
from scopefs.formats.files import open_regular, read_to_end
from scopefs.formats.images import make_format, small_plain_png
from scopefs.formats.imgstore.extra import read_extra_data
from scopefs.formats.imgstore.frames import FrameReader, colour_conversions, open_reader
from scopefs.formats.imgstore.index import Chunk, FrameIndex
from scopefs.formats.imgstore.metadata import read_metadata
from png_samples import gray_png, ztxt
from python_calls import PythonCalls
from stores import barcode, make_store


def index_of(numbers, times=None) -> FrameIndex:
    numbers = np.asarray(numbers, np.int64)
    times = np.asarray(times if times is not None else np.arange(len(numbers)) * 0.04, np.float64)
    return FrameIndex([Chunk(0, "", "", 0, len(numbers))], numbers, times)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 20), max_size=40), st.integers(-6, 21), st.integers(0, 3))
def test_find_number_matches_a_scan(numbers, wanted, rank):
    idx = index_of(numbers)
    matches = [i for i, n in enumerate(numbers) if n == wanted]
    assert idx.find_number(wanted, rank) == (matches[rank] if rank < len(matches) else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40), st.floats(-10, 110))
def test_nearest_time_matches_a_scan(times, t):
    idx = index_of(range(len(times)), times)
    best = min(abs(x - t) for x in times)
    assert idx.nearest_time(t) == next(i for i, x in enumerate(times) if abs(x - t) == best)


@given(st.lists(st.integers(-3, 3), max_size=30))
def test_by_number_listing_is_sorted_and_complete(numbers):
    idx = index_of(numbers)
    listed = [idx.by_number_position(p) for p in range(len(numbers))]
    assert sorted(i for i, _ in listed) == list(range(len(numbers)))
    assert [numbers[i] for i, _ in listed] == sorted(numbers)
    for i, rank in listed:
        assert idx.find_number(numbers[i], rank) == i


def test_locate_across_uneven_chunks():
    chunks = [Chunk(0, "", "", 0, 3), Chunk(2, "", "", 3, 1), Chunk(7, "", "", 4, 5)]
    idx = FrameIndex(chunks, np.arange(9), np.arange(9.0))
    assert [(c.number, p) for c, p in map(idx.locate, range(9))] == [
        (0, 0), (0, 1), (0, 2), (2, 0), (7, 0), (7, 1), (7, 2), (7, 3), (7, 4)]
    with pytest.raises(IndexError):
        idx.locate(9)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["png", "tiff", "bmp", "pnm", "npy"]), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from([1, 3]), st.sampled_from(["uint8", "uint16"]), st.integers(0, 2**32 - 1))
def test_size_follows_from_shape_and_pixels_round_trip(name, h, w, channels, dtype, seed):
    fmt = make_format(name)
    shape = (h, w) if channels == 1 else (h, w, 3)
    if fmt.supports(shape, np.dtype(dtype)):
        return
    img = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    data = fmt.encode_checked(img)
    assert len(data) == fmt.fixed_size(shape, dtype)
    if name == "npy":
        import io
        back = np.load(io.BytesIO(data))
        back = back[:, :, ::-1] if back.ndim == 3 else back
    else:
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back, img)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a PNG file, CRC-32s checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    assert at == len(data)
    return chunks


@settings(max_examples=25, deadline=None)
@given(st.integers(260, 400), st.integers(260, 400), st.sampled_from([1, 3]), st.sampled_from(["uint8", "uint16"]),
       st.integers(0, 2**32 - 1))
def test_frames_are_encoded_without_opencvs_encoder_as_valid_pngs(h, w, channels, dtype, seed):
    """A PNG frame is made from the layout of its shape (`StoredLayout`), once it is
    learned without calling OpenCV's encoder (whose checksums and copies were most of
    the cost of serving a frame): the chunks libpng writes around one IDAT whose zlib
    stream holds the rows unfiltered, every checksum right, and OpenCV and PIL read the
    pixels back."""
    fmt = make_format("png")
    shape = (h, w) if channels == 1 else (h, w, 3)
    rng = np.random.default_rng(seed)
    first, second = (rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True) for _ in range(2))
    fmt.encode_checked(first, copy=False)                  # learns the layout
    calls = []
    imencode = cv2.imencode
    cv2.imencode = lambda *args: calls.append(args) or imencode(*args)
    try:
        data = bytes(fmt.encode_checked(second, copy=False))
    finally:
        cv2.imencode = imencode
    assert not calls
    assert fmt.encode(second) == data and len(data) == fmt.fixed_size(shape, dtype)
    libpng = png_chunks(imencode(".png", second, fmt.params)[1].tobytes())
    chunks = png_chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert [chunk for chunk in libpng if chunk[0] != b"IDAT"] == [chunks[0], chunks[2]]   # as libpng wrote them
    rgb = second[:, :, ::-1] if channels == 3 else second
    rows = np.zeros((h, 1 + rgb[0].size * rgb.itemsize), np.uint8)
    rows[:, 1:] = rgb.astype(rgb.dtype.newbyteorder(">")).reshape(h, -1).view(np.uint8)
    assert zlib.decompress(chunks[1][1]) == rows.tobytes()
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), second)
    if dtype == "uint8":                                   # (PIL keeps no 16-bit colour)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)


def test_a_frame_encoded_from_its_layout_costs_few_calls_and_one_checksum_of_each_kind():
    """An encoding through a `StoredLayout` writes each block of whole rows in one
    conversion and checksums the one IDAT chunk once: a 320x240 frame took 80 Python and C
    calls with libpng's 29 IDAT chunks, 49 with their layout rebuilt, and under 30 now."""
    fmt = make_format("png")
    img = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    first = bytes(fmt.encode_checked(img, copy=False))
    with PythonCalls(c_calls=True) as counted:
        again = fmt.encode_checked(img, copy=False)
    assert again == first
    assert [kind for kind, _ in png_chunks(first)].count(b"IDAT") == 1
    calls, crcs = counted.calls + counted.c_calls.total(), counted.c_calls["crc32"]
    assert crcs == 1 and calls < 30, (crcs, calls)


def _png(img, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **options)
    return out.getvalue()


def test_a_small_png_of_nothing_but_pixels_is_told_from_one_whose_decoding_costs_more():
    """What a mask's commit may decode on the daemon's loop: small PNGs of pixel chunks
    only, as PIL, OpenCV and the mounts write them; not a file of a side chunk (a zTXt
    bomb, a pHYs), of extra zlib data in IDAT (a bomb libpng inflates whole), interlaced,
    with bytes after IEND, truncated, too many pixels or bytes."""
    gray = np.full((128, 128), 255, np.uint8)
    palette = Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P")
    honest = [gray_png(8, 8), _png(Image.fromarray(gray)), _png(Image.fromarray(gray.astype(np.uint16) * 257)),
              _png(palette, transparency=0), cv2.imencode(".png", gray)[1].tobytes(),
              bytes(make_format("png").encode_checked(gray))]
    assert [small_plain_png(data, 1 << 14, 1 << 16) for data in honest] == [True] * len(honest)
    costly = [gray_png(8, 8, before_idat=(ztxt(8),)), gray_png(8, 8, extra_zeros=8 << 20),
              gray_png(8, 8, extra_zeros=1), _png(Image.fromarray(gray), dpi=(72, 72)),
              gray_png(8, 8, interlace=1), gray_png(8, 8) + b"\0", gray_png(8, 8)[:-1], gray_png(129, 128),
              b"not a png" * 10]
    assert [small_plain_png(data, 1 << 14, 1 << 16) for data in costly] == [False] * len(costly)
    assert not small_plain_png(honest[1], 1 << 14, len(honest[1]) - 1)
    assert small_plain_png(bytearray(honest[0]), 64, 71)               # (a writer's buffer, read in place)


def test_lossy_formats_have_no_size_from_shape():
    assert make_format("jpg").fixed_size((10, 10, 3), np.uint8) is None
    assert make_format("png", png_compression=6).fixed_size((10, 10, 3), np.uint8) is None
    assert make_format("bmp").supports((4, 4), np.dtype("uint16"))


def test_colour_conversion_names_follow_imgstore():
    table = colour_conversions()
    assert table["cv_bayerbg"] == cv2.COLOR_BayerBG2BGR
    assert table["cv_bayerrg"] == cv2.COLOR_BayerRG2BGR
    assert "cv_yuv_nv12" in table


def test_legacy_yaml_index_and_trailing_empty_chunk(tmp_path):
    sample = make_store(tmp_path / "s", "npy", shape=(8, 8), numbers=range(10), chunksize=5)
    index1 = sample.path / "000001" / "index.npz"
    with np.load(index1) as dat:
        numbers, times = dat["frame_number"].tolist(), dat["frame_time"].tolist()
    index1.unlink()
    (sample.path / "000001" / "index.yaml").write_text(yaml.safe_dump({"frame_number": numbers,
                                                                       "frame_time": times}))
    (sample.path / "000002").mkdir()
    np.savez(sample.path / "000002" / "index.npz", frame_number=np.zeros(0), frame_time=np.zeros(0))
    meta = read_metadata(str(sample.path))
    idx = FrameIndex.load(meta)
    assert len(idx) == 10 and [c.number for c in idx.chunks] == [0, 1]
    assert idx.numbers.tolist() == list(range(10))


def test_chunk_without_index_is_skipped_like_upstream(tmp_path):
    sample = make_store(tmp_path / "s", "npy", shape=(8, 8), numbers=range(10), chunksize=5)
    (sample.path / "000000" / "index.npz").unlink()
    idx = FrameIndex.load(read_metadata(str(sample.path)))
    assert idx.numbers.tolist() == list(range(5, 10))


def test_one_frame_chunk_can_be_read_again(tmp_path):
    # upstream fails the second read of the only frame of a chunk
    sample = make_store(tmp_path / "s", "mjpeg/avi", shape=(64, 64, 3), numbers=[3, 4, 5, 6], chunksize=3,
                        video=True)
    meta = read_metadata(str(sample.path))
    reader = open_reader(meta, FrameIndex.load(meta))
    for i in (3, 3, 0, 3, 2, 3):
        assert barcode(reader.read(i)) == sample.numbers[i]
    reader.close()


def test_extra_data_of_a_crashed_writer_and_nan(tmp_path):
    sample = make_store(tmp_path / "s", "npy", shape=(8, 8), numbers=range(6), chunksize=5, extra=True)
    (sample.path / "000001" / "index.extra.json").write_text(
        '[{"a": 1, "frame_index": 5, "frame_number": NaN}, {"a": 2, "frame_ind')
    meta = read_metadata(str(sample.path))
    records = read_extra_data(meta, FrameIndex.load(meta))
    assert [r.get("a", r.get("label")) for r in records] == ["f0", "f2", "f4", 1]
    assert records[-1]["frame_number"] is None


def test_byte_cache_is_bounded_and_makes_each_value_once():
    cache = ByteCache(100)
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.05)
        return b"x" * 40

    threads = [threading.Thread(target=cache.get_or_make, args=("k", make)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    cache.put("a", b"y" * 40)
    cache.put("b", b"z" * 40)
    assert cache.used_bytes <= 100 and cache.get("k") is None and cache.get("b") == b"z" * 40
    cache.put("huge", b"h" * 500)
    assert cache.get("huge") is None


def test_reader_refuses_frames_of_the_wrong_shape(tmp_path):
    sample = make_store(tmp_path / "s", "npy", shape=(8, 8), numbers=range(3))
    np.save(sample.path / "000000" / "000001.npy", np.zeros((9, 9), np.uint8))
    meta = read_metadata(str(sample.path))
    reader = open_reader(meta, FrameIndex.load(meta))
    assert isinstance(reader, FrameReader)
    with pytest.raises(Exception, match="declares"):
        reader.read(1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-10**12, 10**12),
                          st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2e9))),
                min_size=0, max_size=30),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 700)), max_size=8))
def test_frames_csv_rows_have_exact_sizes_and_ranges(rows, reads):
    import datetime as dt
    from scopefs.backends.imgstore import FRAMES_CSV_HEADER, FramesTable
    from scopefs.backends.blocks import RowsFile
    numbers = np.asarray([r[0] for r in rows], np.int64)
    times = np.asarray([r[1] for r in rows], np.float64)
    chunks = [Chunk(3, "", "", 0, len(rows) // 2), Chunk(9, "", "", len(rows) // 2, len(rows) - len(rows) // 2)]
    table = FramesTable(FrameIndex([c for c in chunks if c.count], numbers, times),
                        dt.timezone(dt.timedelta(hours=-5)))
    csv_file = RowsFile(FRAMES_CSV_HEADER, table.row_lengths, table.render)
    whole = FRAMES_CSV_HEADER + table.render(0, len(rows))
    assert csv_file.attr().size == len(whole)
    handle = csv_file.open(0)
    for offset, size in reads:
        assert handle.read(offset, size) == whole[offset:offset + size]
    assert whole.count(b"\n") == len(rows) + 1


def test_a_regular_file_is_opened_blocking_and_read_whole(tmp_path):
    """Opened non-blocking only to refuse a FIFO without waiting: the fd given reads
    (and, under a lease held elsewhere, opened) as any; read to its end."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3000)
    fd, st = open_regular(str(path))
    try:
        assert os.get_blocking(fd) and st.st_size == 3000
        assert read_to_end(fd, 1000) == b"x" * 3000          # (grown since its fstat)
    finally:
        os.close(fd)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        open_regular(str(tmp_path / "fifo"))


def test_a_file_nobody_asked_for_is_not_waited_for_under_a_lease(tmp_path):
    """Read ahead (`wait=False`), a file under a lease held elsewhere is passed over
    (BlockingIOError) rather than waited for: the reader's own request rides on it."""
    path = tmp_path / "leased"
    path.write_bytes(b"x")
    holder = os.open(path, os.O_RDONLY)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        try:
            fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            pytest.skip(f"no leases on this filesystem: {exc}")
        with pytest.raises(BlockingIOError):       # (the holder is told to break all the same)
            open_regular(str(path), wait=False)
    finally:
        signal.signal(signal.SIGIO, previous)
        os.close(holder)


def test_a_regular_file_under_a_lease_is_opened_once_the_lease_is_given_up(tmp_path):
    """(Samba's oplocks, knfsd's delegations:) an open waits for the holder to give its
    lease up, as a blocking open does, rather than failing EWOULDBLOCK."""
    path = tmp_path / "leased"
    path.write_bytes(b"x")
    holder = os.open(path, os.O_RDONLY)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)      # (the holder's notice of a break)

    def give_up_when_broken():
        for _ in range(500):
            if fcntl.fcntl(holder, fcntl.F_GETLEASE) != fcntl.F_WRLCK:
                break
            time.sleep(0.01)
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    try:
        try:
            fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            pytest.skip(f"no leases on this filesystem: {exc}")
        holding = threading.Thread(target=give_up_when_broken)
        holding.start()
        try:
            fd, _ = open_regular(str(path))
        finally:
            holding.join()
        assert read_to_end(fd, 1) == b"x"
        os.close(fd)
    finally:
        signal.signal(signal.SIGIO, previous)
        os.close(holder)
