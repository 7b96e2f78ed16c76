"""`.iid` segmentation files (PyPI `iidfile` 0.2.0): labelled binary masks of one image.

Layout (little-endian, no magic number): a 48-byte header of five absolute (offset,
length) buffer locations after `version` and `rformat`; a LUT of (key, iid offset,
iid length, segment offset, segment length) whose offsets are relative to their blocks;
IID records (key, domain length, address length, domain, address); the metadata as JSON
with no length prefix; the groups (a u32-prefixed JSON directory, then u32 key arrays
at offsets relative to the end of that directory); segments (key, half-open bbox as 4
u16, area u32, then regions until the segment's length is used up); a region is (u32
length counting itself, absolute half-open bbox as 4 u16, MSB-first packed bits).

There is no magic number, so the reader validates structure strictly at open and
refuses a file with one line naming what is wrong. Opening reads the LUT, IIDs and
segment headers, never region bits; a mask is decoded when asked for, and a damaged
segment fails alone. A local file is read through mmap; any other source through
byte ranges (`Ranged`: an object in S3), each segment fetched when its mask is asked
for. The writer copies unchanged segments byte for byte and replaces the file atomically.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from .atomic import atomic_write

HEADER = struct.Struct("<12I")
LUT_ENTRY = struct.Struct("<5I")
IID_HEAD = struct.Struct("<3I")          # key, domain length, address length
SEG_HEAD = struct.Struct("<I4HI")        # key, minr, minc, maxr, maxc, area
REGION_HEAD = struct.Struct("<I4H")      # length (counting itself), minr, minc, maxr, maxc
U32 = struct.Struct("<I")
BLOCKS = ("lut", "iids", "meta", "groups", "segs")
U16_MAX = 0xFFFF


class Ranged(Protocol):
    """A file read by byte ranges: `read` and `read_ranges` return exactly the bytes
    asked for or raise."""
    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]: ...


class LazySegment:
    """A segment record not read yet: `load()` fetches it from its `Ranged` source."""
    __slots__ = ("source", "offset", "length")

    def __init__(self, source: Ranged, offset: int, length: int):
        self.source, self.offset, self.length = source, offset, length

    def load(self) -> bytes:
        return self.source.read(self.offset, self.length)


class IIDFormatError(Exception):
    """The file is not a valid .iid; the message names what is wrong, in one line."""


class SegmentError(Exception):
    """One segment is damaged; the rest of the file is fine."""


@dataclass
class Entry:
    """One entry: its IID and its segment. `segment` holds the segment record after its
    key (bbox, area, regions), so a write can renumber keys without re-encoding masks."""
    domain: bytes | None
    address: bytes
    bbox: tuple[int, int, int, int]            # minr, minc, maxr, maxc (half-open)
    area: int
    segment: bytes | memoryview | LazySegment = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]

    def body(self) -> bytes | memoryview:
        """The segment record after its key (read now if it is lazy)."""
        segment = self.segment
        return segment.load() if isinstance(segment, LazySegment) else segment

    def region_count(self) -> int:
        count, pos, body = 0, SEG_HEAD.size - 4, self.body()
        end, length_at = len(body) - 4, U32.unpack_from
        while pos <= end:
            (length,) = length_at(body, pos)
            if length < REGION_HEAD.size:
                raise SegmentError(f"region of length {length}")
            pos += length
            count += 1
        return count

    def mask(self) -> np.ndarray:
        """The bbox-sized boolean mask: the OR of the regions placed in the bbox."""
        minr, minc, maxr, maxc = self.bbox
        mask = np.zeros(self.shape, bool)
        body, pos = self.body(), SEG_HEAD.size - 4
        while pos < len(body):
            if pos + REGION_HEAD.size > len(body):
                raise SegmentError("a region header runs past the end of the segment")
            length, rminr, rminc, rmaxr, rmaxc = REGION_HEAD.unpack_from(body, pos)
            if length < REGION_HEAD.size or pos + length > len(body):
                raise SegmentError(f"region length {length} does not fit the segment")
            if not (minr <= rminr <= rmaxr <= maxr and minc <= rminc <= rmaxc <= maxc):
                raise SegmentError(f"region ({rminr},{rminc},{rmaxr},{rmaxc}) lies outside the "
                                   f"bbox ({minr},{minc},{maxr},{maxc})")
            h, w = rmaxr - rminr, rmaxc - rminc
            if length - REGION_HEAD.size != (h * w + 7) // 8:
                raise SegmentError(f"region of {h}x{w} pixels has {length - REGION_HEAD.size} bytes of bits")
            bits = np.frombuffer(body, np.uint8, length - REGION_HEAD.size, pos + REGION_HEAD.size)
            region = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
            mask[rminr - minr:rmaxr - minr, rminc - minc:rmaxc - minc] |= region
            pos += length
        if int(mask.sum()) != self.area:
            raise SegmentError(f"regions hold {int(mask.sum())} pixels but the area says {self.area}")
        return mask


def encode_segment(mask: np.ndarray, bbox: tuple[int, int, int, int]) -> tuple[bytes, int]:
    """The segment record after its key, and the area, for a mask placed at bbox. The
    mask is split into 8-connected regions, each stored as its own bits, as upstream does."""
    mask = np.asarray(mask).astype(bool)
    check_bbox(bbox)
    minr, minc, maxr, maxc = bbox
    if mask.shape != (maxr - minr, maxc - minc):
        raise ValueError(f"mask of {mask.shape[0]}x{mask.shape[1]} does not fit bbox {tuple(bbox)} "
                         f"({maxr - minr}x{maxc - minc})")
    parts = []
    area = int(mask.sum())
    if area:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
        for k in range(1, count):
            x, y, w, h = (int(v) for v in stats[k, :4])
            bits = np.packbits(labels[y:y + h, x:x + w] == k).tobytes()
            parts.append(REGION_HEAD.pack(REGION_HEAD.size + len(bits), minr + y, minc + x, minr + y + h,
                                          minc + x + w))
            parts.append(bits)
    return SEG_HEAD.pack(0, minr, minc, maxr, maxc, area)[4:] + b"".join(parts), area


def check_bbox(bbox) -> None:
    if len(bbox) != 4 or not all(isinstance(v, (int, np.integer)) for v in bbox):
        raise ValueError(f"bbox must be four integers (minr, minc, maxr, maxc), got {bbox!r}")
    minr, minc, maxr, maxc = (int(v) for v in bbox)
    if not (0 <= minr <= maxr <= U16_MAX and 0 <= minc <= maxc <= U16_MAX):
        raise ValueError(f"bbox {tuple(bbox)} must satisfy 0 <= min <= max <= {U16_MAX} (uint16)")


class IIDFile:
    """An .iid file opened for reading (mmap), or a new empty one (`IIDFile()`)."""

    def __init__(self):
        self.entries: list[Entry] = []
        self.meta = {}
        self.groups: dict[str, list[int]] = {}
        self._map: mmap.mmap | None = None

    @classmethod
    def open(cls, path: str) -> "IIDFile":
        """A local file, through mmap."""
        self = cls()
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise IIDFormatError(f"{path}: empty file (an .iid has at least a 48-byte header)")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(_Mapped(memoryview(self._map)), size)
        except IIDFormatError as exc:
            self.close()
            raise IIDFormatError(f"{path}: {exc}") from None
        return self

    @classmethod
    def open_ranged(cls, source: Ranged, name: str) -> "IIDFile":
        """A file read by byte ranges: one read per block, the segment headers in merged
        ranges, each segment's regions only when its mask is asked for."""
        self = cls()
        if source.size == 0:
            raise IIDFormatError(f"{name}: empty file (an .iid has at least a 48-byte header)")
        try:
            self._parse(source, source.size)
        except IIDFormatError as exc:
            raise IIDFormatError(f"{name}: {exc}") from None
        return self

    def _parse(self, source, size: int) -> None:
        if size < HEADER.size:
            raise IIDFormatError(f"{size} bytes is too short for the 48-byte header")
        fields = HEADER.unpack_from(source.read(0, HEADER.size), 0)
        blocks = {}
        for i, name in enumerate(BLOCKS):
            offset, length = fields[2 + 2 * i], fields[3 + 2 * i]
            if offset < HEADER.size or offset + length > size:
                raise IIDFormatError(f"{name} block ({offset}, {length}) lies outside the file ({size} bytes)")
            blocks[name] = (offset, length)
        lut_len = blocks["lut"][1]
        if lut_len % LUT_ENTRY.size:
            raise IIDFormatError(f"LUT length {lut_len} is not a multiple of {LUT_ENTRY.size}")
        iids_len = blocks["iids"][1]
        segs_off, segs_len = blocks["segs"]
        n = lut_len // LUT_ENTRY.size
        lut, iids, meta, groups = source.read_ranges([blocks[name] for name in ("lut", "iids", "meta", "groups")])
        rows = []
        for i, (key, iid_off, iid_len, seg_off, seg_len) in enumerate(LUT_ENTRY.iter_unpack(lut)):
            if key != i:
                raise IIDFormatError(f"LUT entry {i} has key {key}")
            if iid_len < IID_HEAD.size or iid_off + iid_len > iids_len:
                raise IIDFormatError(f"entry {i}: IID record ({iid_off}, {iid_len}) lies outside the IID block")
            if seg_len < SEG_HEAD.size or seg_off + seg_len > segs_len:
                raise IIDFormatError(f"entry {i}: segment ({seg_off}, {seg_len}) lies outside the segment block")
            rows.append((iid_off, iid_len, segs_off + seg_off, seg_len))
        heads = source.read_ranges([(start, SEG_HEAD.size) for _, _, start, _ in rows])
        for i, ((start, iid_len, sstart, seg_len), head) in enumerate(zip(rows, heads)):
            ikey, dom_len, addr_len = IID_HEAD.unpack_from(iids, start)
            if ikey != i or IID_HEAD.size + dom_len + addr_len != iid_len:
                raise IIDFormatError(f"entry {i}: IID record says key {ikey}, lengths {dom_len}+{addr_len} "
                                     f"in a record of {iid_len} bytes")
            domain = bytes(iids[start + 12:start + 12 + dom_len]) if dom_len else None
            address = bytes(iids[start + 12 + dom_len:start + iid_len])
            skey, minr, minc, maxr, maxc, area = SEG_HEAD.unpack(head)
            if skey != i:
                raise IIDFormatError(f"entry {i}: segment says key {skey}")
            if minr > maxr or minc > maxc or area > (maxr - minr) * (maxc - minc):
                raise IIDFormatError(f"entry {i}: bbox ({minr},{minc},{maxr},{maxc}) with area {area} is impossible")
            self.entries.append(Entry(domain, address, (minr, minc, maxr, maxc), area,
                                      source.segment(sstart + 4, seg_len - 4) if isinstance(source, _Mapped)
                                      else LazySegment(source, sstart + 4, seg_len - 4)))
        try:
            self.meta = json.loads(bytes(meta).decode("utf-8")) if len(meta) else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IIDFormatError(f"meta block is not JSON ({exc})") from None
        self.groups = _parse_groups(groups, n)

    def mask(self, key: int) -> np.ndarray:
        return self.entries[key].mask()

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:      # entries still point into it; the GC closes it later
                pass
            self._map = None

    # -- writing ------------------------------------------------------------------------
    def add(self, mask: np.ndarray, bbox, address: bytes = b"", domain: bytes | None = None,
            groups: tuple[str, ...] = ()) -> int:
        segment, area = encode_segment(mask, tuple(int(v) for v in bbox))
        self.entries.append(Entry(domain or None, bytes(address), tuple(int(v) for v in bbox), area, segment))
        key = len(self.entries) - 1
        for group in groups:
            self.groups.setdefault(group, []).append(key)
        return key

    def to_bytes(self) -> bytes:
        lut, iids, segs = [], [], []
        iid_pos = seg_pos = 0
        for key, e in enumerate(self.entries):
            domain = e.domain or b""
            iid = IID_HEAD.pack(key, len(domain), len(e.address)) + domain + e.address
            seg = struct.pack("<I", key) + bytes(e.body())
            lut.append(LUT_ENTRY.pack(key, iid_pos, len(iid), seg_pos, len(seg)))
            iids.append(iid)
            segs.append(seg)
            iid_pos += len(iid)
            seg_pos += len(seg)
        meta = json.dumps(self.meta).encode()
        directory, arrays, pos = [], [], 0
        for name, keys in self.groups.items():
            data = np.asarray(keys, "<u4").tobytes()
            directory.append({"name": name, "offset": pos, "length": len(data)})
            arrays.append(data)
            pos += len(data)
        dir_json = json.dumps(directory).encode()
        groups = struct.pack("<I", len(dir_json)) + dir_json + b"".join(arrays)
        body = [b"".join(lut), b"".join(iids), meta, groups, b"".join(segs)]
        header, offset = [0, 0], HEADER.size
        for block in body:
            header += [offset, len(block)]
            offset += len(block)
        return HEADER.pack(*header) + b"".join(body)

    def save(self, path: str) -> None:
        """Write atomically: a crash leaves the old file or the new one, never a truncated one."""
        atomic_write(path, self.to_bytes())


