"""Two directory trees shown as one: a read-only *static* root under a writable *overlay*.

The rules follow Linux overlayfs, with fuse-overlayfs's on-disk conventions:
- directories present in both are merged; on a name clash the overlay wins;
- creates, writes, mkdir, truncate, chmod and utimens go to the overlay; changing a file
  that exists only in the static root first copies it up atomically (a temporary file in
  the overlay, content and mode preserved, renamed into place);
- deleting something the static root has leaves a whiteout `.wh.<name>` in the overlay;
  a directory removed and made again is marked opaque (`.wh..wh..opq`), so the static
  directory's old entries stay hidden;
- renaming a directory that exists in the static root gives EXDEV (tools then copy);
  renaming a file copies it up and whites out the old name;
- hard links only between files that live in the overlay (else EXDEV).
The static root is never written. Names of the form `.wh.*` are internal and not listed.
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import threading
import time
from collections import OrderedDict

from .nodes import Attr, CachePolicy, Directory, File, FileHandle, Node, Symlink, Tree
from .roots import LocalRoot, ScanAhead, SiblingWarmer

WHITEOUT = ".wh."
IDLE_NODES = 100_000        # nodes the kernel forgot that are kept for a walk done again
OPAQUE = ".wh..wh..opq"


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _internal(name: str) -> bool:
    return name.startswith(WHITEOUT)


class OverlayTree(Tree):
    """The merged view; nodes are numbered per path for the life of the mount."""

    def __init__(self, static, upper, read_only: bool = False):
        super().__init__()
        self.static = static
        self.upper = upper
        self.writable = not read_only
        self.local = isinstance(static, LocalRoot) and isinstance(upper, LocalRoot)
        self.cache_policy = CachePolicy(entry_timeout=1.0, attr_timeout=1.0 if self.local else 5.0,
                                        negative_timeout=0.0, keep_cache=True)
        self.lock = threading.RLock()
        self._by_path: dict[str, Node] = {}
        self._idle: OrderedDict[int, Node] = OrderedDict()      # forgotten by the kernel, kept a while
        self.extra: dict[str, Node] = {}      # virtual files at the root (copick_config.json)
        # derived read-only files: derive(dir rel, names) -> [(name, source rel, make node)]
        self.derive = None
        self._derived: dict[str, Node] = {}
        # imports(dir rel, name) -> a node that converts what is written to it, for a new
        # name that is an import (copick picks or tomograms in other formats), else None
        self.imports = None
        self._visible: dict[str, bool] = {}     # static visibility of directories, until a write
        self.scan_ahead = ScanAhead(static, threads=2 if isinstance(static, LocalRoot) else 8,
                                    horizon=self.cache_policy.attr_timeout)
        # only local roots have lookups answered from the kernel's caches (shown_nowait)
        self.warmer = SiblingWarmer(static) if self.local and static.local_storage else None
        self.add(MergedDir(self, ""))
        self.root.kind = stat.S_IFDIR
        self._by_path[""] = self.root

    # -- resolving ------------------------------------------------------------------------
    def static_visible(self, rel: str) -> bool:
        """Whether the static root's entry at rel shows: no whiteout for it and no opaque
        directory or whiteout on the way down (remembered per parent until a write)."""
        if not rel:
            return True
        parent, _, name = rel.rpartition("/")
        seen = self._visible.get(parent)
        if seen is None:
            seen = self._visible[parent] = (self.static_visible(parent)
                                            and self.upper.stat(_join(parent, OPAQUE)) is None)
        return seen and self.upper.stat(_join(parent, WHITEOUT + name)) is None

    def changed(self) -> None:
        """Whiteouts or opaque markers may have changed: forget visibility."""
        self._visible.clear()

    def layers(self, rel: str) -> tuple[Attr | None, Attr | None]:
        """(overlay info, static info) of what rel shows; static is None if hidden."""
        up = self.upper.stat(rel)
        st = self.static.stat(rel) if self.static_visible(rel) else None
        return up, st

    def top(self, rel: str):
        """The root whose copy of rel shows, and its info (the static root is not asked
        when the overlay has rel)."""
        up = self.upper.stat(rel)
        if up is not None:
            return self.upper, up
        st = self.static.stat(rel) if self.static_visible(rel) else None
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "gone", rel)
        return self.static, st

    def _static_visible_cached(self, rel: str) -> bool:
        """Whether the static entry at rel shows, if known without I/O (else False)."""
        parent, _, name = rel.rpartition("/")
        return bool(self._visible.get(parent)) and self.upper.exists_cached(_join(parent, WHITEOUT + name)) is False

    def _cached_top(self, rel: str, ask):
        """ask(root, rel) of the root whose rel shows, if the kernel's lookup cache tells
        which without I/O (local roots); None if it cannot, or if rel is missing."""
        if not self.local:
            return None
        try:
            return ask(self.upper, rel)
        except (FileNotFoundError, NotADirectoryError):
            pass
        if self._static_visible_cached(rel):
            try:
                return ask(self.static, rel)
            except (FileNotFoundError, NotADirectoryError):
                pass
        return None

    def open_read_nowait(self, rel: str) -> FileHandle | None:
        """A read handle of what rel shows, if finding it needs no I/O."""
        return self._cached_top(rel, LocalRoot.open_read_cached)

    def shown_nowait(self, rel: str) -> Attr | None:
        """What rel shows, if known without I/O; None if not known, or missing."""
        return self._cached_top(rel, LocalRoot.stat_cached)

    def shown(self, rel: str) -> Attr | None:
        try:
            return self.top(rel)[1]
        except FileNotFoundError:
            return None

    def node_at(self, rel: str) -> Node | None:
        info = self.shown(rel)
        return None if info is None else self.node_for(rel, info.mode)

    def node_for(self, rel: str, mode: int, wait: bool = True) -> Node | None:
        """The node of rel, which shows an entry of this type (a new node if it changed).
        Making one takes the tree's lock: without `wait`, None if a change holds it."""
        kind = stat.S_IFMT(mode)
        node = self._by_path.get(rel)
        if node is not None and node.kind == kind:
            return node
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            node = self._by_path.get(rel)
            if node is not None and node.kind == kind:
                return node
            cls = MergedDir if kind == stat.S_IFDIR else MergedLink if kind == stat.S_IFLNK else MergedFile
            node = self.add(cls(self, rel))
            node.kind = kind
            self._by_path[rel] = node
            return node
        finally:
            self.lock.release()

    def _names(self, rel: str) -> tuple[list[str], set[str] | None]:
        """What directory rel shows of each root: (the overlay's names, the static names
        the overlay hides, or None if it hides the whole static directory). Whiteouts and
        opaqueness come from the overlay's listing."""
        upper_names = self.upper.listdir(rel)
        upper = [n for n in upper_names or [] if not _internal(n)]
        if upper_names is None:
            static_shows = self.upper.stat(rel) is None          # an overlay file hides a static dir
        else:
            static_shows = OPAQUE not in upper_names
        if not (static_shows and self.static_visible(rel)):
            return upper, None
        return upper, set(upper).union(n[len(WHITEOUT):] for n in upper_names or [] if n.startswith(WHITEOUT))

    def listing(self, rel: str) -> list[str]:
        upper, hidden = self._names(rel)
        if hidden is None:
            return sorted(upper)
        return sorted(upper + [n for n in self.static.listdir(rel) or [] if n not in hidden and not _internal(n)])

    def scan(self, rel: str) -> list[tuple[str, Attr]]:
        """The listing with what each name shows: one stat per name, in the root that shows
        it (the static root's side may have been scanned ahead)."""
        upper, hidden = self._names(rel)
        found = list(zip(upper, self.upper.stat_many(rel, upper)))
        if hidden is not None:
            ahead = self.scan_ahead.take(rel)
            if ahead is None:
                names = [n for n in self.static.listdir(rel) or [] if n not in hidden and not _internal(n)]
                found += zip(names, self.static.stat_many(rel, names))
            else:
                found += [(n, info) for n, info in ahead.items() if n not in hidden and not _internal(n)]
        return sorted((name, info) for name, info in found if info is not None)

    # -- writing into the overlay -----------------------------------------------------
    def ensure_upper_dir(self, rel: str) -> None:
        """The overlay gets the directories on the way to rel (modes from the static root)."""
        if not rel:
            return
        up = self.upper.stat(rel)
        if up is not None and stat.S_ISDIR(up.mode):
            return
        self.ensure_upper_dir(rel.rpartition("/")[0])
        st = self.static.stat(rel)
        self.upper.mkdir(rel, stat.S_IMODE(st.mode) if st else 0o755, st.mtime_ns if st else None)

    def copy_up(self, rel: str) -> None:
        """A static-only file or link, copied into the overlay atomically (FileNotFoundError
        if rel shows nothing)."""
        root, st = self.top(rel)
        if root is self.upper:
            return
        self.ensure_upper_dir(rel.rpartition("/")[0])
        if stat.S_ISDIR(st.mode):
            self.ensure_upper_dir(rel)
        else:
            self.upper.copy_in(self.static, rel, st)

    def whiteout(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        self.ensure_upper_dir(parent)
        self.upper.touch(_join(parent, WHITEOUT + name))
        self.changed()

    def clear_whiteout(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        marker = _join(parent, WHITEOUT + name)
        if self.upper.stat(marker) is not None:
            self.upper.unlink(marker)
            self.changed()
            return True
        return False

    def derived(self, rel: str, infos: dict[str, Attr]) -> list[tuple[str, Node]]:
        """The derived files of a directory (never shadowing a real name), given what its
        entries show."""
        if self.derive is None:
            return []
        return [(name, self._derived_node(rel, name, source, make, infos.get(source.rpartition("/")[2])))
                for name, source, make in self.derive.listing(rel, list(infos)) if name not in infos]

    def derived_lookup(self, rel: str, name: str) -> Node | None:
        """One derived file by name: only its own source is looked at."""
        if self.derive is None:
            return None
        found = self.derive.lookup(rel, name)
        if found is None or self.node_at(found[0]) is None:
            return None
        return self._derived_node(rel, name, *found)

    def _derived_node(self, rel: str, name: str, source: str, make, info: Attr | None = None) -> Node:
        path = _join(rel, name)
        key = self.source_key(source, info)
        with self.lock:
            node = self._derived.get(path)
            if node is None or node.source_key != key:
                node = self._derived[path] = self.add(make())
                node.source_key, node.derived_path = key, path
            return node

    def source_key(self, rel: str, info: Attr | None = None):
        """What a derived file's content depends on: its source's path, size and time."""
        info = info or self.shown(rel)
        return (rel, info.size, info.mtime_ns) if info else (rel, None, None)

    def _subtree(self, rel: str) -> list[str]:
        """The known paths at and under rel (only a directory makes a walk of the table)."""
        node = self._by_path.get(rel)
        if node is None or node.kind != stat.S_IFDIR:
            return [rel] if node is not None else []
        return [p for p in list(self._by_path) if p == rel or p.startswith(rel + "/")]

    def forget_subtree(self, rel: str) -> None:
        with self.lock:
            for path in self._subtree(rel):
                self.discard(self._by_path.pop(path).ino)

    def move_subtree(self, old: str, new: str) -> None:
        with self.lock:
            self.forget_subtree(new)
            for path in self._subtree(old):
                node = self._by_path.pop(path)
                node.rel = new + path[len(old):]
                self._by_path[node.rel] = node

    def forget(self, ino: int) -> None:
        """The kernel let go of ino. Its node waits among the IDLE_NODES most recently
        forgotten (a walk done again reuses them), then goes: a walk over millions of
        files keeps no table of them. This runs in the trio thread, so it takes no lock
        that a copy-up may hold: each step is one dict operation (at worst a path gets
        a second node)."""
        node = self.get(ino)
        if node is None or not getattr(node, "rel", getattr(node, "derived_path", None)):
            return                                   # the root, the virtual config
        self._idle[ino] = node
        while len(self._idle) > IDLE_NODES:
            old_ino, old = self._idle.popitem(last=False)
            path = old.rel if isinstance(old, MergedNode) else old.derived_path
            table = self._by_path if isinstance(old, MergedNode) else self._derived
            if table.get(path) is old:
                table.pop(path, None)
            self.discard(old_ino)

    def adopt(self, node: Node) -> None:
        if self._idle.pop(node.ino, None) is not None:
            return                                   # still here: the kernel knows it again
        if self.get(node.ino) is not node:           # let go while a lookup was finding it
            self.alias(node.ino, node)
            if isinstance(node, MergedNode):
                self._by_path.setdefault(node.rel, node)

    def status(self) -> dict:
        return {"static": self.static.describe(), "overlay": self.upper.describe(), "nodes": len(self._by_path), "nodes_forgotten_kept": len(self._idle),
                "listings_scanned_ahead": {"used": self.scan_ahead.used, "unused": self.scan_ahead.unused},
                "directories_warmed": self.warmer.warmed if self.warmer else 0}


class MergedNode(Node):
    __slots__ = ("tree", "rel", "kind", "ino")

    def __init__(self, tree: OverlayTree, rel: str):
        self.tree = tree
        self.rel = rel

    def attr(self) -> Attr:
        return self.tree.top(self.rel)[1]

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None) -> None:
        with self.tree.lock:
            self.tree.copy_up(self.rel)
            if mode is not None:
                self.tree.upper.chmod(self.rel, mode)
            if mtime_ns is not None:
                self.tree.upper.utime(self.rel, mtime_ns)


class MergedLink(MergedNode, Symlink):
    @property
    def target(self) -> str:
        root, _ = self.tree.top(self.rel)
        return root.readlink(self.rel)


class MergedFile(MergedNode, File):
    __slots__ = ()

    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            root, _ = self.tree.top(self.rel)
            return root.open_read(self.rel)
        with self.tree.lock:
            self.tree.copy_up(self.rel)
        return self.tree.upper.open_write(self.rel, flags)

    def open_nowait(self, flags: int) -> FileHandle | None:
        if (flags & os.O_ACCMODE) != os.O_RDONLY:
            return None
        return self.tree.open_read_nowait(self.rel)

    def truncate(self, size: int) -> None:
        with self.tree.lock:
            self.tree.copy_up(self.rel)
        self.tree.upper.truncate(self.rel, size)

def _changes_entries(method):
    """A change of a directory's entries changes its mtime (and nlink): they are learnt
    again at once, for it and for any other directory the change involved (a rename's
    target), so the kernel's next getattr of it, which default_permissions makes it send
    after every create, is answered without a worker thread."""
    @functools.wraps(method)
    def changing(self, *args):
        try:
            return method(self, *args)
        finally:
            for directory in {self, *(a for a in args if isinstance(a, MergedDir))}:
                directory.learn_attr()
    return changing


class MergedDir(MergedNode, Directory):
    __slots__ = ("_pass", "_known")

    def __init__(self, tree: OverlayTree, rel: str):
        super().__init__(tree, rel)
        self._pass: list | None = None
        self._known: tuple[float, Attr] | None = None       # (when, attributes) after a change

    def learn_attr(self) -> None:
        try:
            self._known = (time.monotonic(), self.tree.top(self.rel)[1])
        except OSError:
            self._known = None

    def cached_attr(self) -> Attr | None:
        known = self._known
        if known is not None and time.monotonic() - known[0] < self.tree.cache_policy.attr_timeout:
            return known[1]
        return None

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None) -> None:
        self._known = None
        super().set_attr(mode, mtime_ns)

    def entries(self, offset: int):
        """A readdir pass lists the directory once (at offset 0) and continues from that
        list, as overlayfs does per open directory."""
        if offset == 0 or self._pass is None:
            self._pass = self._scan()
        return iter(self._pass[offset:])

    def _scan(self) -> list[tuple[int, str, Node, Attr | None]]:
        extra = self.tree.extra if not self.rel else {}
        infos = dict(self.tree.scan(self.rel))
        node_for, prefix = self.tree.node_for, self.rel + "/" if self.rel else ""
        found = [(name, node, None) for name, node in sorted(extra.items())]
        found += [(name, node_for(prefix + name, info.mode), info) for name, info in infos.items() if name not in extra]
        found += [(name, node, None) for name, node in self.tree.derived(self.rel, infos)]
        self.tree.scan_ahead.plan([prefix + name for name, info in infos.items() if stat.S_ISDIR(info.mode)])
        return [(pos, *entry) for pos, entry in enumerate(found, 1)]

    def _merged(self, name: str) -> str | None:
        """The path of name if the two roots decide what it shows (not a virtual file at
        the root, an internal name, or . and ..)."""
        if not self.rel and name in self.tree.extra or _internal(name) or name in (".", ".."):
            return None
        return _join(self.rel, name)

    def _unmerged(self, name: str, rel: str | None) -> Node | None:
        """What name shows when the two roots show nothing there: a virtual file at the
        root, or a derived view (rel is `_merged(name)`)."""
        if rel is None:
            return None if self.rel else self.tree.extra.get(name)
        return self.tree.derived_lookup(self.rel, name)

    def lookup_attr(self, name: str):
        rel = self._merged(name)
        if rel is not None and self.tree.warmer is not None:
            self.tree.warmer.missed(self.rel)             # the kernel's caches could not answer
        info = None if rel is None else self.tree.shown(rel)
        if info is not None:
            return self.tree.node_for(rel, info.mode), info
        node = self._unmerged(name, rel)                 # the roots were asked once, above
        return None if node is None else (node, node.attr())

    def lookup_attr_nowait(self, name: str):
        rel = self._merged(name)
        info = None if rel is None else self.tree.shown_nowait(rel)
        node = None if info is None else self.tree.node_for(rel, info.mode, wait=False)
        return None if node is None else (node, info)

    def lookup(self, name: str):
        rel = self._merged(name)
        return (rel is not None and self.tree.node_at(rel)) or self._unmerged(name, rel)

    def _new_name(self, name: str) -> tuple[str, bool]:
        """Before making `name`: refuse it if taken; the overlay gets this directory and
        loses the name's whiteout (True if there was one)."""
        if self.lookup(name) is not None:
            raise FileExistsError(errno.EEXIST, "exists", name)
        rel = _join(self.rel, name)
        self.tree.ensure_upper_dir(self.rel)
        return rel, self.tree.clear_whiteout(rel)

    @_changes_entries
    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            rel, _ = self._new_name(name)
            imported = self.tree.imports and self.tree.imports(self.rel, name)
            if imported:
                return imported
            self.tree.upper.create(rel, mode)
            return self.tree.node_at(rel)

    @_changes_entries
    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            rel, was_deleted = self._new_name(name)
            self.tree.upper.mkdir(rel, mode)
            if was_deleted and self.tree.static.stat(rel) is not None:
                self.tree.upper.touch(_join(rel, OPAQUE))
                self.tree.changed()
            return self.tree.node_at(rel)

    @_changes_entries
    def symlink(self, name: str, target: str) -> Symlink:
        with self.tree.lock:
            rel, _ = self._new_name(name)
            self.tree.upper.symlink(target, rel)
            return self.tree.node_at(rel)

    @_changes_entries
    def link(self, name: str, target: Node) -> Node:
        with self.tree.lock:
            if not isinstance(target, MergedFile):
                raise OSError(errno.EPERM, "only files are linked", name)
            up, _ = self.tree.layers(target.rel)
            if up is None:
                raise OSError(errno.EXDEV, "hard links only between files that live in the overlay", name)
            rel, _ = self._new_name(name)
            self.tree.upper.link(target.rel, rel)
            return self.tree.node_at(rel)

    @_changes_entries
    def unlink(self, name: str) -> None:
        rel = _join(self.rel, name)
        with self.tree.lock:
            up, st = self.tree.layers(rel)
            if up is None and st is None and rel in self.tree._derived:
                return              # a derived view: nothing to delete, it goes with its source
            if up is None and st is None or (up or st) and stat.S_ISDIR((up or st).mode):
                raise OSError(errno.EISDIR if (up or st) else errno.ENOENT, "cannot unlink", name)
            if up is not None:
                self.tree.upper.unlink(rel)
            if st is not None:
                self.tree.whiteout(rel)
            self.tree.forget_subtree(rel)

    @_changes_entries
    def rmdir(self, name: str) -> None:
        rel = _join(self.rel, name)
        with self.tree.lock:
            up, st = self.tree.layers(rel)
            if up is None and st is None:
                raise FileNotFoundError(errno.ENOENT, "no such directory", name)
            if not stat.S_ISDIR((up or st).mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
            if self.tree.listing(rel):
                raise OSError(errno.ENOTEMPTY, "directory not empty", name)
            if up is not None:
                self.tree.upper.rmtree(rel)                   # holds only whiteouts by now
                self.tree.changed()
            if st is not None:
                self.tree.whiteout(rel)
            self.tree.forget_subtree(rel)

    @_changes_entries
    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        if not isinstance(new_parent, MergedDir):
            raise OSError(errno.EXDEV, "cross-device", new_name)
        old, new = _join(self.rel, name), _join(new_parent.rel, new_name)
        with self.tree.lock:
            up, st = self.tree.layers(old)
            if up is None and st is None and old in self.tree._derived:
                # a derived view moved (mv copying a tree): a real file with its content,
                # unless the target is the same view of the moved source already
                existing = new_parent.lookup(new_name)
                if existing is not None and existing is self.tree._derived.get(new):
                    return
                data = self.tree._derived[old].open(os.O_RDONLY).read(0, 1 << 62)
                new_parent.create(new_name, 0o644)
                handle = self.tree.upper.open_write(new, os.O_WRONLY)
                try:
                    handle.write(0, data)
                    handle.flush()
                finally:
                    handle.release()
                return
            if up is None and st is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", name)
            if stat.S_ISDIR((up or st).mode) and st is not None:
                raise OSError(errno.EXDEV, "a directory of the static root moves by copying", name)
            target_up, target_st = self.tree.layers(new)
            target, source_is_dir = target_up or target_st, stat.S_ISDIR((up or st).mode)
            if target is not None:
                if stat.S_ISDIR(target.mode) and not source_is_dir:
                    raise IsADirectoryError(errno.EISDIR, "target is a directory", new_name)
                if source_is_dir and not stat.S_ISDIR(target.mode):
                    raise NotADirectoryError(errno.ENOTDIR, "target is not a directory", new_name)
                if stat.S_ISDIR(target.mode) and self.tree.listing(new):
                    raise OSError(errno.ENOTEMPTY, "target directory not empty", new_name)
            self.tree.copy_up(old)
            self.tree.ensure_upper_dir(new_parent.rel)
            self.tree.clear_whiteout(new)
            self.tree.upper.rename(old, new)
            self.tree.changed()
            if st is not None:
                self.tree.whiteout(old)
            self.tree.move_subtree(old, new)
