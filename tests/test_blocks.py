"""The in-memory building blocks (backends/blocks.py) used directly, without a mount."""
from __future__ import annotations

import errno
import os

import pytest

from scopefs.backends import blocks
from scopefs.backends.blocks import BufferHandle, GeneratedFile, MemoryFile, View
from scopefs.backends.cache import ByteCache

LIMIT = 4096


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(blocks, "MEMORY_FILE_LIMIT", LIMIT)


class Owner:
    mtime_ns = 0


class Text(View):
    def __init__(self):
        super().__init__(Owner())
        self.committed = []

    def content(self) -> bytes:
        return b"model"

    def commit(self, data: bytes) -> None:
        self.committed.append(data)


def efbig(call, *args) -> None:
    with pytest.raises(OSError) as refused:
        call(*args)
    assert refused.value.errno == errno.EFBIG


@pytest.mark.parametrize("kind", ["buffer", "memory file"])
def test_files_in_memory_stop_at_their_limit_with_efbig(small_limit, kind):
    """A truncate past the limit fails with EFBIG and changes nothing; a write across it is
    cut short there and the next one fails, as at a filesystem's largest file size: a
    truncate to a terabyte never allocates it. BufferHandle and MemoryHandle write alike."""
    if kind == "buffer":
        commits = []
        handle = BufferHandle(b"abc", commits.append)
        content = handle.buf                     # changed in place
    else:
        file = MemoryFile(b"abc")
        handle, content = file.open(os.O_RDWR), file.data
        efbig(file.truncate, 1 << 40)
    efbig(handle.truncate, 1 << 40)
    efbig(handle.truncate, LIMIT + 1)
    assert content == b"abc"
    assert handle.write(LIMIT - 2, b"wxyz") == 2
    assert content == b"abc" + bytes(LIMIT - 5) + b"wx"
    efbig(handle.write, LIMIT, b"z")
    efbig(handle.write, 1 << 40, b"z")
    assert handle.write(LIMIT, b"") == 0
    handle.truncate(LIMIT - 1)
    assert len(content) == LIMIT - 1
    if kind == "buffer":
        handle.flush()
        assert commits == [bytes(content)]


def test_a_view_truncated_past_the_limit_stages_nothing(small_limit):
    view = Text()
    efbig(view.truncate, 1 << 40)
    assert view.staged is None and view.attr().size == len(b"model") and view.committed == []
    view.truncate(LIMIT)
    assert view.attr().size == LIMIT


@pytest.mark.parametrize("cached", [True, False])
def test_a_generated_file_once_made_opens_without_a_thread(cached):
    """open_nowait agrees with open once the content is made (stat made it), in the shared
    cache or kept by the file itself; before, it leaves the making to a worker thread."""
    made = []
    file = GeneratedFile(lambda: made.append(1) or b"content", cache=ByteCache(1 << 20) if cached else None)
    assert file.open_nowait(os.O_RDONLY) is None
    assert file.attr().size == len(b"content")
    handle = file.open_nowait(os.O_RDONLY)
    assert handle is not None and handle.cached_read(0, 100) == b"content"
    assert made == [1]


def test_generated_files_sharing_a_key_each_know_their_size():
    """A second file made into the same cache key finds the bytes there, made by the first:
    its size is that content's (before, it stayed unknown and stat had no attributes)."""
    cache, made = ByteCache(1 << 20), []
    first, second = (GeneratedFile(lambda: made.append(1) or b"content", cache=cache, key=("view", 1))
                     for _ in range(2))
    assert first.attr().size == len(b"content")
    assert second.attr() is not None and second.attr().size == len(b"content")
    assert made == [1]
