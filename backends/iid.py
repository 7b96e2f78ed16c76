"""An .iid segmentation file as one folder per entry, readable and writable.

    000000-leaf/mask.png       the mask, bbox-sized, 0/255 (-o mask_format= for others)
    000000-leaf/entry.json     key, domain and address (text and hex), bbox, area, groups
    groups/<group>/<entry>     links to the entry folders of each group
    by-address/<address>/      links to the entries with that address
    meta.json                  the file's metadata
    overview.png               every mask in its own colour on the image plane
    README.txt                 how to change things

Changes (new folders, new masks or entry.json, deleted folders, meta.json, group links)
are applied when the written file is closed, validated whole; the .iid file is rewritten
atomically on fsync, after `writeback_delay` idle seconds, and at unmount.

Nothing done for one entry looks at the others: keys, groups and mask sizes come from
memory, and views are made once per revision of their entry into one bounded cache.
"""
from __future__ import annotations

import bisect
import colorsys
import contextlib
import errno
import gc
import hashlib
import io
import json
import logging
import os
import stat
import threading
import time
from typing import Callable

import cv2
import numpy as np
import orjson

from ..formats.atomic import remove_leftovers
from ..formats.iid import U16_MAX, Entry, IIDFile, IIDFormatError, SegmentError, encode_segment
from ..formats.images import EncodeError, make_format, small_plain_png
from . import is_url, remote
from .background import Background
from .blocks import BytesHandle, GeneratedFile, ListedDirectory, ListingSnapshot, MemoryFile
from .cache import ByteCache
from .cached_view import CachedView
from .kernel import process_alive
from .nowait import lookup_attr_nowait, under_lock_nowait
from .nodes import Attr, CachePolicy, Directory, File, FileHandle, Node, ROOT_INO, Symlink, Tree, read_only, writes
from .options import MountError, Options

log = logging.getLogger(__name__)

MASK_FORMATS = ("png", "tiff", "npy", "bmp", "pnm")
NAME_BYTES = 180            # readable part of a folder name; the key keeps it unique
#: masks written as PNG files of at most this many pixels (128 x 128) and bytes, holding
#: nothing but pixels (`small_plain_png`), are committed on the daemon's loop
#: (`MaskView.commit_nowait`): checking and decoding one takes at most about 0.2 ms (a
#: 64 x 64 cell's 0.06 ms, an 8 x 8 one's 0.01 ms, on a loaded 2-core VM). An honest
#: 128 x 128 mask, 16-bit and uncompressed, is 33 KB.
NOWAIT_MASK_PIXELS = 1 << 14
NOWAIT_MASK_BYTES = 1 << 16


def open_tree(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO,
              mountpoint: str | None = None) -> "IIDTree":
    mask_format = options.str("mask_format", "png", MASK_FORMATS)
    delay = options.float("writeback_delay", 2.0)
    if is_url(source):
        return _open_remote(source, options, mask_format, delay, base)
    options.finish()
    with gc_paused(freeze=base == ROOT_INO):
        try:
            iid = IIDFile.open(source)
        except IIDFormatError as exc:
            raise MountError(str(exc)) from None
        except OSError as exc:
            raise MountError(f"{source}: {exc.strerror}") from None
        if not read_only:
            left = remove_leftovers(source, process_alive)
            if left:
                log.warning("removed what a rewrite of %s cut short left beside it: %s", source, ", ".join(left))
        return IIDTree(os.path.abspath(source), iid, mask_format, delay, read_only, base,
                       os.stat(source).st_mtime_ns)


def _open_remote(url: str, options: Options, mask_format: str, delay: float, base: int) -> "IIDTree":
    """An .iid in object storage, read by byte ranges and always read-only: rewriting it
    needs every segment downloaded and uploaded again, and a store without a lock cannot
    keep two writers apart."""
    fs, path = remote.open_filesystem(url, options)
    options.finish()
    info = remote.probe(fs, path)
    source = remote.RemoteObject(fs, path, int(info.get("size") or 0))
    with gc_paused(freeze=base == ROOT_INO):
        try:
            iid = IIDFile.open_ranged(source, remote.public_url(url))
        except IIDFormatError as exc:
            raise MountError(str(exc)) from None
        except Exception as exc:
            raise MountError(f"{remote.public_url(url)} cannot be read: {type(exc).__name__}: "
                             f"{remote.redact(str(exc))}") from None
        tree = IIDTree(remote.public_url(url), iid, mask_format, delay, True, base, remote.mtime_ns(info))
    tree.notice = "mounted read-only: an .iid in object storage cannot be rewritten in place"
    tree.remote_fs = fs
    return tree


