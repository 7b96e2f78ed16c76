"""The node contract (`backends/nodes.py`) as checks any backend's tree must pass.

Like fsspec's shared `tests/abstract` suite, these checks know nothing of a backend: they
walk a whole tree through the calls the daemon makes (`daemon/fs.py`: `opendir` then
`entries` or `entry_batch` from an offset, `lookup_attr`, `attr`, `open`/`read`/
`release`, and their nowait twins) and check what the daemon relies on. `test_contract.py`
runs them on a tree of every kind. Each check collects every problem it finds and fails
once with all of them, so one run shows the whole picture.

Only the contract is imported here (`Tree`, the node base classes, `Attr`,
`GRAFT_SHIFT`), never a backend's building blocks; the read-only check also drives the
daemon's handlers (`daemon/fs.py`), which refuse changes before any node is asked.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from types import SimpleNamespace

from scopefs.backends.nodes import ABSENT, GRAFT_SHIFT, Attr, Directory, File, Node, Symlink, Tree

#: bytes per read, as the kernel asks for them (larger with read-ahead)
READ_SIZE = 128 * 1024
#: directories with more entries are resumed from a sample of offsets, not every one
RESUME_EVERY_OFFSET_UP_TO = 64
#: names no backend serves (each directory also gets its listed names with a `~` added)
UNKNOWN_NAMES = ("contract-no-such-name", "no such name.png")


def comparable(attr: Attr) -> Attr:
    """An Attr without its access time (a read of a real file may move it)."""
    return attr._replace(atime_ns=None)


def kind_of(node: Node) -> int:
    """The file type the daemon dispatches on (it checks the class, the kernel the mode)."""
    if isinstance(node, Directory):
        return stat.S_IFDIR
    if isinstance(node, File):
        return stat.S_IFREG
    if isinstance(node, Symlink):
        return stat.S_IFLNK
    return 0


@dataclass
class Listed:
    """One entry of a listing, as the daemon gets it."""
    path: str                   # from the root, '/'-separated
    name: str
    parent: Directory
    node: Node
    ino: int
    attr: Attr                  # what the listing gave, else the node's attr()
    listed_attr: Attr | None


@dataclass
class Listing:
    path: str
    directory: Directory
    rows: list                  # (next offset, name, node, attr or None) from offset 0
    batch: list | None          # entry_batch(0, all) if the directory lists that way


@dataclass
class Walk:
    """Every entry of a tree, reached by listing from the root (symbolic links are not
    followed, so a tree that shows a directory under two names is a finding, not a loop)."""
    tree: Tree
    entries: list[Listed] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)
    failed_attrs: list[str] = field(default_factory=list)       # listed entries whose attr() failed
    repeated_dirs: list[str] = field(default_factory=list)      # directories listed under a second name

    @classmethod
    def of(cls, tree: Tree, max_entries: int = 20_000) -> "Walk":
        walk = cls(tree)
        queue: list[tuple[str, Directory]] = [("", tree.root)]
        seen_dirs: dict[int, str] = {tree.root.ino: ""}
        while queue:
            path, directory = queue.pop(0)
            listing = walk._list(path, directory)
            for _, name, node, listed_attr in listing.rows:
                child = f"{path}/{name}" if path else name
                try:
                    attr = listed_attr or node.attr()
                except OSError as exc:
                    walk.failed_attrs.append(f"{child}: attr() failed: {exc}")
                    continue
                walk.entries.append(Listed(child, name, directory, node, node.ino, attr, listed_attr))
                if isinstance(node, Directory):
                    if node.ino in seen_dirs:
                        walk.repeated_dirs.append(f"{child}: directory inode {node.ino} is also "
                                                  f"{seen_dirs[node.ino]!r}")
                        continue
                    seen_dirs[node.ino] = child
                    queue.append((child, node))
            if len(walk.entries) > max_entries:
                raise AssertionError(f"more than {max_entries} entries: use a smaller sample")
        return walk

    def _list(self, path: str, directory: Directory) -> Listing:
        reader = directory.opendir()
        batch = getattr(reader, "entry_batch", None)
        rows_of_batch = batch(0, 1 << 30) if batch is not None else None
        if rows_of_batch is None:
            rows = list(reader.entries(0))
        else:       # the daemon lists these by number: make the nodes as `Tree.get` would
            rows = [(offset, name.decode(), self.tree.get(ino), attr) for offset, name, ino, attr in rows_of_batch]
        listing = Listing(path, directory, rows, rows_of_batch)
        self.listings.append(listing)
        return listing

    def files(self) -> list[Listed]:
        return [e for e in self.entries if isinstance(e.node, File)]

    def inodes(self) -> dict[str, int]:
        return {e.path: e.ino for e in self.entries}


class Problems(list):
    """What a check found; `raise_if_any` fails with all of it (at most 40 lines)."""

    def raise_if_any(self, what: str) -> None:
        if self:
            shown = self[:40] + ([f"... and {len(self) - 40} more"] if len(self) > 40 else [])
            raise AssertionError(f"{what}:\n  " + "\n  ".join(shown))


def read_all(handle, size_hint: int = 0) -> bytes:
    """Read a handle to its end the way the kernel does: READ_SIZE at a time until a
    short read."""
    parts, offset = [], 0
    while True:
        data = bytes(handle.read(offset, READ_SIZE))
        parts.append(data)
        offset += len(data)
        if len(data) < READ_SIZE:
            return b"".join(parts)


def content(node: File) -> bytes:
    handle = node.open(os.O_RDONLY)
    try:
        return read_all(handle)
    finally:
        handle.release()


# -- the checks -------------------------------------------------------------------------

def check_listing_offsets_resume(walk: Walk) -> None:
    """Reading a listing from any offset it gave gives the rest of it, through the same
    open handle and through a new one; offsets are never 0 (the start), never repeat, grow
    and stay below 2**32; names are not repeated; `entry_batch` resumes in any batch size and agrees with
    `entries` where a directory has both."""
    problems = Problems()
    for listing in walk.listings:
        rows, path = listing.rows, listing.path or "/"
        offsets = [row[0] for row in rows]
        if 0 in offsets or len(set(offsets)) != len(offsets):
            problems.append(f"{path}: offsets are 0 or repeat: {offsets[:10]}...")
        if offsets != sorted(offsets) or (offsets and offsets[-1] >> 32):
            problems.append(f"{path}: offsets do not grow, or reach 2**32 (the daemon's listing "
                            f"numbers sit above): {offsets[:10]}...")
        names = [row[1] for row in rows]
        if len(set(names)) != len(names):
            problems.append(f"{path}: names listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        key = [(row[1], row[2].ino) for row in rows]
        positions = range(len(rows))
        if len(rows) > RESUME_EVERY_OFFSET_UP_TO:
            positions = sorted({0, 1, len(rows) // 2, len(rows) - 2, len(rows) - 1})
        if listing.batch is not None:
            batch = listing.batch
            reader = listing.directory.opendir()
            for count in (1, 3):
                chained, offset = [], 0
                while True:
                    rows_now = reader.entry_batch(offset, count)
                    if not rows_now:
                        break
                    chained += rows_now
                    offset = rows_now[-1][0]
                if [(r[1], r[2]) for r in chained] != [(r[1], r[2]) for r in batch]:
                    problems.append(f"{path}: entry_batch in batches of {count} differs from one batch")
            try:
                plain = [(name, node.ino) for _, name, node, _ in reader.entries(0)]
            except NotImplementedError:
                plain = None
            if plain is not None and plain != [(r[1].decode(), r[2]) for r in batch]:
                problems.append(f"{path}: entry_batch and entries list different names or inodes")
            continue
        same_handle = listing.directory.opendir()
        list(same_handle.entries(0))
        for pos in positions:
            offset = rows[pos][0]
            for how, reader in (("the same handle", same_handle), ("a new handle", listing.directory.opendir())):
                rest = [(name, node.ino) for _, name, node, _ in reader.entries(offset)]
                if rest != key[pos + 1:]:
                    problems.append(f"{path}: from offset {offset} ({how}) the listing gives {rest[:3]}..., "
                                    f"not {key[pos + 1:pos + 4]}...")
    problems.raise_if_any("listings do not resume at their offsets")


def check_lookup_agrees_with_listing(walk: Walk) -> None:
    """`lookup` and `lookup_attr` of every listed name find the listed inode, with the
    listed attributes (where the listing gave them) and the node's own `attr()` (which
    answers for every listed node); the mode's file type matches the node's class;
    `Tree.get` of the number answers the same."""
    problems = Problems(walk.failed_attrs)
    for e in walk.entries:
        found = e.parent.lookup(e.name)
        if found is None or found.ino != e.ino:
            problems.append(f"{e.path}: lookup gives {found and found.ino}, the listing {e.ino}")
            continue
        pair = e.parent.lookup_attr(e.name)
        if pair is None or pair[0].ino != e.ino:
            problems.append(f"{e.path}: lookup_attr gives {pair and pair[0].ino}, the listing {e.ino}")
            continue
        own = e.node.attr()
        for what, attr in (("lookup_attr", pair[1]), ("the listing", e.listed_attr)):
            if attr is not None and comparable(attr) != comparable(own):
                problems.append(f"{e.path}: {what} says {attr}, attr() {own}")
        if stat.S_IFMT(own.mode) != kind_of(e.node):
            problems.append(f"{e.path}: mode {oct(own.mode)} but the node is a {type(e.node).__name__}")
        if isinstance(e.node, Symlink) and own.size != len(e.node.target.encode()):
            problems.append(f"{e.path}: a link's size {own.size} is not its target's length")
        got = walk.tree.get(e.ino)
        if got is None or got.ino != e.ino or kind_of(got) != kind_of(e.node):
            problems.append(f"{e.path}: Tree.get({e.ino}) gives {got!r}")
        elif comparable(got.attr()) != comparable(own):
            problems.append(f"{e.path}: Tree.get({e.ino}).attr() is {got.attr()}, not {own}")
    problems.raise_if_any("lookups disagree with listings")


def check_size_is_what_a_read_returns(walk: Walk) -> None:
    """Every file reads (open, read to a short read, release) exactly `attr().size`
    bytes, and a read at the end gives nothing: the kernel cuts or pads by the size."""
    problems = Problems()
    for e in walk.files():
        try:
            handle = e.node.open(os.O_RDONLY)
        except OSError as exc:
            problems.append(f"{e.path}: open failed: {exc}")
            continue
        try:
            data = read_all(handle)
            after = bytes(handle.read(len(data), READ_SIZE))
        except OSError as exc:
            problems.append(f"{e.path}: read failed: {exc}")
            continue
        finally:
            handle.release()
        size = e.node.attr().size
        if len(data) != size or e.attr.size != size:
            problems.append(f"{e.path}: read {len(data)} bytes, attr().size {size}, listed {e.attr.size}")
        if after:
            problems.append(f"{e.path}: a read at the end gives {len(after)} bytes")
    problems.raise_if_any("sizes differ from what reads return")


def found_both_ways(directory, name: str) -> tuple:
    """What `lookup_attr_nowait` and `lookup_attr` find, comparable: (ino, attributes),
    "missing", or (nowait only) None for "cannot tell"."""
    def comparable_found(found):
        return "missing" if found is None or found is ABSENT else (found[0].ino, comparable(found[1]))
    quick = directory.lookup_attr_nowait(name)
    return None if quick is None else comparable_found(quick), comparable_found(directory.lookup_attr(name))


def check_nowait_twins_agree(walk: Walk) -> None:
    """Where a nowait twin answers, it says what the blocking call says: `cached_attr`
    and `attr`, `lookup_attr_nowait` and `lookup_attr`, `open_nowait` and `open`,
    `cached_read` and `read`. Asked before and after the blocking call (which may fill
    the caches the twin answers from)."""
    problems = Problems()
    answered = 0

    def compare(path: str, what: str, quick, slow) -> None:
        nonlocal answered
        if quick is not None:
            answered += 1
            if quick != slow:
                problems.append(f"{path}: {what}: {quick!r:.120} but the blocking call {slow!r:.120}")

    for e in walk.entries:
        before = e.node.cached_attr()
        own = comparable(e.node.attr())
        compare(e.path, "cached_attr before attr()", before and comparable(before), own)
        after = e.node.cached_attr()
        compare(e.path, "cached_attr", after and comparable(after), own)
        for when in ("first", "again"):
            compare(e.path, f"lookup_attr_nowait ({when})", *found_both_ways(e.parent, e.name))
        if isinstance(e.node, File):
            data = content(e.node)
            for when in ("after open", "again"):
                handle = e.node.open_nowait(os.O_RDONLY)
                if handle is not None:
                    try:
                        compare(e.path, f"open_nowait ({when})", read_all(handle), data)
                    finally:
                        handle.release()
            handle = e.node.open(os.O_RDONLY)
            try:
                read_all(handle)
                for offset in sorted({0, 1, len(data) // 2, max(len(data) - 1, 0), len(data)}):
                    quick = handle.cached_read(offset, READ_SIZE)
                    compare(e.path, f"cached_read at {offset}", quick and bytes(quick), data[offset:offset + READ_SIZE])
            finally:
                handle.release()
    for listing in walk.listings:
        for name in [row[1] for row in listing.rows[:3]]:
            compare(f"{listing.path}/{name}", "lookup_attr_nowait", *found_both_ways(listing.directory, name))
    problems.raise_if_any(f"nowait twins disagree ({answered} answers compared)")


def check_unknown_names_are_not_found(walk: Walk) -> None:
    """A name a directory does not list is not found (None, or ENOENT), by every lookup;
    an inode number never handed out is unknown to `Tree.get`."""
    problems = Problems()
    for listing in walk.listings:
        listed = {row[1] for row in listing.rows}
        guesses = [*UNKNOWN_NAMES, *(name + "~" for name in list(listed)[:3])]
        for name in guesses:
            if name in listed:
                continue
            for how in ("lookup", "lookup_attr", "lookup_attr_nowait"):
                try:
                    found = getattr(listing.directory, how)(name)
                    found = None if found is ABSENT else found
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        problems.append(f"{listing.path}/{name}: {how} raised {exc} (not ENOENT)")
                    continue
                if found is not None:
                    problems.append(f"{listing.path}/{name}: {how} found {found!r:.80}, but it is not listed")
    inos = [e.ino for e in walk.entries]
    top = max((i for i in inos if not i >> GRAFT_SHIFT), default=walk.tree.base)
    for ino in (top + 1_000_000, (1 << GRAFT_SHIFT) * 999 + 7):
        if ino not in inos and walk.tree.get(ino) is not None:
            problems.append(f"Tree.get({ino}) answers for a number never handed out")
    problems.raise_if_any("unknown names or numbers are found")


def check_inode_numbers_are_stable_and_unique(walk: Walk) -> None:
    """The root is `tree.base`; every node has a number; a directory has one name (the
    kernel cannot have two); a file shown under several names has as many links; a second
    walk gives every path the same number."""
    problems = Problems(walk.repeated_dirs)
    tree = walk.tree
    if tree.root.ino != tree.base or not isinstance(tree.root, Directory):
        problems.append(f"the root is {tree.root!r} with number {tree.root.ino}, not {tree.base}")
    paths_of: dict[int, list[Listed]] = {}
    for e in walk.entries:
        if e.ino <= 0 or e.ino == tree.root.ino:
            problems.append(f"{e.path}: inode number {e.ino}")
        paths_of.setdefault(e.ino, []).append(e)
    for ino, entries in paths_of.items():
        if len(entries) > 1 and isinstance(entries[0].node, File) and len(entries) > entries[0].attr.nlink:
            problems.append(f"inode {ino} is a file at {len(entries)} paths with {entries[0].attr.nlink} link(s): "
                            f"{[e.path for e in entries[:3]]}")
        kinds = {kind_of(e.node) for e in entries}
        if len(kinds) > 1:
            problems.append(f"inode {ino} is a directory, file or link depending on the path")
    again = Walk.of(tree).inodes()
    for path, ino in walk.inodes().items():
        if again.get(path) != ino:
            problems.append(f"{path}: inode {ino}, then {again.get(path)} when walked again")
    problems.raise_if_any("inode numbers are not stable and unique")


def check_made_up_files_without_write_bits_refuse_writers(walk: Walk) -> None:
    """In a writable tree, a file the backend makes up (no owner of its own: a generated
    view, a README) whose mode has no write bit refuses an open for writing or truncating
    (EROFS or EACCES): root passes the kernel's check of the mode, and would otherwise
    get a handle whose writes fail with EBADF. (Read-only trees: the daemon refuses.) A
    file that says it takes its own bytes back (`File.takes_own_bytes_back`: copick's
    views) may give a write-only handle: a byte past its end is then refused with EROFS."""
    problems = Problems()
    for e in walk.files():
        if not walk.tree.writable_at(e.ino) or e.attr.uid is not None or e.attr.mode & 0o222:
            continue
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            for how in ("open_nowait", "open"):
                try:
                    handle = getattr(e.node, how)(flags)
                except OSError as exc:
                    if exc.errno not in (errno.EROFS, errno.EACCES):
                        problems.append(f"{e.path}: {how}({flags:#o}) raised {exc}")
                    continue
                if handle is not None and not _refuses_other_bytes(e.node, handle, e.attr.size, flags):
                    problems.append(f"{e.path}: {how}({flags:#o}) of a file with mode {oct(e.attr.mode)} "
                                    f"gives a handle")
    problems.raise_if_any("read-only files of writable trees open for writing")


def _refuses_other_bytes(node: File, handle, size: int, flags: int) -> bool:
    """Whether a write-only handle of a file that takes its own bytes back refuses a byte
    past the file's end with EROFS (the handle is released)."""
    try:
        if flags != os.O_WRONLY or not node.takes_own_bytes_back:
            return False
        handle.write(size, b"\0")
    except OSError as exc:
        return exc.errno == errno.EROFS
    finally:
        handle.release()
    return False


