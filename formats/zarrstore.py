"""A read-only zarr store over a blocking `read(key) -> bytes | None`.

Volumes behind a remote root are read through the root's own reads (its metadata cache,
its fetching ahead) rather than through a second fsspec client that zarr would drive from
its own event loop. Each read runs in a thread, so zarr still fetches a region's chunks
concurrently.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest


class ReadOnlyStore(Store):
    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = False

    def __init__(self, read: Callable[[str], bytes | None]):
        super().__init__(read_only=True)
        self._read = read

    def __eq__(self, other: object) -> bool:
        return self is other

    async def get(self, key: str, prototype, byte_range: ByteRequest | None = None):
        data = await asyncio.to_thread(self._read, key)
        if data is None:
            return None
        if isinstance(byte_range, RangeByteRequest):
            data = data[byte_range.start:byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            data = data[byte_range.offset:]
        elif isinstance(byte_range, SuffixByteRequest):
            data = data[-byte_range.suffix:] if byte_range.suffix else b""
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._read, key) is not None

    async def set(self, key: str, value) -> None:
        raise PermissionError("read-only store")

    async def delete(self, key: str) -> None:
        raise PermissionError("read-only store")

    async def list(self):
        raise NotImplementedError("this store does not list")
        yield                                       # an async generator, as zarr expects

    async def list_prefix(self, prefix: str):
        raise NotImplementedError("this store does not list")
        yield

    async def list_dir(self, prefix: str):
        raise NotImplementedError("this store does not list")
        yield