@contextlib.contextmanager
def gc_paused(freeze: bool):
    """Opening makes about ten objects per entry, all kept while mounted; Python's cyclic
    collector would scan them over and over as they pile up (5 of the 6 s a 100,000-entry
    file took to mount), and again in every collection while mounted (2.9 of the 10 s of
    CPU that listing every folder of 100,000 entries took). It is paused while they are
    made, and then, if `freeze`, every object alive is frozen (`gc.freeze`; the daemon's
    own live as long): no collection scans them until the tree is closed (`IIDTree.close`
    unfreezes). An entry deleted through the mount keeps its few objects until then: at
    most what the mount made. Freezing is process-wide, so only the mount's own tree does
    it: a graft (an `.iid` inside an FSDB) is opened and closed while its host lives on,
    and would freeze and then thaw the host's objects with its own."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()


def invalid(message: str) -> OSError:
    """A write whose content is refused: EINVAL for the writer (the daemon logs the reason)."""
    return OSError(errno.EINVAL, message)


# -- names ------------------------------------------------------------------------------

def readable(raw: bytes, limit: int = NAME_BYTES) -> str:
    """A file-name-safe, unambiguous text for arbitrary bytes: valid UTF-8 stays readable,
    '/', '%', control characters and invalid bytes become %XX."""
    decoded = raw.decode("utf-8", errors="surrogateescape")
    if (decoded.isprintable() and "/" not in decoded and "%" not in decoded and len(raw) <= limit
            and decoded not in (".", "..")):
        return decoded          # (the common case, at C speed: invalid bytes are not printable)
    out = []
    for ch in decoded:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:                   # an invalid byte
            out.append(f"%{code - 0xDC00:02X}")
        elif ch in "/%" or code < 32 or code == 127:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    text = "".join(out)
    if text in (".", ".."):
        text = "%2E" * len(text)                    # names that mean this and the parent folder
    if len(text.encode()) > limit:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        text = text.encode()[:limit - 10].decode("utf-8", errors="ignore") + "~" + digest
    return text


def address_name(address: bytes) -> str:
    """The folder of by-address/ that shows the entries with this address."""
    return readable(address, 240) or "%empty"


def unreadable(text: str) -> bytes:
    """The inverse of `readable` (for names typed by users: group folders)."""
    out, i, raw = bytearray(), 0, text.encode("utf-8", errors="surrogateescape")
    while i < len(raw):
        if raw[i:i + 1] == b"%" and i + 3 <= len(raw):
            try:
                out.append(int(raw[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return bytes(out)


def entry_folder_name(key: int, address: bytes) -> str:
    text = readable(address)
    return f"{key:06d}-{text}" if text else f"{key:06d}"


def _text_or_none(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- decoding what users write ------------------------------------------------------------

def decode_mask(data: bytes) -> np.ndarray:
    """A boolean mask from an image file (PNG, TIFF, BMP, PNM, JPEG) or .npy; only images
    with at most two values, one of them 0, are masks."""
    img = None
    if data[:6] == b"\x93NUMPY":
        try:
            img = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise invalid(f"mask .npy cannot be read: {exc}") from None
    elif data:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise invalid("mask is not an image scopefs can read (PNG, TIFF, BMP, PNM or NPY)")
    if img.ndim == 3:
        if not all(np.array_equal(img[..., 0], img[..., c]) for c in range(1, img.shape[2])):
            raise invalid("mask has colour; a mask is a gray image of 0 and one other value")
        img = img[..., 0]
    if img.ndim != 2 or 0 in img.shape:
        raise invalid(f"mask of shape {img.shape} is not a 2-D image")
    values = np.unique(img)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise invalid(f"mask has {values.size} values ({', '.join(map(str, values[:4].tolist()))}...); "
                      "a mask has 0 and one other value")
    return img != 0


def _hex_or_text(doc: dict, name: str, current: bytes | None, is_new: bool) -> bytes | None:
    """The value asked for by `name` (text) or `name_hex` (exact bytes). entry.json shows
    both, so the one that differs from the current value is the edit."""
    from_hex = from_text = None
    if doc.get(f"{name}_hex") is not None:
        try:
            from_hex = bytes.fromhex(doc[f"{name}_hex"])
        except (TypeError, ValueError):
            raise invalid(f"entry.json: {name}_hex is not hexadecimal") from None
    if name in doc:
        value = doc[name]
        if value is not None and not isinstance(value, str):
            raise invalid(f"entry.json: {name} must be text or null")
        from_text = value.encode("utf-8") if value is not None else None
    if from_hex is not None and (is_new or from_hex != current):
        return from_hex
    if name in doc and (is_new or from_text != current) and not (from_text is None and from_hex is not None):
        return from_text if from_text is not None or name == "domain" else b""
    return current


def parse_entry_json(data: bytes, entry: Entry | None) -> dict:
    """What an entry.json asks for: domain, address, bbox origin (and maxima when given),
    groups. Derived fields (key, area, regions) are ignored."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"entry.json is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid("entry.json must hold a JSON object")
    out = {"domain": _hex_or_text(doc, "domain", entry.domain if entry else None, entry is None),
           "address": _hex_or_text(doc, "address", entry.address if entry else b"", entry is None)}
    bbox = doc.get("bbox", list(entry.bbox) if entry else None)
    if isinstance(bbox, dict):
        bbox = [bbox.get(k) for k in ("minr", "minc", "maxr", "maxc")]
    if not isinstance(bbox, list) or len(bbox) not in (2, 4):
        raise invalid("entry.json: bbox must be [minr, minc, maxr, maxc] (or {minr, minc, ...})")
    if bbox[2:] == [None, None]:
        bbox = bbox[:2]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in bbox):
        raise invalid(f"entry.json: bbox values must be integers, got {bbox}")
    if not all(0 <= v <= U16_MAX for v in bbox):
        raise invalid(f"entry.json: bbox {bbox} lies outside 0..{U16_MAX} (coordinates are uint16)")
    out["bbox"] = bbox
    groups = doc.get("groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise invalid("entry.json: groups must be a list of names")
    out["groups"] = groups
    return out


def place(mask: np.ndarray, bbox: list[int]) -> tuple[int, int, int, int]:
    """The bbox of a mask placed at bbox's origin; refuses maxima that do not fit."""
    h, w = mask.shape
    minr, minc = bbox[0], bbox[1]
    if len(bbox) == 4 and (bbox[2] - minr, bbox[3] - minc) != (h, w):
        raise invalid(f"bbox {bbox} is {bbox[2] - minr}x{bbox[3] - minc} but the mask is {h}x{w}")
    if minr + h > U16_MAX or minc + w > U16_MAX:
        raise invalid(f"a {h}x{w} mask at ({minr}, {minc}) reaches beyond {U16_MAX} (coordinates are uint16)")
    return minr, minc, minr + h, minc + w


# -- the model ----------------------------------------------------------------------------

class IIDFolder(ListedDirectory):
    """A folder of the mount: its attributes and lookups come from memory, so the daemon
    answers them on its own thread unless a change holds the tree's lock."""

    tree: "IIDTree"

    def cached_attr(self) -> Attr:
        return self.attr()

    def lookup_attr_nowait(self, name: str):
        return lookup_attr_nowait(self.lookup, name, self.tree.lock, none_is_absent=True)

    def opendir(self) -> ListingSnapshot:
        return ListingSnapshot(self.listing, lock=self.tree.lock)


class EntryFolder(IIDFolder):
    """One entry (or a new one being made: `entry` is None until it has a mask and an
    entry.json). Its mask and entry.json are views of the entry; other names are
    scratch files (editors' and rsync's temporary files), kept in memory only. Names
    appear here only by the kernel's own calls (create, rename)."""

    negative_timeout = 3600.0

    def __init__(self, tree: "IIDTree", name: str, entry: Entry | None):
        self.tree = tree
        self.name = name
        self.entry = entry
        self.slot = -1                            # its place in tree.folders, for its key
        self.groups: frozenset[str] = frozenset()   # replaced, not changed: the empty one is shared
        self.revision = 0                         # bumped whenever its views change
        self.pending_mask: np.ndarray | None = None
        self.pending_json: dict | None = None
        self.hidden: frozenset[str] = frozenset()  # views removed by rm -r before rmdir
        self.scratch: dict[str, Node] = {}
        # the file's entries share its mtime, so a listing's entries share one set of attributes
        self.mtime_ns = tree.mtime_ns if entry is not None else time.time_ns()
        self.mask_file = tree.add(MaskView(self))
        self.json_file = tree.add(EntryJsonView(self))

    # the entry's content ------------------------------------------------------------
    def mask(self, keep: bool = True) -> np.ndarray:
        """The mask, decoded once per revision and kept in the tree's bounded cache
        (`keep=False`: decoded without filling the cache, for the overview)."""
        with self.tree.lock:
            entry, revision = self.entry, self.revision
            if entry is None:
                if self.pending_mask is None:
                    raise OSError(errno.ENOENT, "no mask yet")
                return self.pending_mask
        if not keep:
            return self.tree.decode(entry, self.name)
        return self.tree.cache.get_or_make(("mask", self.ino, revision), lambda: self.tree.decode(entry, self.name))

    def mask_shape(self) -> tuple[int, int]:
        if self.entry is not None:
            return self.entry.shape
        if self.pending_mask is None:
            raise OSError(errno.ENOENT, "no mask yet")
        return self.pending_mask.shape

    def describe(self) -> dict:
        e = self.entry
        if e is None:
            needs = [name for name, have in (("mask", self.pending_mask), ("entry.json", self.pending_json))
                     if have is None]
            return {"folder": self.name, "pending": True, "needs": needs}
        key = self.tree.key_of(self)
        minr, minc, maxr, maxc = e.bbox
        try:
            regions = e.region_count()
        except SegmentError:
            regions = None
        return {
            "key": key, "folder": self.name,
            "domain": _text_or_none(e.domain), "domain_hex": None if e.domain is None else e.domain.hex(),
            "address": _text_or_none(e.address), "address_hex": e.address.hex(),
            "bbox": {"minr": minr, "minc": minc, "maxr": maxr, "maxc": maxc,
                     "convention": "half-open image rows and columns: rows minr..maxr-1, columns minc..maxc-1"},
            "height": maxr - minr, "width": maxc - minc, "area": e.area,
            "groups": self.tree.groups_of(self), "regions": regions,
        }

    # changes (each under the tree lock) -------------------------------------------------
    def changed(self) -> None:
        """What the views show has changed (the tree counts it as a change to write)."""
        self.views_changed()
        self.tree.changed()

    def views_changed(self) -> None:
        """Its mask and entry.json show something else now: a new revision, which the
        kernel is told of (it caches their sizes)."""
        self.revision += 1
        self.tree.report(self.mask_file.ino, self.json_file.ino)

    def set_mask(self, mask: np.ndarray) -> None:
        with self.tree.lock:
            if self.entry is None:
                previous, self.pending_mask = self.pending_mask, mask
                try:
                    self._complete()
                except OSError:
                    self.pending_mask = previous       # a refused write changes nothing
                    raise
                if self.entry is None:
                    self.views_changed()               # still pending: what it shows changed
                return
            bbox = place(mask, list(self.entry.bbox[:2]))
            segment, area = encode_segment(mask, bbox)
            self.entry = Entry(self.entry.domain, self.entry.address, bbox, area, segment)
            self.changed()
            self.tree.cache.put(("mask", self.ino, self.revision), mask)

    def set_json(self, data: bytes) -> None:
        with self.tree.lock:
            wanted = parse_entry_json(data, self.entry)
            if self.entry is None:
                previous, self.pending_json = self.pending_json, wanted
                try:
                    self._complete()
                except OSError:
                    self.pending_json = previous
                    raise
                if self.entry is None:
                    self.views_changed()
                return
            mask = self.mask()
            bbox = place(mask, wanted["bbox"])
            segment = self.entry.segment
            if bbox != self.entry.bbox:            # moved: regions carry absolute coordinates
                segment, _ = encode_segment(mask, bbox)
            if wanted["address"] != self.entry.address:
                self.tree.addresses_version += 1
                self.tree.report(entries=self.tree.address_entries(self))
                self.tree.address_changed(wanted["address"])
            self.entry = Entry(wanted["domain"], wanted["address"], bbox, self.entry.area, segment)
            if wanted["groups"] is not None:
                self.tree.set_groups_of(self, wanted["groups"])
            self.changed()
            self.tree.cache.put(("mask", self.ino, self.revision), mask)

    def stays_pending(self) -> bool:
        """A new folder that a mask alone does not make an entry (no entry.json yet)."""
        return self.entry is None and self.pending_json is None

    def _complete(self) -> None:
        """A new folder becomes an entry once it has both a mask and an entry.json."""
        if self.pending_mask is None or self.pending_json is None:
            return
        wanted, mask = self.pending_json, self.pending_mask
        bbox = place(mask, wanted["bbox"])
        segment, area = encode_segment(mask, bbox)
        self.entry = Entry(wanted["domain"], wanted["address"] or b"", bbox, area, segment)
        self.pending_mask = self.pending_json = None
        self.tree.now_live(self)
        if wanted["groups"]:
            self.tree.set_groups_of(self, wanted["groups"])
        self.changed()
        self.tree.cache.put(("mask", self.ino, self.revision), mask)

    # the folder ---------------------------------------------------------------------------
    def _views(self) -> list[tuple[str, Node]]:
        views = []
        if (self.entry is not None or self.pending_mask is not None) and self.tree.mask_name not in self.hidden:
            views.append((self.tree.mask_name, self.mask_file))
        if (self.entry is not None or self.pending_json is not None) and "entry.json" not in self.hidden:
            views.append(("entry.json", self.json_file))
        return views

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.mtime_ns, 2)

    def listing(self):
        with self.tree.lock:
            return self._views() + sorted(self.scratch.items())

    def lookup(self, name: str):
        with self.tree.lock:
            return dict(self._views()).get(name) or self.scratch.get(name)

    def create_nowait(self, name: str, mode: int, flags: int):
        """Creating and opening a file here touches memory only (a view's staged bytes, a
        scratch file): on the daemon's loop, unless a change holds the tree. Not for a
        create that does not write (a mask opened to read reads masks ahead)."""
        if not writes(flags):
            return None

        def made():
            node = self.create(name, mode)
            return node, node.attr(), node.open(flags)
        return under_lock_nowait(self.tree.lock, made)

    def _view_for(self, name: str) -> File | None:
        if name == self.tree.mask_name:
            return self.mask_file
        return self.json_file if name == "entry.json" else None

    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            view = self._view_for(name)
            if view is not None:
                self.hidden -= {name}
                view.staged = b""             # created anew: empty until written and closed
                return view
            node = self.scratch.get(name)
            if node is None:
                node = self.scratch[name] = self.tree.add(MemoryFile(mode=mode))
            return node

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            if name in self.scratch:
                self.tree.discard(self.scratch.pop(name).ino)
            elif name in dict(self._views()):
                self.hidden |= {name}          # rm -r: the entry goes with its folder
            else:
                raise FileNotFoundError(errno.ENOENT, "no such file", name)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        with self.tree.lock:
            if new_parent is not self:
                raise OSError(errno.EXDEV, "files move only within their entry folder")
            source = self.scratch.get(name) or dict(self._views()).get(name)
            if source is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", name)
            target_view = self._view_for(new_name)
            if target_view is not None:
                if source is target_view:
                    return
                data = bytes(source.data) if isinstance(source, MemoryFile) else source.content()
                target_view.commit(data)       # rsync/editors: a temporary file becomes the mask
                self.hidden -= {new_name}
                if name in self.scratch:
                    self.tree.alias(self.scratch.pop(name).ino, target_view)
                return
            if name in self.scratch:           # scratch to scratch
                old = self.scratch.pop(new_name, None)
                if old is not None:
                    self.tree.discard(old.ino)
                self.scratch[new_name] = self.scratch.pop(name)
            else:                              # a view renamed away (an editor's backup): a copy
                self.scratch[new_name] = self.tree.add(MemoryFile(source.content()))


