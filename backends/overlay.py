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
import os
import shutil
import stat
import threading
import time

from .nodes import (Attr, CachePolicy, Directory, File, FileHandle, ListedDirectory, Node, OSFileHandle, Symlink,
                    Tree)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
COPYUP = ".wh.scopefs-copyup."       # a temporary name that is internal by construction


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _internal(name: str) -> bool:
    return name.startswith(WHITEOUT)


class OverlayTree(Tree):
    """The merged view; nodes are numbered per path for the life of the mount."""

    def __init__(self, static: str, overlay: str, read_only: bool = False):
        super().__init__()
        self.static = os.path.abspath(static)
        self.upper = os.path.abspath(overlay)
        self.writable = not read_only
        self.cache_policy = CachePolicy(entry_timeout=1.0, attr_timeout=1.0, negative_timeout=0.0,
                                        keep_cache=True)
        self.lock = threading.RLock()
        self._by_path: dict[str, Node] = {}
        self.extra: dict[str, Node] = {}      # virtual files at the root (copick_config.json)
        self.add(MergedDir(self, ""))
        self._by_path[""] = self.root

    # -- resolving ------------------------------------------------------------------------
    def s_path(self, rel: str) -> str:
        return os.path.join(self.static, rel) if rel else self.static

    def u_path(self, rel: str) -> str:
        return os.path.join(self.upper, rel) if rel else self.upper

    def opaque(self, rel: str) -> bool:
        return os.path.exists(os.path.join(self.u_path(rel), OPAQUE))

    def static_visible(self, rel: str) -> bool:
        """Whether the static root's entry at rel shows: no whiteout for it and no opaque
        directory or whiteout on the way down."""
        parts = rel.split("/") if rel else []
        for i, name in enumerate(parts):
            parent = "/".join(parts[:i])
            if os.path.lexists(os.path.join(self.u_path(parent), WHITEOUT + name)) or self.opaque(parent):
                return False
        return True

    def layers(self, rel: str) -> tuple[os.stat_result | None, os.stat_result | None]:
        """(overlay stat, static stat) of what rel shows; static is None if hidden."""
        up = _lstat(self.u_path(rel))
        st = _lstat(self.s_path(rel)) if self.static_visible(rel) else None
        return up, st

    def node_at(self, rel: str) -> Node | None:
        with self.lock:
            node = self._by_path.get(rel)
            up, st = self.layers(rel)
            top = up or st
            if top is None:
                return None
            kind = stat.S_IFMT(top.st_mode)
            if node is not None and getattr(node, "kind", None) == kind:
                return node
            cls = MergedDir if kind == stat.S_IFDIR else MergedLink if kind == stat.S_IFLNK else MergedFile
            node = self.add(cls(self, rel))
            node.kind = kind
            self._by_path[rel] = node
            return node

    def listing(self, rel: str) -> list[str]:
        up_dir = self.u_path(rel)
        names = set()
        try:
            names.update(n for n in os.listdir(up_dir) if not _internal(n))
            whiteouts = {n[len(WHITEOUT):] for n in os.listdir(up_dir) if n.startswith(WHITEOUT)}
        except (FileNotFoundError, NotADirectoryError):
            whiteouts = set()
        if self.static_visible(rel) and not self.opaque(rel):
            up = _lstat(up_dir)
            if up is None or stat.S_ISDIR(up.st_mode):
                try:
                    names.update(n for n in os.listdir(self.s_path(rel))
                                 if n not in whiteouts and not _internal(n))
                except (FileNotFoundError, NotADirectoryError):
                    pass
        return sorted(names)

    # -- writing into the overlay -----------------------------------------------------
    def ensure_upper_dir(self, rel: str) -> None:
        """The overlay gets the directories on the way to rel (modes from the static root)."""
        if not rel or os.path.isdir(self.u_path(rel)):
            return
        parent = rel.rpartition("/")[0]
        self.ensure_upper_dir(parent)
        st = _lstat(self.s_path(rel))
        os.mkdir(self.u_path(rel), stat.S_IMODE(st.st_mode) if st else 0o755)
        if st:
            os.utime(self.u_path(rel), ns=(st.st_atime_ns, st.st_mtime_ns))

    def copy_up(self, rel: str) -> None:
        """A static-only file or link, copied into the overlay atomically."""
        up, st = self.layers(rel)
        if up is not None:
            return
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", rel)
        parent, _, name = rel.rpartition("/")
        self.ensure_upper_dir(parent)
        if stat.S_ISDIR(st.st_mode):
            self.ensure_upper_dir(rel)
            return
        tmp = os.path.join(self.u_path(parent), f"{COPYUP}{name}.{os.getpid()}.{threading.get_ident()}")
        try:
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(self.s_path(rel)), tmp)
            else:
                shutil.copyfile(self.s_path(rel), tmp)
                shutil.copystat(self.s_path(rel), tmp)
            os.rename(tmp, self.u_path(rel))
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise

    def whiteout(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        self.ensure_upper_dir(parent)
        with open(os.path.join(self.u_path(parent), WHITEOUT + name), "wb"):
            pass

    def clear_whiteout(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        path = os.path.join(self.u_path(parent), WHITEOUT + name)
        if os.path.lexists(path):
            os.unlink(path)
            return True
        return False

    def forget_subtree(self, rel: str) -> None:
        with self.lock:
            for path in [p for p in self._by_path if p == rel or p.startswith(rel + "/")]:
                node = self._by_path.pop(path)
                self.discard(node.ino)

    def move_subtree(self, old: str, new: str) -> None:
        with self.lock:
            self.forget_subtree(new)
            for path in [p for p in self._by_path if p == old or p.startswith(old + "/")]:
                node = self._by_path.pop(path)
                node.rel = new + path[len(old):]
                self._by_path[node.rel] = node


class MergedNode(Node):
    kind = 0

    def __init__(self, tree: OverlayTree, rel: str):
        self.tree = tree
        self.rel = rel

    def _top_path(self) -> str:
        up, st = self.tree.layers(self.rel)
        if up is not None:
            return self.tree.u_path(self.rel)
        if st is not None:
            return self.tree.s_path(self.rel)
        raise FileNotFoundError(errno.ENOENT, "gone", self.rel)

    def attr(self) -> Attr:
        st = os.lstat(self._top_path())
        return Attr(st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None) -> None:
        with self.tree.lock:
            self.tree.copy_up(self.rel)
            path = self.tree.u_path(self.rel)
            if mode is not None:
                os.chmod(path, mode)
            if mtime_ns is not None:
                os.utime(path, ns=(time.time_ns(), mtime_ns), follow_symlinks=False)


class MergedLink(MergedNode, Symlink):
    @property
    def target(self) -> str:
        return os.readlink(self._top_path())


class MergedFile(MergedNode, File):
    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            return OSFileHandle(self._top_path())
        with self.tree.lock:
            self.tree.copy_up(self.rel)
        return UpperFileHandle(self.tree.u_path(self.rel), flags)

    def truncate(self, size: int) -> None:
        with self.tree.lock:
            self.tree.copy_up(self.rel)
        os.truncate(self.tree.u_path(self.rel), size)


class UpperFileHandle(FileHandle):
    """A file in the overlay, written in place (as a local disk would be)."""
    release_blocks = True

    def __init__(self, path: str, flags: int):
        keep = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND
        self.fd = os.open(path, (flags & keep) | os.O_CLOEXEC)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def release(self) -> None:
        os.close(self.fd)


class MergedDir(MergedNode, ListedDirectory):
    def listing(self) -> list[tuple[str, Node]]:
        out = []
        extra = self.tree.extra if not self.rel else {}
        for name in self.tree.listing(self.rel):
            if name in extra:
                continue
            node = self.tree.node_at(_join(self.rel, name))
            if node is not None:
                out.append((name, node))
        return sorted(extra.items()) + out

    def lookup(self, name: str):
        if not self.rel and name in self.tree.extra:
            return self.tree.extra[name]
        if _internal(name) or name in (".", ".."):
            return None
        return self.tree.node_at(_join(self.rel, name))

    def _exists(self, name: str) -> bool:
        return self.lookup(name) is not None

    def create(self, name: str, mode: int) -> File:
        rel = _join(self.rel, name)
        with self.tree.lock:
            if self._exists(name):
                raise FileExistsError(errno.EEXIST, "exists", name)
            self.tree.ensure_upper_dir(self.rel)
            self.tree.clear_whiteout(rel)
            os.close(os.open(self.tree.u_path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             mode & 0o7777))
            return self.tree.node_at(rel)

    def mkdir(self, name: str, mode: int) -> Directory:
        rel = _join(self.rel, name)
        with self.tree.lock:
            if self._exists(name):
                raise FileExistsError(errno.EEXIST, "exists", name)
            self.tree.ensure_upper_dir(self.rel)
            was_deleted = self.tree.clear_whiteout(rel)
            os.mkdir(self.tree.u_path(rel), mode & 0o7777)
            if was_deleted and os.path.lexists(self.tree.s_path(rel)):
                open(os.path.join(self.tree.u_path(rel), OPAQUE), "wb").close()
            return self.tree.node_at(rel)

    def symlink(self, name: str, target: str) -> Symlink:
        rel = _join(self.rel, name)
        with self.tree.lock:
            if self._exists(name):
                raise FileExistsError(errno.EEXIST, "exists", name)
            self.tree.ensure_upper_dir(self.rel)
            self.tree.clear_whiteout(rel)
            os.symlink(target, self.tree.u_path(rel))
            return self.tree.node_at(rel)

    def link(self, name: str, target: Node) -> Node:
        rel = _join(self.rel, name)
        with self.tree.lock:
            if not isinstance(target, MergedFile):
                raise OSError(errno.EPERM, "only files are linked", name)
            up, _ = self.tree.layers(target.rel)
            if up is None:
                raise OSError(errno.EXDEV, "hard links only between files that live in the overlay", name)
            if self._exists(name):
                raise FileExistsError(errno.EEXIST, "exists", name)
            self.tree.ensure_upper_dir(self.rel)
            self.tree.clear_whiteout(rel)
            os.link(self.tree.u_path(target.rel), self.tree.u_path(rel))
            return self.tree.node_at(rel)

    def unlink(self, name: str) -> None:
        rel = _join(self.rel, name)
        with self.tree.lock:
            up, st = self.tree.layers(rel)
            if up is None and st is None or (up or st) and stat.S_ISDIR((up or st).st_mode):
                raise OSError(errno.EISDIR if (up or st) else errno.ENOENT, "cannot unlink", name)
            if up is not None:
                os.unlink(self.tree.u_path(rel))
            if st is not None:
                self.tree.whiteout(rel)
            self.tree.forget_subtree(rel)

    def rmdir(self, name: str) -> None:
        rel = _join(self.rel, name)
        with self.tree.lock:
            up, st = self.tree.layers(rel)
            if up is None and st is None:
                raise FileNotFoundError(errno.ENOENT, "no such directory", name)
            if not stat.S_ISDIR((up or st).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
            if self.tree.listing(rel):
                raise OSError(errno.ENOTEMPTY, "directory not empty", name)
            if up is not None:
                shutil.rmtree(self.tree.u_path(rel))          # holds only whiteouts by now
            if st is not None:
                self.tree.whiteout(rel)
            self.tree.forget_subtree(rel)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        if not isinstance(new_parent, MergedDir):
            raise OSError(errno.EXDEV, "cross-device", new_name)
        old, new = _join(self.rel, name), _join(new_parent.rel, new_name)
        with self.tree.lock:
            up, st = self.tree.layers(old)
            if up is None and st is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", name)
            if stat.S_ISDIR((up or st).st_mode) and st is not None:
                raise OSError(errno.EXDEV, "a directory of the static root moves by copying", name)
            target_up, target_st = self.tree.layers(new)
            target, source_is_dir = target_up or target_st, stat.S_ISDIR((up or st).st_mode)
            if target is not None:
                if stat.S_ISDIR(target.st_mode) and not source_is_dir:
                    raise IsADirectoryError(errno.EISDIR, "target is a directory", new_name)
                if source_is_dir and not stat.S_ISDIR(target.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "target is not a directory", new_name)
                if stat.S_ISDIR(target.st_mode) and self.tree.listing(new):
                    raise OSError(errno.ENOTEMPTY, "target directory not empty", new_name)
            self.tree.copy_up(old)
            self.tree.ensure_upper_dir(new_parent.rel)
            self.tree.clear_whiteout(new)
            os.rename(self.tree.u_path(old), self.tree.u_path(new))
            if st is not None:
                self.tree.whiteout(old)
            self.tree.move_subtree(old, new)