#: the checks that change nothing (each takes a Walk)
READ_CHECKS = (check_listing_offsets_resume, check_lookup_agrees_with_listing, check_size_is_what_a_read_returns,
               check_nowait_twins_agree, check_unknown_names_are_not_found, check_inode_numbers_are_stable_and_unique,
               check_made_up_files_without_write_bits_refuse_writers)


# -- read-only trees ------------------------------------------------------------------

NEW = b"contract-new-name"
#: what the kernel passes as the caller of a request, and as setattr's fields and values
CALLER = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


def _setattr_fields(**update) -> SimpleNamespace:
    return SimpleNamespace(**{f"update_{name}": update.get(name, False)
                              for name in ("size", "mode", "mtime", "atime", "uid", "gid")})


NEW_ATTRS = SimpleNamespace(st_size=0, st_mode=stat.S_IFREG | 0o600, st_mtime_ns=12345, st_atime_ns=12345,
                            st_uid=os.getuid(), st_gid=os.getgid())


def _snapshot(walk: Walk) -> dict[str, tuple]:
    """What a walk shows: each path's number, attributes and (files) content."""
    return {e.path: (e.ino, comparable(e.node.attr()), content(e.node) if isinstance(e.node, File) else None)
            for e in walk.entries}


async def check_read_only_refuses_changes(walk: Walk) -> None:
    """The daemon refuses every change to a read-only tree, and to a read-only tree grafted
    into a writable one, with EROFS before a node is asked (nodes of read-only trees are
    never asked to change): create, mkdir, mknod, symlink, unlink, rmdir, rename, link,
    an open for writing or truncating, truncate, chmod, utimens. Nothing changes."""
    from scopefs.daemon.fs import Operations     # (here: the read checks need no FUSE)
    import pyfuse3

    tree, problems, asked = walk.tree, Problems(), 0
    ops = Operations(tree)
    before = _snapshot(walk)

    async def refused(path: str, what: str, call, *args) -> None:
        nonlocal asked
        asked += 1
        try:
            answer = await call(*args)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.EROFS:
                problems.append(f"{path}: {what}: {errno.errorcode.get(exc.errno, exc.errno)}, not EROFS")
            return
        problems.append(f"{path}: {what} was accepted")
        if what.startswith("open"):
            await ops.release(answer.fh)

    for listing in walk.listings:
        d, path = listing.directory, listing.path or "/"
        if tree.writable_at(d.ino):
            continue
        await refused(path, "create", ops.create, d.ino, NEW, 0o644, os.O_WRONLY | os.O_CREAT, CALLER)
        await refused(path, "mkdir", ops.mkdir, d.ino, NEW, 0o755, CALLER)
        await refused(path, "mknod", ops.mknod, d.ino, NEW, stat.S_IFIFO | 0o644, 0, CALLER)
        await refused(path, "symlink", ops.symlink, d.ino, NEW, b"target", CALLER)
        for _, name, node, _ in listing.rows[:2]:
            child, raw = f"{listing.path}/{name}", os.fsencode(name)
            remove = ops.rmdir if isinstance(node, Directory) else ops.unlink
            await refused(child, remove.__name__, remove, d.ino, raw, CALLER)
            await refused(child, "rename", ops.rename, d.ino, raw, d.ino, NEW, 0, CALLER)
            await refused(child, "link", ops.link, node.ino, d.ino, NEW, CALLER)
    for e in walk.entries:
        if tree.writable_at(e.ino):
            continue
        if isinstance(e.node, File):
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_TRUNC):
                await refused(e.path, f"open({flags:#o})", ops.open, e.ino, flags, CALLER)
            await refused(e.path, "truncate", ops.setattr, e.ino, NEW_ATTRS, _setattr_fields(size=True), None, CALLER)
        for field in ("mode", "mtime", "atime"):
            await refused(e.path, f"setattr {field}", ops.setattr, e.ino, NEW_ATTRS, _setattr_fields(**{field: True}),
                          None, CALLER)
    if not asked:
        problems.append("no node of a read-only tree was reached")
    after = _snapshot(Walk.of(tree))
    problems += [f"{path}: changed: {after.get(path, 'gone')!r:.200}" for path in before
                 if after.get(path) != before[path]]
    problems += [f"{path}: appeared" for path in after if path not in before]
    problems.raise_if_any(f"a read-only tree accepts changes ({asked} asked)")