class IIDView(CachedView):
    """A view of the .iid model, cached in the tree's cache."""

    def __init__(self, owner, tree: "IIDTree"):
        super().__init__(owner, tree.cache)
        self.tree = tree


class MaskView(IIDView):
    """The mask as an image file whose size follows from the bbox (the mask formats
    store pixels uncompressed), so `stat` never decodes the segment."""

    def __init__(self, folder: EntryFolder):
        super().__init__(folder, folder.tree)

    def content_tag(self):
        return ("mask file", self.ino, self.owner.revision)

    def make(self) -> bytes:
        return self.tree.encode_mask(self.owner.mask())

    def size(self) -> int:
        return self.tree.mask_size(self.owner.mask_shape())

    def known_size(self) -> int | None:
        try:
            return self.tree.mask_size(self.owner.mask_shape(), learn=False)
        except OSError:
            return None

    def open(self, flags: int) -> FileHandle:
        handle = super().open(flags)
        if not writes(flags):
            self.tree.read_masks_after(self.owner)
        return handle

    def commit(self, data: bytes) -> None:
        self.owner.set_mask(decode_mask(data))

    def commit_nowait(self, data: bytearray) -> bool:
        """The mask of a new entry folder that stays pending (no entry.json yet: what
        `cp -r` of an entry usually writes first), a small PNG of nothing but pixels (a
        cell's: NOWAIT_MASK_PIXELS, NOWAIT_MASK_BYTES), is decoded and kept on the
        daemon's loop (at most about 0.2 ms) when no change holds the tree: a copied
        mask costs no worker thread. It changes only this folder's files, and their size
        or mtime (as `View.commit_nowait` requires); a commit that changes an entry, and so
        other folders' listings and the overview, goes to a thread as before."""
        folder = self.owner
        if not folder.stays_pending() or not small_plain_png(data, NOWAIT_MASK_PIXELS, NOWAIT_MASK_BYTES):
            return False
        mask = decode_mask(data)

        def applied() -> bool:
            if not folder.stays_pending():      # (checked again: it may have changed meanwhile)
                return False
            folder.set_mask(mask)
            return True
        return under_lock_nowait(self.tree.lock, applied) or False


