"""A View whose bytes are made once per content tag and kept in a bounded cache."""
from __future__ import annotations

import os
import stat

from .cache import ByteCache
from .blocks import View
from .nodes import Attr, FileHandle


class CachedView(View):
    """A view whose bytes are made once per `content_tag` and kept in `cache` (bounded);
    while the tag stays, the kernel keeps the file's pages too (see View.open). A
    subclass gives `content_tag`, `make` and `commit`; `size`/`known_size` where the size
    is known without making the bytes, `known_mtime_ns` where the mtime needs I/O."""

    def __init__(self, owner, cache: ByteCache):
        super().__init__(owner)
        self.cache = cache

    def make(self) -> bytes:
        raise NotImplementedError

    def content(self) -> bytes:
        return self.cache.get_or_make(self.content_tag(), self.make)

    def size(self) -> int:
        return len(self.content())

    def known_size(self) -> int | None:
        """The size if known without making anything."""
        data = self.cache.get(self.content_tag())
        return None if data is None else len(data)

    def known_mtime_ns(self) -> int | None:
        """The mtime if known without I/O."""
        return self.owner.mtime_ns

    def attr(self) -> Attr:
        size = len(self.staged) if self.staged is not None else self.size()
        return Attr(stat.S_IFREG | 0o644, size, self.owner.mtime_ns)

    def cached_attr(self) -> Attr | None:
        mtime_ns = self.known_mtime_ns()
        size = len(self.staged) if self.staged is not None else self.known_size()
        return None if size is None or mtime_ns is None else Attr(stat.S_IFREG | 0o644, size, mtime_ns)

    def open_nowait(self, flags: int) -> FileHandle | None:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC or self.staged is not None:
            return None
        tag = self.content_tag()
        data = self.cache.get(tag)
        return None if data is None else self._reader(data, tag)