class _Mapped:
    """A mapped file as a `Ranged` source: every range a view of the mapping, no copy."""

    def __init__(self, buf: memoryview):
        self.buf = buf

    def read(self, offset: int, length: int) -> memoryview:
        return self.buf[offset:offset + length]

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[memoryview]:
        return [self.buf[offset:offset + length] for offset, length in ranges]

    segment = read


def _parse_groups(buf, n: int) -> dict[str, list[int]]:
    """The groups block (buf holds just it)."""
    length = len(buf)
    if length == 0:
        return {}
    if length < 4:
        raise IIDFormatError(f"groups block of {length} bytes has no directory length")
    (dir_len,) = struct.unpack_from("<I", buf, 0)
    if 4 + dir_len > length:
        raise IIDFormatError(f"group directory of {dir_len} bytes overruns the groups block")
    try:
        directory = json.loads(bytes(buf[4:4 + dir_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IIDFormatError(f"group directory is not JSON ({exc})") from None
    if not isinstance(directory, list):
        raise IIDFormatError("group directory is not a JSON list")
    data_start, data_len = 4 + dir_len, length - 4 - dir_len
    groups = {}
    for item in directory:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("offset"), int) and isinstance(item.get("length"), int)):
            raise IIDFormatError(f"group directory item {item!r} lacks name, offset or length")
        g_off, g_len = item["offset"], item["length"]
        if g_off < 0 or g_len < 0 or g_len % 4 or g_off + g_len > data_len:
            raise IIDFormatError(f"group {item['name']!r} ({g_off}, {g_len}) lies outside the groups block")
        keys = np.frombuffer(buf, "<u4", g_len // 4, data_start + g_off).tolist()
        if any(k >= n for k in keys):
            raise IIDFormatError(f"group {item['name']!r} names an entry beyond the {n} entries")
        groups[item["name"]] = keys
    return groups