class EntryJsonView(IIDView):
    """The entry as JSON. Its size is kept apart from the bytes (a few bytes per entry),
    so `stat` and listings answer from memory even once the bytes left the bounded cache
    (a 100,000-entry file's views do not fit it)."""

    def __init__(self, folder: EntryFolder):
        super().__init__(folder, folder.tree)
        self._size: tuple[int, int, int] | None = None     # (revision, keys_version, size)

    def content_tag(self):
        return ("entry.json", self.ino, self.owner.revision, self.tree.keys_version)

    def make(self) -> bytes:
        with self.tree.lock:
            self.tree.counts["entry_json_made"] += 1
            revision, keys_version = self.owner.revision, self.tree.keys_version
            doc = self.owner.describe()
        # what json.dumps(doc, indent=2, ensure_ascii=False) gives, 30 times faster (a walk
        # that lists every entry folder makes every entry.json for its size)
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        self._size = (revision, keys_version, len(data))
        return data

    def known_size(self) -> int | None:
        kept = self._size
        if kept is not None and kept[:2] == (self.owner.revision, self.tree.keys_version):
            return kept[2]
        return super().known_size()

    def size(self) -> int:
        size = self.known_size()
        if size is None:
            size = len(self.content())
            self.tree.prepare_after(self.owner)
        return size

    def commit(self, data: bytes) -> None:
        self.owner.set_json(data)


class MetaView(IIDView):
    def __init__(self, tree: "IIDTree"):
        super().__init__(tree, tree)

    def content_tag(self):
        return ("meta.json", self.tree.meta_revision)

    def make(self) -> bytes:
        return (json.dumps(self.owner.meta, indent=2, ensure_ascii=False) + "\n").encode()

    def commit(self, data: bytes) -> None:
        try:
            meta = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid(f"meta.json is not JSON: {exc}") from None
        with self.owner.lock:
            self.owner.meta = meta
            self.owner.meta_revision += 1
            self.owner.changed()


