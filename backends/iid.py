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
"""
from __future__ import annotations

import colorsys
import errno
import hashlib
import io
import json
import logging
import os
import stat
import threading
import time

import cv2
import numpy as np

from ..formats.iid import U16_MAX, Entry, IIDFile, IIDFormatError, SegmentError, encode_segment
from ..formats.images import make_format
from .nodes import (Attr, BytesHandle, CachePolicy, Directory, File, FileHandle, GeneratedFile,
                    ListedDirectory, MemoryFile, Node, ROOT_INO, Symlink, Tree, View)
from .options import MountError, Options

log = logging.getLogger(__name__)

MASK_FORMATS = ("png", "tiff", "npy", "bmp", "pnm")
NAME_BYTES = 180            # readable part of a folder name; the key keeps it unique


def open_tree(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO,
              mountpoint: str | None = None) -> "IIDTree":
    mask_format = options.str("mask_format", "png", MASK_FORMATS)
    delay = options.float("writeback_delay", 2.0)
    options.finish()
    try:
        iid = IIDFile.open(source)
    except IIDFormatError as exc:
        raise MountError(str(exc)) from None
    except OSError as exc:
        raise MountError(f"{source}: {exc.strerror}") from None
    return IIDTree(source, iid, mask_format, delay, read_only, base)


def invalid(message: str) -> OSError:
    """A write whose content is refused: EINVAL for the writer (the daemon logs the reason)."""
    return OSError(errno.EINVAL, message)


# -- names ------------------------------------------------------------------------------

def readable(raw: bytes, limit: int = NAME_BYTES) -> str:
    """A file-name-safe, unambiguous text for arbitrary bytes: valid UTF-8 stays readable,
    '/', '%', control characters and invalid bytes become %XX."""
    out = []
    for ch in raw.decode("utf-8", errors="surrogateescape"):
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

class EntryFolder(ListedDirectory):
    """One entry (or a new one being made: `entry` is None until it has a mask and an
    entry.json). Its mask and entry.json are views of the entry; other names are
    scratch files (editors' and rsync's temporary files), kept in memory only."""

    def __init__(self, tree: "IIDTree", name: str, entry: Entry | None):
        self.tree = tree
        self.name = name
        self.entry = entry
        self.pending_mask: np.ndarray | None = None
        self.pending_json: dict | None = None
        self.hidden: set[str] = set()             # views removed by rm -r before rmdir
        self.scratch: dict[str, Node] = {}
        self.mtime_ns = time.time_ns()
        self._mask_cache: np.ndarray | None = None
        self.mask_file = tree.add(MaskView(self))
        self.json_file = tree.add(EntryJsonView(self))

    # the entry's content ------------------------------------------------------------
    def mask(self) -> np.ndarray:
        if self.entry is None:
            if self.pending_mask is None:
                raise OSError(errno.ENOENT, "no mask yet")
            return self.pending_mask
        if self._mask_cache is None:
            try:
                self._mask_cache = self.entry.mask()
            except SegmentError as exc:
                raise OSError(errno.EIO, f"entry {self.name}: damaged segment: {exc}") from None
        return self._mask_cache

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
    def set_mask(self, mask: np.ndarray) -> None:
        with self.tree.lock:
            if self.entry is None:
                previous, self.pending_mask = self.pending_mask, mask
                try:
                    self._complete()
                except OSError:
                    self.pending_mask = previous       # a refused write changes nothing
                    raise
                return
            bbox = place(mask, list(self.entry.bbox[:2]))
            segment, area = encode_segment(mask, bbox)
            self.entry = Entry(self.entry.domain, self.entry.address, bbox, area, segment)
            self._mask_cache = mask
            self.tree.changed()

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
                return
            mask = self.mask()
            bbox = place(mask, wanted["bbox"])
            segment = self.entry.segment
            if bbox != self.entry.bbox:            # moved: regions carry absolute coordinates
                segment, _ = encode_segment(mask, bbox)
            self.entry = Entry(wanted["domain"], wanted["address"], bbox, self.entry.area, segment)
            if wanted["groups"] is not None:
                self.tree.set_groups_of(self, wanted["groups"])
            self.tree.changed()

    def _complete(self) -> None:
        """A new folder becomes an entry once it has both a mask and an entry.json."""
        if self.pending_mask is None or self.pending_json is None:
            return
        wanted, mask = self.pending_json, self.pending_mask
        bbox = place(mask, wanted["bbox"])
        segment, area = encode_segment(mask, bbox)
        self.entry = Entry(wanted["domain"], wanted["address"] or b"", bbox, area, segment)
        self._mask_cache = mask
        self.pending_mask = self.pending_json = None
        if wanted["groups"]:
            self.tree.set_groups_of(self, wanted["groups"])
        self.tree.changed()

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

    def _view_for(self, name: str) -> File | None:
        if name == self.tree.mask_name:
            return self.mask_file
        return self.json_file if name == "entry.json" else None

    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            view = self._view_for(name)
            if view is not None:
                self.hidden.discard(name)
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
                self.hidden.add(name)          # rm -r: the entry goes with its folder
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
                self.hidden.discard(new_name)
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


class MaskView(View):
    def content(self) -> bytes:
        return self.owner.tree.encode_mask(self.owner.mask())

    def commit(self, data: bytes) -> None:
        self.owner.set_mask(decode_mask(data))


class EntryJsonView(View):
    def content(self) -> bytes:
        return (json.dumps(self.owner.describe(), indent=2, ensure_ascii=False) + "\n").encode()

    def commit(self, data: bytes) -> None:
        self.owner.set_json(data)


class MetaView(View):
    def content(self) -> bytes:
        return (json.dumps(self.owner.meta, indent=2, ensure_ascii=False) + "\n").encode()

    def commit(self, data: bytes) -> None:
        try:
            meta = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid(f"meta.json is not JSON: {exc}") from None
        with self.owner.lock:
            self.owner.meta = meta
            self.owner.changed()


class RootFolder(ListedDirectory):
    """Fixed items, then the entry folders; `mkdir` makes a new entry folder."""

    def __init__(self, tree: "IIDTree"):
        self.tree = tree
        self._cached: tuple[int, list] | None = None

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.tree.mtime_ns, 4)

    def listing(self) -> list[tuple[str, Node]]:
        """Made once per change of the folder set, not once per readdir batch."""
        with self.tree.lock:
            if self._cached is None or self._cached[0] != self.tree.folders_version:
                listing = list(self.tree.fixed.items()) + [(f.name, f) for f in self.tree.folders]
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


class GroupsFolder(ListedDirectory):
    def __init__(self, tree: "IIDTree"):
        self.tree = tree

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.tree.mtime_ns, 2)

    def listing(self):
        with self.tree.lock:
            return [(readable(g.encode(), 240), self.tree.group_folder(g)) for g in self.tree.groups]

    def lookup(self, name: str):
        with self.tree.lock:
            for group in self.tree.groups:
                if readable(group.encode(), 240) == name:
                    return self.tree.group_folder(group)
        return None

    def mkdir(self, name: str, mode: int) -> Directory:
        group = unreadable(name).decode("utf-8", errors="replace")
        with self.tree.lock:
            if group in self.tree.groups or self.lookup(name) is not None:
                raise FileExistsError(errno.EEXIST, "group exists", name)
            self.tree.groups[group] = []
            self.tree.changed()
            return self.tree.group_folder(group)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            node = self.lookup(name)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such group", name)
            group = node.group
            if self.tree.groups[group]:
                raise OSError(errno.ENOTEMPTY, "group has members", name)
            del self.tree.groups[group]
            self.tree.changed()


class GroupFolder(ListedDirectory):
    """Members as links to their entry folders; `ln -s` adds one, `rm` removes one."""

    def __init__(self, tree: "IIDTree", group: str):
        self.tree = tree
        self.group = group

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, self.tree.mtime_ns, 2)

    def _members(self) -> list[EntryFolder]:
        with self.tree.lock:
            return list(self.tree.groups.get(self.group, []))

    def listing(self):
        return [(f.name, self.tree.link_to(f, 2)) for f in self._members()]

    def lookup(self, name: str):
        folder = self.tree.folder_by_name.get(name)
        return self.tree.link_to(folder, 2) if folder in self._members() else None

    def symlink(self, name: str, target: str) -> Symlink:
        folder = self.tree.folder_by_name.get(os.path.basename(target.rstrip("/")))
        if folder is None or folder.entry is None:
            raise invalid(f"group link {name} -> {target}: the target is not an entry folder of this file")
        with self.tree.lock:
            members = self.tree.groups[self.group]
            if folder not in members:
                members.append(folder)
                self.tree.changed()
        return self.tree.link_to(folder, 2)

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            folder = self.tree.folder_by_name.get(name)
            members = self.tree.groups.get(self.group, [])
            if folder not in members:
                raise FileNotFoundError(errno.ENOENT, "not a member", name)
            members.remove(folder)
            self.tree.changed()


class ByAddressFolder(ListedDirectory):
    def __init__(self, tree: "IIDTree"):
        self.tree = tree
        self._cached: tuple[int, dict] | None = None

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.tree.mtime_ns, 2)

    def _addresses(self) -> dict[str, list[EntryFolder]]:
        with self.tree.lock:
            if self._cached is None or self._cached[0] != self.tree.version:
                found: dict[str, list[EntryFolder]] = {}
                for f in self.tree.folders:
                    if f.entry is not None:
                        found.setdefault(readable(f.entry.address, 240) or "%empty", []).append(f)
                self._cached = (self.tree.version, found)
            return self._cached[1]

    def listing(self):
        return [(name, self.tree.address_folder(name)) for name in sorted(self._addresses())]

    def lookup(self, name: str):
        return self.tree.address_folder(name) if name in self._addresses() else None


class AddressFolder(ListedDirectory):
    def __init__(self, parent: ByAddressFolder, name: str):
        self.parent = parent
        self.name = name

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.parent.tree.mtime_ns, 2)

    def listing(self):
        return [(f.name, self.parent.tree.link_to(f, 2)) for f in self.parent._addresses().get(self.name, [])]

    def lookup(self, name: str):
        for f in self.parent._addresses().get(self.name, []):
            if f.name == name:
                return self.parent.tree.link_to(f, 2)
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

    def __init__(self, path: str, iid: IIDFile, mask_format: str, writeback_delay: float, read_only: bool,
                 base: int = ROOT_INO):
        super().__init__(base)
        self.path = os.path.abspath(path)
        self.iid = iid
        self.writable = not read_only
        self.cache_policy = (CachePolicy() if read_only else
                             CachePolicy(entry_timeout=1.0, attr_timeout=0.0, negative_timeout=0.0,
                                         keep_cache=False))
        self.lock = threading.RLock()
        self.mask_format = make_format(mask_format)
        self.mask_name = "mask" + self.mask_format.extension_for((1, 1))
        self.writeback_delay = writeback_delay
        self.mtime_ns = os.stat(path).st_mtime_ns
        self.meta = iid.meta
        self.version = 0              # bumped by every change
        self.folders_version = 0      # bumped when folders come or go
        self._synced = 0               # the version last written
        self._last_change = 0.0
        self.writebacks = 0
        self.add(RootFolder(self))
        self.folders: list[EntryFolder] = []
        self.folder_by_name: dict[str, EntryFolder] = {}
        for key, entry in enumerate(iid.entries):
            self._register(EntryFolder(self, entry_folder_name(key, entry.address), entry))
        self.groups: dict[str, list[EntryFolder]] = {
            name: [self.folders[k] for k in dict.fromkeys(keys)] for name, keys in iid.groups.items()}
        self._group_nodes: dict[str, GroupFolder] = {}
        self._links: dict[tuple[int, int], Symlink] = {}
        self._address_nodes: dict[str, AddressFolder] = {}
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
        # in the background so that the first `ls -l` need not wait
        threading.Thread(target=self.fixed["overview.png"].attr, daemon=True, name="overview-size").start()

    # folders and keys --------------------------------------------------------------
    def _register(self, folder: EntryFolder) -> None:
        self.add(folder)
        self.folders.append(folder)
        self.folder_by_name[folder.name] = folder
        self.folders_version += 1

    def new_folder(self, name: str) -> EntryFolder:
        folder = EntryFolder(self, name, None)
        self._register(folder)
        return folder

    def delete_folder(self, folder: EntryFolder) -> None:
        self.folders.remove(folder)
        del self.folder_by_name[folder.name]
        self.folders_version += 1
        for members in self.groups.values():
            if folder in members:
                members.remove(folder)
        for node in (folder, folder.mask_file, folder.json_file):
            self.discard(node.ino)
        if folder.entry is not None:
            self.changed()

    def live(self) -> list[EntryFolder]:
        return [f for f in self.folders if f.entry is not None]

    def key_of(self, folder: EntryFolder) -> int:
        """The key the entry has in the file as it will be written next."""
        with self.lock:
            return self.live().index(folder)

    def groups_of(self, folder: EntryFolder) -> list[str]:
        return [g for g, members in self.groups.items() if folder in members]

    def set_groups_of(self, folder: EntryFolder, names: list[str]) -> None:
        for group in names:
            self.groups.setdefault(group, [])
        for group, members in self.groups.items():
            if group in names and folder not in members:
                members.append(folder)
            elif group not in names and folder in members:
                members.remove(folder)

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

    def link_to(self, folder: EntryFolder, depth: int) -> Symlink:
        with self.lock:
            key = (id(folder), depth)
            node = self._links.get(key)
            if node is None:
                node = self._links[key] = self.add(Symlink("../" * depth + folder.name, folder.mtime_ns))
            return node

    def encode_mask(self, mask: np.ndarray) -> bytes:
        if self.mask_format.name == "npy":
            return self.mask_format.encode(mask)
        return self.mask_format.encode(mask.astype(np.uint8) * 255)

    # write-back --------------------------------------------------------------------
    def changed(self) -> None:
        self.version += 1
        self._last_change = time.monotonic()
        self.mtime_ns = time.time_ns()

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
                    folder.entry = fresh.entries[k]
            self._synced = version
        old, self.iid = self.iid, fresh
        old.close()

    def status(self) -> dict:
        with self.lock:
            return {"entries": len(self.live()), "pending_changes": self.version != self._synced,
                    "writebacks": self.writebacks}

    def close(self) -> None:
        if self.writable:
            self.sync()
        self.iid.close()


class OverviewFile(File):
    """Every mask in its own colour on the image plane (later keys drawn on top), scaled
    down to at most OVERVIEW_SIDE pixels on its long side: a picture to look at, not data."""

    OVERVIEW_SIDE = 2048

    def __init__(self, tree: IIDTree):
        self.tree = tree
        self._cache: tuple[int, bytes] | None = None
        self._png = make_format("png")

    def _plane(self) -> tuple[tuple[int, int], float]:
        with self.tree.lock:
            live = self.tree.live()
            h = max([f.entry.bbox[2] for f in live], default=0) or 1
            w = max([f.entry.bbox[3] for f in live], default=0) or 1
        scale = min(1.0, self.OVERVIEW_SIDE / max(h, w))
        return (max(1, round(h * scale)), max(1, round(w * scale))), scale

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
                mask = folder.mask()
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

    def open(self, flags: int) -> FileHandle:
        return BytesHandle(self.content())
