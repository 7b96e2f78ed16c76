"""Sizes of generated views kept on disk across mounts (backends/kept_sizes.py), without
the kernel: what a kept size is keyed by, a bounded file written whole, and files that
are not ours."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

from scopefs.backends.blocks import GeneratedFile
from scopefs.backends.kept_sizes import MAGIC, RACY_S, KeptSize, KeptSizes, digest, identity
from scopefs.backends.nodes import attr_of


def test_a_size_kept_by_one_mount_is_found_by_the_next(tmp_path):
    path = str(tmp_path / "cache" / "view-sizes")
    first = KeptSizes(path)
    first.put(digest(("view", 1)), 1234)
    first.close()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    again = KeptSizes(path)
    assert again.get(digest(("view", 1))) == 1234 and again.get(digest(("view", 2))) is None


def test_sizes_of_two_mounts_are_merged_and_bounded(tmp_path):
    path = str(tmp_path / "view-sizes")
    one, two = KeptSizes(path, limit=3), KeptSizes(path, limit=3)
    one.put(digest(1), 1)
    two.put(digest(2), 2)
    one.close()
    two.close()                                  # merged with what `one` wrote, not over it
    assert KeptSizes(path).get(digest(1)) == 1 and KeptSizes(path).get(digest(2)) == 2
    three = KeptSizes(path, limit=3)
    for n in range(3, 8):
        three.put(digest(n), n)
    three.close()
    assert len(open(path, "rb").read()) == len(MAGIC) + 16 + 3 * 28


def test_a_damaged_or_foreign_file_is_ignored_then_replaced(tmp_path):
    path = tmp_path / "view-sizes"
    kept = KeptSizes(str(path))
    kept.put(digest("a"), 10)
    kept.close()
    good = path.read_bytes()
    for bad in (good[:-1], good[:-5] + b"\xff" * 5, b"<html>not ours</html>", b""):
        path.write_bytes(bad)
        again = KeptSizes(str(path))
        assert again.get(digest("a")) is None
        again.put(digest("b"), 20)
        again.close()
        assert KeptSizes(str(path)).get(digest("b")) == 20


def test_an_unwritable_place_keeps_sizes_for_the_mount_only(tmp_path):
    (tmp_path / "file").write_text("a file where the folder should be")
    kept = KeptSizes(str(tmp_path / "file" / "view-sizes"))
    kept.put(digest("a"), 1)
    kept.close()                                 # logged, not raised
    assert kept.get(digest("a")) == 1


def test_a_recently_changed_file_has_no_identity(tmp_path):
    """A change within the same clock tick would keep the identity: not trusted."""
    path = tmp_path / "picks.json"
    path.write_text("{}")
    assert identity(attr_of(os.stat(path))) is None
    old = time.time() - RACY_S - 1
    os.utime(path, (old, old))                   # sets mtime, not ctime: still too recent
    assert identity(attr_of(os.stat(path))) is None


def test_a_generated_file_takes_its_kept_size_and_corrects_a_wrong_one(tmp_path):
    sizes = KeptSizes(None)
    made, resized = [], []

    def make():
        made.append(1)
        return b"twelve bytes"
    view = GeneratedFile(make, kept=KeptSize(sizes, lambda: ("view",)), on_resized=resized.append)
    assert view.attr().size == 12 and made == [1]
    again = GeneratedFile(make, kept=KeptSize(sizes, lambda: ("view",)), on_resized=resized.append)
    assert again.attr().size == 12 and made == [1] and resized == []
    sizes.put(digest(("view",)), 99)             # a renderer changed without its version
    wrong = GeneratedFile(make, kept=KeptSize(sizes, lambda: ("view",)), on_resized=resized.append)
    assert wrong.attr().size == 99
    assert wrong.content() == b"twelve bytes" and wrong.attr().size == 12 and resized == [wrong]
    assert sizes.get(digest(("view",))) == 12


def kept_view(sizes, key_of_node, resized: list):
    """A derived view listed with its size kept under b"k" * 16 (a `KeptTogether` of its
    listing) whose node, when made, looks its kept size up under `key_of_node()`."""
    import stat as stat_
    from scopefs.backends.kept_sizes import KeptTogether
    from scopefs.backends.nodes import Attr
    sizes.put(b"k" * 16, 99)
    together = KeptTogether(sizes, lambda: {"view.csv": b"k" * 16})

    def make(info):
        return GeneratedFile(lambda: b"twelve bytes", info.mtime_ns, kept=KeptSize(sizes, key_of_node),
                             on_resized=resized.append)
    return make, Attr(stat_.S_IFREG | 0o444, 5, 1), together


#: what a `DerivedFile` of these tests tells its tree: when a view's size was asked
TREE = SimpleNamespace(size_asked_at=0.0)


def test_a_view_made_after_its_kept_size_was_told_takes_that_size():
    """A view sized from its listing's kept sizes, then made (opened): its node takes the
    size the kernel was told, not a lookup of its own (its source changed meanwhile: its
    own key misses, it made its content at once and nobody said the size told is wrong)."""
    from scopefs.backends.overlay.tree import DerivedFile
    resized = []
    make, info, together = kept_view(KeptSizes(None), lambda: ("changed",), resized)
    node = DerivedFile(TREE, make, info, ("src",), "Picks/view.csv", together)
    node.ino = 7
    assert node.attr().size == 99
    file = node.made()
    assert file.cached_attr().size == 99 and resized == []
    assert file.content() == b"twelve bytes" and resized == [file]      # the kernel is told


def test_a_kept_size_told_while_the_view_is_made_reaches_its_node():
    """A listing's stat tells the kernel a view's kept size while another thread makes the
    view's node (between the node made and placed): the node takes that size, so content
    of another size is reported (the size was told, and nobody had it)."""
    from scopefs.backends.overlay.tree import DerivedFile
    resized = []
    make, info, together = kept_view(KeptSizes(None), lambda: ("view",), resized)
    told = []

    class Racing(DerivedFile):
        """The stat runs as `made()` first reads the size told, after making the node."""
        __slots__ = ()
        armed = [False]

        @property
        def _size(self):
            size = DerivedFile._size.__get__(self)
            if self.armed[0] and self._file is None:
                self.armed[0] = False
                told.append(self.attr().size)
            return size

        @_size.setter
        def _size(self, size):
            DerivedFile._size.__set__(self, size)

    def making(info):
        Racing.armed[0] = True
        return make(info)
    node = Racing(TREE, making, info, ("src",), "Picks/view.csv", together)
    node.ino = 7
    file = node.made()
    assert told == [99]
    assert file.content() == b"twelve bytes" and resized == [file]


def test_a_view_made_while_its_kept_size_is_told_gives_its_nodes_attributes(monkeypatch):
    """A thread listing ahead tells a view its kept size (`_told`) while a FUSE worker makes
    the view's node (its open): once made, the view gives its node's attributes, not the
    unmade ones `_told` worked out, so that a kept size that proves wrong is corrected.
    (`_told` stored them after the node was made: the wrong size was given for good.)"""
    from scopefs.backends.overlay import tree as overlay_tree
    from scopefs.backends.overlay.tree import DerivedFile
    resized = []
    make, info, together = kept_view(KeptSizes(None), lambda: ("changed",), resized)
    node = DerivedFile(TREE, make, info, ("src",), "Picks/view.csv", together)
    node.ino = 7
    made = []

    def view_attr(*args, _attr=overlay_tree.view_attr):
        if not made:
            made.append(node.made())                    # (the worker's open, meanwhile)
        return _attr(*args)
    monkeypatch.setattr(overlay_tree, "view_attr", view_attr)
    node.size_if_kept()
    assert made and node.cached_attr().size == 99       # (the size the kernel was told)
    assert made[0].content() == b"twelve bytes" and resized == made
    assert node.cached_attr().size == 12 and node.attr().size == 12


def test_a_listing_whose_keys_cannot_be_worked_out_is_asked_once():
    """A listing's keys that fail (a library's metadata broken) are asked for once: its
    views are then each made and sized alone, not failed (EIO) at every stat."""
    from scopefs.backends.kept_sizes import KeptTogether
    asked = []

    def keys():
        asked.append(1)
        raise ValueError("broken metadata")
    together = KeptTogether(KeptSizes(None), keys)
    assert [together.size("a.csv"), together.size("b.csv")] == [None, None] and asked == [1]