class RootFolder(IIDFolder):
    """Fixed items, then the entry folders; `mkdir` makes a new entry folder (the only
    way a name appears here)."""

    negative_timeout = 3600.0

    def __init__(self, tree: "IIDTree"):
        self.tree = tree
        self._cached: tuple[int, list] | None = None

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.tree.mtime_ns, 4)

    def listing(self) -> list[tuple[str, Node]]:
        """Made once per change of the folder set, not once per readdir batch."""
        with self.tree.lock:
            if self._cached is None or self._cached[0] != self.tree.folders_version:
                listing = list(self.tree.fixed.items()) + [(f.name, f) for f in self.tree.folders if f is not None]
                self._cached = (self.tree.folders_version, listing)
            return self._cached[1]

    def lookup(self, name: str):
        with self.tree.lock:
            return self.tree.fixed.get(name) or self.tree.folder_by_name.get(name)

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            if self.lookup(name) is not None:
                raise FileExistsError(errno.EEXIST, "exists", name)
            return self.tree.new_folder(name)

    def mkdir_nowait(self, name: str, mode: int):
        """A new entry folder is made in memory: on the daemon's loop, unless a change
        holds the tree."""
        def made():
            folder = self.mkdir(name, mode)
            return folder, folder.attr()
        return under_lock_nowait(self.tree.lock, made)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            folder = self.tree.folder_by_name.get(name)
            if folder is None:
                raise (OSError(errno.EPERM, "not an entry folder") if name in self.tree.fixed
                       else FileNotFoundError(errno.ENOENT, "no such entry", name))
            if folder.scratch or folder._views():
                raise OSError(errno.ENOTEMPTY, "folder not empty (rm -r removes an entry)", name)
            self.tree.delete_folder(folder)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        raise OSError(errno.EPERM, "entry folders are named by the file; change entry.json instead")


class GroupsFolder(IIDFolder):
    def __init__(self, tree: "IIDTree"):
        self.tree = tree
        self._names: tuple[int, dict[str, str]] | None = None     # folder name -> group, per version

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.tree.mtime_ns, 2)

    def listing(self):
        with self.tree.lock:
            return [(readable(g.encode(), 240), self.tree.group_folder(g)) for g in self.tree.groups]

    def lookup(self, name: str):
        with self.tree.lock:
            if self._names is None or self._names[0] != self.tree.groups_version:
                names = {readable(g.encode(), 240): g for g in reversed(self.tree.groups)}  # the first one wins
                self._names = (self.tree.groups_version, names)
            group = self._names[1].get(name)
            return None if group is None else self.tree.group_folder(group)

    def mkdir(self, name: str, mode: int) -> Directory:
        group = unreadable(name).decode("utf-8", errors="replace")
        with self.tree.lock:
            if group in self.tree.groups or self.lookup(name) is not None:
                raise FileExistsError(errno.EEXIST, "group exists", name)
            self.tree.add_group(group)
            self.tree.changed()
            return self.tree.group_folder(group)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            node = self.lookup(name)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such group", name)
            if self.tree.groups[node.group]:
                raise OSError(errno.ENOTEMPTY, "group has members", name)
            self.tree.remove_group(node.group)
            self.tree.changed()


class GroupFolder(IIDFolder):
    """Members as links to their entry folders; `ln -s` adds one, `rm` removes one."""

    def __init__(self, tree: "IIDTree", group: str):
        self.tree = tree
        self.group = group
        self.mtime_ns = tree.mtime_ns             # then when its members change (IIDTree.touch)

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.mtime_ns, 2)

    def _members(self) -> dict[EntryFolder, None]:
        return self.tree.groups.get(self.group, {})

    def listing(self):
        with self.tree.lock:
            return [(f.name, self.tree.link_to(f)) for f in self._members()]

    def lookup(self, name: str):
        with self.tree.lock:
            folder = self.tree.folder_by_name.get(name)
            return self.tree.link_to(folder) if folder in self._members() else None

    def symlink(self, name: str, target: str) -> Symlink:
        with self.tree.lock:
            folder = self.tree.folder_by_name.get(os.path.basename(target.rstrip("/")))
            if folder is None or folder.entry is None:
                raise invalid(f"group link {name} -> {target}: the target is not an entry folder of this file")
            if folder not in self._members():
                self.tree.join(folder, self.group)
                self.tree.changed()
            return self.tree.link_to(folder)

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            folder = self.tree.folder_by_name.get(name)
            if folder not in self._members():
                raise FileNotFoundError(errno.ENOENT, "not a member", name)
            self.tree.leave(folder, self.group)
            self.tree.changed()


class ByAddressFolder(IIDFolder):
    def __init__(self, tree: "IIDTree"):
        self.tree = tree
        self._cached: tuple[int, dict] | None = None

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.tree.mtime_ns, 2)

    def _addresses(self) -> dict[str, list[EntryFolder]]:
        """Made once per change of the addresses."""
        with self.tree.lock:
            if self._cached is None or self._cached[0] != self.tree.addresses_version:
                found: dict[str, list[EntryFolder]] = {}
                for f in self.tree.live():
                    found.setdefault(address_name(f.entry.address), []).append(f)
                self._cached = (self.tree.addresses_version, found)
            return self._cached[1]

    def listing(self):
        return [(name, self.tree.address_folder(name)) for name in sorted(self._addresses())]

    def lookup(self, name: str):
        return self.tree.address_folder(name) if name in self._addresses() else None


class AddressFolder(IIDFolder):
    def __init__(self, parent: ByAddressFolder, name: str):
        self.parent = parent
        self.tree = parent.tree
        self.name = name
        self.mtime_ns = parent.tree.mtime_ns      # then when its members change (IIDTree.touch)

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)

    cached_attr = attr

    def listing(self):
        return [(f.name, self.parent.tree.link_to(f)) for f in self.parent._addresses().get(self.name, [])]

    def lookup(self, name: str):
        for f in self.parent._addresses().get(self.name, []):
            if f.name == name:
                return self.parent.tree.link_to(f)
        return None


README = """\
This folder shows {path}, an .iid segmentation file: one folder per entry.

  <key>-<address>/{mask}   the entry's mask, {mask_what}
  <key>-<address>/entry.json   domain and address (as text when UTF-8, always as hex),
                               bbox (half-open rows/columns), area, groups, region count
  groups/<group>/              links to the entries of each group
  by-address/<address>/        links to the entries with that address
  meta.json                    the file's metadata (any JSON)
  overview.png                 every mask in its own colour on the image plane
                               (scaled down to at most 2048 pixels on its long side)

Folder names stay the same while mounted; keys are renumbered when entries are deleted,
so names may change at the next mount. Addresses that are not plain text show %XX.

Changing things (applied when the written file is closed, checked whole first):
  - write {mask} or entry.json (bbox, address, domain, groups) of an entry
  - mkdir a folder, write {mask} and entry.json into it: a new entry
  - rm -r a folder: the entry is deleted
  - edit meta.json; mkdir/rmdir groups/<group>; ln -s ../../<entry> groups/<group>/; rm a link
The .iid file is rewritten atomically on fsync, after {delay:g} idle seconds, and at unmount.
"""


class IIDTree(Tree):
    writable = True
    remote_fs = None            # a file in object storage: its requests are counted
    #: bytes of decoded masks and made views (mask files, entry.json) kept in memory
    CACHE_BYTES = 64 << 20
    #: entries made ahead of a walk (`prepare_after`, `read_masks_after`)
    PREPARE_AHEAD = 32
    #: bytes of mask files made ahead of a copy (`read_masks_after`)
    MASKS_AHEAD_BYTES = 8 << 20
    #: mask shapes whose file size is kept (`mask_size`)
    MASK_SHAPES_KEPT = 1 << 16
    #: fixed items whose mtime is the tree's
    TREE_TIMED = ("groups", "meta.json", "overview.png")

    def __init__(self, path: str, iid: IIDFile, mask_format: str, writeback_delay: float, read_only: bool,
                 base: int, mtime_ns: int):
        """`path` is where the file is (a URL for a read-only remote file)."""
        super().__init__(base)
        self.path = path
        self.iid = iid
        self.writable = not read_only
        # writable: the kernel keeps names and file attributes, and is told (`report`)
        # when a change it did not make itself alters them (a new mask changes entry.json,
        # a deleted entry shifts keys, a group change moves links); pages are kept per
        # open while a view's content stays the same (View.open). Links never change.
        self.cache_policy = (CachePolicy() if read_only else
                             CachePolicy(negative_timeout=0.0, keep_cache=False))
        self.lock = threading.RLock()
        self.cache = ByteCache(self.CACHE_BYTES)
        self.counts = {"segments_decoded": 0, "masks_encoded": 0, "entry_json_made": 0}
        self.mask_format = make_format(mask_format)
        self.mask_name = "mask" + self.mask_format.extension_for((1, 1))
        self._mask_sizes: dict[tuple[int, int], int] = {}
        self.writeback_delay = writeback_delay
        self.mtime_ns = mtime_ns
        self.meta = iid.meta
        self.version = 0              # bumped by every change
        self.folders_version = 0      # bumped when folders come or go
        self.keys_version = 0         # bumped when keys of existing entries shift
        self.addresses_version = 0    # bumped when the set of addresses may have changed
        self.groups_version = 0       # bumped when groups come or go
        self.meta_revision = 0
        self._synced = 0               # the version last written
        self._last_change = 0.0
        self.writebacks = 0
        self.add(RootFolder(self))
        # folders by slot (None where deleted); an entry's key is its slot less the slots
        # before it that hold no entry (deleted, or new and still pending): one bisect
        self.folders: list[EntryFolder | None] = []
        self._gaps: list[int] = []
        self.folder_by_name: dict[str, EntryFolder] = {}
        for key, entry in enumerate(iid.entries):
            self._register(EntryFolder(self, entry_folder_name(key, entry.address), entry))
        self._group_nodes: dict[str, GroupFolder] = {}
        self._links: dict[int, Symlink] = {}      # by entry folder inode
        self._address_nodes: dict[str, AddressFolder] = {}
        self.groups: dict[str, dict[EntryFolder, None]] = {}     # members in order, as a set
        self._group_rank: dict[str, int] = {}
        for name, keys in iid.groups.items():
            self.add_group(name)
            for k in keys:
                self.join(self.folders[k], name)
        by_address = self.add(ByAddressFolder(self))
        self.by_address = by_address
        text = README.format(path=self.path, mask=self.mask_name, delay=writeback_delay,
                             mask_what="bbox-sized, 0 and 255" if self.mask_format.name != "npy"
                             else "bbox-sized booleans")
        self.fixed = {
            "README.txt": self.add(GeneratedFile(lambda: text.encode(), self.mtime_ns)),
            "by-address": by_address,
            "groups": self.add(GroupsFolder(self)),
            "meta.json": self.add(MetaView(self)),
            "overview.png": self.add(OverviewFile(self)),
        }
        # the overview's size needs one encoding of a blank plane (up to 12 MB): learn it
        # in the background so that the first `ls -l` need not wait (joined at `close`)
        self.background = Background()
        self.background.start(self.fixed["overview.png"].attr, "overview-size")

    # folders and keys --------------------------------------------------------------
    def _register(self, folder: EntryFolder) -> None:
        self.add(folder)
        folder.slot = len(self.folders)
        self.folders.append(folder)
        if folder.entry is None:
            self._gaps.append(folder.slot)        # the highest slot: the list stays sorted
        self.folder_by_name[folder.name] = folder
        self.folders_version += 1

    def new_folder(self, name: str) -> EntryFolder:
        folder = EntryFolder(self, name, None)
        self._register(folder)
        return folder

    def now_live(self, folder: EntryFolder) -> None:
        """A new folder became an entry: entries after it (made earlier) move up one key."""
        del self._gaps[bisect.bisect_left(self._gaps, folder.slot)]
        self._keys_shift_after(folder.slot)
        self.addresses_version += 1
        self.address_changed(folder.entry.address)

    def delete_folder(self, folder: EntryFolder) -> None:
        self.folders[folder.slot] = None
        del self.folder_by_name[folder.name]
        self.folders_version += 1
        self.report(entries=self.group_entries(folder, folder.groups))
        for group in list(folder.groups):
            self.leave(folder, group)
        for node in (folder, folder.mask_file, folder.json_file):
            self.discard(node.ino)
        if folder.entry is not None:
            self.report(entries=self.address_entries(folder))
            bisect.insort(self._gaps, folder.slot)
            self._keys_shift_after(folder.slot)
            self.addresses_version += 1
            self.changed()

    def _keys_shift_after(self, slot: int) -> None:
        entries_after = len(self.folders) - 1 - slot - (len(self._gaps) - bisect.bisect_right(self._gaps, slot))
        if entries_after:
            self.keys_version += 1
            self.report(*self._json_sizes_changed_after(slot))

    def _json_sizes_changed_after(self, slot: int) -> list[int]:
        """The entry.json files after `slot` whose size changed when their keys moved by
        one: those whose key gained or lost a digit (keys 9/10, 99/100, ...), a few at
        most; the others keep their size (their content is read anew: its tag changed)."""
        gaps = self._gaps

        def key_below(s: int) -> int:          # non-decreasing; first reaches k at the entry with key k
            return s - bisect.bisect_right(gaps, s)

        found, power = [], 10
        while power // 10 <= len(self.folders):
            for key in (power - 1, power):
                at = bisect.bisect_left(range(len(self.folders)), key, key=key_below)
                if slot < at < len(self.folders) and self.folders[at] is not None:
                    found.append(self.folders[at].json_file.ino)
            power *= 10
        return found

    def _walked_to(self, folder: EntryFolder, seen: Callable[[EntryFolder], bool]) -> list[EntryFolder]:
        """The next PREPARE_AHEAD entries after `folder` if the folder before it was `seen`
        (a walk in order is under way), else none (a visit at random prepares nothing)."""
        with self.lock:
            before = self.folders[folder.slot - 1] if folder.slot > 0 else None
            if before is None or not seen(before):
                return []
            return [f for f in self.folders[folder.slot + 1:folder.slot + 1 + self.PREPARE_AHEAD]
                    if f is not None and f.entry is not None]

    def prepare_after(self, folder: EntryFolder) -> None:
        """A walk (ls -lR, find, du, a file manager) visits entry folders in order, each
        needing the sizes of its mask and entry.json: once the folder before `folder` was
        made, the next entries are made in the same worker-thread call, so their folders
        then list on the daemon's loop."""
        for f in self._walked_to(folder, lambda before: before.json_file.known_size() is not None):
            try:
                f.json_file.content()
                f.mask_file.size()
            except OSError:
                pass                         # a damaged entry: its own stat says so

    def read_masks_after(self, folder: EntryFolder) -> None:
        """A copy of the tree (tar, rsync, cp -r) reads the masks in order: once the mask
        before `folder`'s was read, the next ones (up to MASKS_AHEAD_BYTES of mask files)
        are made in the same worker-thread call, so their opens are answered on the loop."""
        budget = self.MASKS_AHEAD_BYTES
        for f in self._walked_to(folder, lambda before: self.cache.get(before.mask_file.content_tag()) is not None):
            try:
                budget -= f.mask_file.size()
                if budget < 0:
                    return
                f.mask_file.content()
            except OSError:
                pass                         # a damaged segment: its own read says so

    def live(self) -> list[EntryFolder]:
        return [f for f in self.folders if f is not None and f.entry is not None]

    def key_of(self, folder: EntryFolder) -> int:
        """The key the entry has in the file as it will be written next."""
        with self.lock:
            return folder.slot - bisect.bisect_left(self._gaps, folder.slot)

    # groups ------------------------------------------------------------------------
    def add_group(self, group: str) -> None:
        self.groups[group] = {}
        self._group_rank[group] = self.groups_version       # increases: groups keep their order
        self.groups_version += 1

    def remove_group(self, group: str) -> None:
        del self.groups[group], self._group_rank[group]
        self.groups_version += 1

    def join(self, folder: EntryFolder, group: str) -> None:
        """Membership shows in the folder's entry.json (the caller marks the tree changed)."""
        if folder not in self.groups[group]:
            self.groups[group][folder] = None
            folder.groups |= {group}
            folder.views_changed()
            self.touch(self._group_nodes.get(group))

    def leave(self, folder: EntryFolder, group: str) -> None:
        del self.groups[group][folder]
        folder.groups -= {group}
        folder.views_changed()
        self.touch(self._group_nodes.get(group))

    def groups_of(self, folder: EntryFolder) -> list[str]:
        return sorted(folder.groups, key=self._group_rank.__getitem__)

    def set_groups_of(self, folder: EntryFolder, names: list[str]) -> None:
        for group in names:
            if group not in self.groups:
                self.add_group(group)
            self.join(folder, group)
        left = folder.groups - set(names)
        self.report(entries=self.group_entries(folder, left))
        for group in left:
            self.leave(folder, group)

    def group_entries(self, folder: EntryFolder, groups) -> tuple[tuple[int, str], ...]:
        """The links to `folder` in these groups' folders (those shown so far)."""
        nodes = (self._group_nodes.get(g) for g in groups)
        return tuple((node.ino, folder.name) for node in nodes if node is not None)

    def address_entries(self, folder: EntryFolder) -> tuple[tuple[int, str], ...]:
        """The names by-address shows `folder` under, before its address changes."""
        name = address_name(folder.entry.address)
        node = self.address_changed(folder.entry.address)
        return ((self.by_address.ino, name),) + (((node.ino, folder.name),) if node is not None else ())

    def address_changed(self, address: bytes) -> "AddressFolder | None":
        """The entries with `address` changed: its folder's mtime (if shown so far)."""
        node = self._address_nodes.get(address_name(address))
        self.touch(node)
        return node

    def touch(self, folder: "GroupFolder | AddressFolder | None") -> None:
        """A group's or an address's folder (if shown so far) gained or lost a member."""
        if folder is not None:
            folder.mtime_ns = time.time_ns()
            self.report(folder.ino)

    def group_folder(self, group: str) -> GroupFolder:
        node = self._group_nodes.get(group)
        if node is None:
            node = self._group_nodes[group] = self.add(GroupFolder(self, group))
        return node

    def address_folder(self, name: str) -> AddressFolder:
        with self.lock:
            node = self._address_nodes.get(name)
            if node is None:
                node = self._address_nodes[name] = self.add(AddressFolder(self.by_address, name))
            return node

    def link_to(self, folder: EntryFolder) -> Symlink:
        """The link to an entry folder from a folder two levels down (groups/<group>/,
        by-address/<address>/), one per entry folder, by its inode."""
        with self.lock:
            node = self._links.get(folder.ino)
            if node is None:
                node = self._links[folder.ino] = self.add(Symlink("../../" + folder.name, folder.mtime_ns))
            return node

    # masks -------------------------------------------------------------------------
    def decode(self, entry: Entry, name: str) -> np.ndarray:
        self.counts["segments_decoded"] += 1
        try:
            return entry.mask()
        except SegmentError as exc:
            raise OSError(errno.EIO, f"entry {name}: damaged segment: {exc}") from None

    def _mask_image(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.mask_format.name == "npy" else mask.astype(np.uint8) * 255

    def encode_mask(self, mask: np.ndarray) -> bytes:
        self.counts["masks_encoded"] += 1
        with self._encoding(mask.shape):
            return self.mask_format.encode_checked(self._mask_image(mask))

    def mask_size(self, shape: tuple[int, int], learn: bool = True) -> int | None:
        """The size of a mask file, from its shape: one blank mask is encoded per shape,
        never the entry's own. Sizes are kept by shape (at most MASK_SHAPES_KEPT), so a
        listing reads one from a dict: no lock, no numpy."""
        size = self._mask_sizes.get(shape)
        if size is None and learn:
            with self._encoding(shape):
                size = self.mask_format.fixed_size(shape, bool if self.mask_format.name == "npy" else np.uint8)
            if size is not None:
                if len(self._mask_sizes) >= self.MASK_SHAPES_KEPT:
                    self._mask_sizes.clear()
                self._mask_sizes[shape] = size
        return size

    @contextlib.contextmanager
    def _encoding(self, shape: tuple[int, int]):
        """An encoder's failure (an empty bbox) is EIO for that one mask file."""
        try:
            yield
        except (EncodeError, cv2.error):
            raise OSError(errno.EIO, f"a {shape[0]}x{shape[1]} mask cannot be written as "
                                     f"{self.mask_format.name}") from None

    # write-back --------------------------------------------------------------------
    def changed(self) -> None:
        self.version += 1
        self._last_change = time.monotonic()
        self.mtime_ns = time.time_ns()
        # what shows the tree's mtime (and the overview, what it draws)
        self.report(self.root.ino, self.by_address.ino, *(self.fixed[name].ino for name in self.TREE_TIMED))

    def sync_due(self) -> bool:
        return (self.writable and self.version != self._synced
                and time.monotonic() - self._last_change >= self.writeback_delay)

    def sync(self) -> None:
        """Rewrite the .iid atomically with the current entries, groups and metadata."""
        with self.lock:
            if self.version == self._synced:
                return
            version = self.version
            live = self.live()
            out = IIDFile()
            out.entries = [f.entry for f in live]
            out.meta = self.meta
            index = {id(f): k for k, f in enumerate(live)}
            out.groups = {g: [index[id(f)] for f in members if id(f) in index] for g, members in self.groups.items()}
        try:
            out.save(self.path)
        except OSError as exc:
            log.error("writing %s failed: %s", self.path, exc)
            raise OSError(errno.EIO, f"writing {self.path} failed: {exc}") from None
        self.writebacks += 1
        log.info("wrote %s (%d entries)", self.path, len(out.entries))
        fresh = IIDFile.open(self.path)       # new mmap: the old file's pages can go
        with self.lock:
            for k, folder in enumerate(live):
                if folder.entry is out.entries[k]:
                    folder.entry = fresh.entries[k]       # the same content: views stay valid
            self._synced = version
        old, self.iid = self.iid, fresh
        old.close()

    def status(self) -> dict:
        cache = self.cache
        lookups = cache.hits + cache.misses
        return {"entries": len(self.folders) - len(self._gaps), "pending_changes": self.version != self._synced,
                "writebacks": self.writebacks, **self.counts, "cache_bytes": cache.used_bytes,
                "cache_hit_rate": round(cache.hits / lookups, 4) if lookups else None,
                **({"s3_requests": dict(self.remote_fs.requests)} if self.remote_fs else {})}

    def close(self) -> None:
        self.background.close()
        if self.writable:
            self.sync()
        self.iid.close()
        if self.base == ROOT_INO:
            gc.unfreeze()             # (see gc_paused) the collector may free the tree now


class OverviewFile(File):
    """Every mask in its own colour on the image plane (later keys drawn on top), scaled
    down to at most OVERVIEW_SIDE pixels on its long side: a picture to look at, not data."""

    OVERVIEW_SIDE = 2048

    def __init__(self, tree: IIDTree):
        self.tree = tree
        self._cache: tuple[int, bytes] | None = None
        self._plane_of: tuple[int, tuple] | None = None      # (version, plane shape and scale)
        self._png = make_format("png")

    def _plane(self) -> tuple[tuple[int, int], float]:
        """The plane's shape and scale, worked out once per version of the tree."""
        with self.tree.lock:
            version = self.tree.version
            if self._plane_of is None or self._plane_of[0] != version:
                live = self.tree.live()
                h = max([f.entry.bbox[2] for f in live], default=0) or 1
                w = max([f.entry.bbox[3] for f in live], default=0) or 1
                scale = min(1.0, self.OVERVIEW_SIDE / max(h, w))
                self._plane_of = (version, ((max(1, round(h * scale)), max(1, round(w * scale))), scale))
            return self._plane_of[1]

    def content(self) -> bytes:
        with self.tree.lock:
            version = self.tree.version
            if self._cache and self._cache[0] == version:
                return self._cache[1]
            live = self.tree.live()
        (h, w), scale = self._plane()
        plane = np.zeros((h, w, 3), np.uint8)
        for k, folder in enumerate(live):
            try:
                mask = folder.mask(keep=False)
            except OSError:
                continue                                   # a damaged segment is left out
            minr, minc, maxr, maxc = (round(v * scale) for v in folder.entry.bbox)
            maxr, maxc = min(max(maxr, minr + 1), h), min(max(maxc, minc + 1), w)
            if minr >= h or minc >= w:
                continue
            if scale < 1.0:
                mask = cv2.resize(mask.view(np.uint8), (maxc - minc, maxr - minr),
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
            r, g, b = colorsys.hsv_to_rgb((k * 0.61803398875) % 1.0, 0.75, 1.0)
            plane[minr:maxr, minc:maxc][mask[:maxr - minr, :maxc - minc]] = (int(b * 255), int(g * 255),
                                                                              int(r * 255))
        data = self._png.encode_checked(plane)
        self._cache = (version, data)
        return data

    def attr(self) -> Attr:
        shape, _ = self._plane()
        return Attr(stat.S_IFREG | 0o444, self._png.fixed_size(shape + (3,), np.uint8), self.tree.mtime_ns)

    def cached_attr(self) -> Attr | None:
        plane = self._plane_of
        if plane is None or plane[0] != self.tree.version:
            return None
        size = self._png.known_size(plane[1][0] + (3,), np.uint8)
        return None if size is None else Attr(stat.S_IFREG | 0o444, size, self.tree.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        if writes(flags):
            raise read_only("overview.png")
        return BytesHandle(self.content())
