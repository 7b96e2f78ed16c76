"""An imgstore as a tree of per-frame image files.

    frames/000000.png ...      one file per frame, by frame_index (zero-padded, sorted)
    by-number/001000.png ...   the same files by frame_number (duplicates: 001000.dup1.png)
    at-time/<time>.png         a link to the frame nearest to an ISO-8601 time or epoch seconds
    metadata.yaml              verbatim
    metadata.json              the user metadata as JSON
    store.json                 what the store is (format, shape, frame count, time span...)
    frames.csv                 frame_index, frame_number, frame_time, ISO time, chunk, position
    extra.jsonl, extra.csv     extra data, when the store has any
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import mmap
import os
import queue
import re
import stat
import sys
import threading
import time

import numpy as np

from ..formats.images import PASSTHROUGH, ImageFormat, make_format
from ..formats.imgstore import extra as extra_data
from ..formats.imgstore.frames import FrameError, FrameReader, open_reader
from ..formats.imgstore.index import FrameIndex
from ..formats.imgstore.metadata import StoreError, read_metadata
from . import is_url, remote, storage
from .background import Background
from .blocks import GeneratedFile, RowsFile, StaticDirectory
from .cache import ByteCache
from .nodes import ROOT_INO, Attr, Directory, File, FileHandle, Symlink, Tree
from .nowait import lookup_attr_nowait
from .options import MountError, Options

log = logging.getLogger(__name__)

MiB = 1 << 20
FRAME_MODE = stat.S_IFREG | 0o444
#: a frame is listed both in frames/ and by-number/: two names, one inode
FRAME_NLINK = 2
#: bytes of frames read ahead of a sequential reader by default (`FrameService.default_prefetch`)
READ_AHEAD_BYTES = 16 * MiB
#: how long a reader that caught up with the read-ahead is held, at most, for it to lead
#: again (`FrameService.offer_rest`)
LEAD_WAIT = 0.5


def open_tree(source: str, options: Options, read_only: bool = True, progress=None, base: int = ROOT_INO,
              mountpoint: str | None = None) -> "ImgstoreTree":
    fmt_name = options.str("image_format", "")
    files = None
    try:
        settings = dict(
            png_compression=options.int("png_compression", 0, 0, 9),
            jpeg_quality=options.int("jpeg_quality", 95, 1, 100),
            encoded_cache=options.int("cache_mb", -1, 0) * MiB,     # (negative: sized by frames)
            prefetch=options.int("prefetch", -1, 0, 64),       # (negative: sized by frames)
            passthrough=options.flag("passthrough", True),
            skip_bad_chunks=options.flag("skip_bad_chunks", False),
            mjpeg_reader=options.str("mjpeg_reader", "ffmpeg", ("ffmpeg", "opencv")),
        )
        files = _remote_files(source, options) if is_url(source) else storage.LocalFiles()
        if files.remote:
            chunk_cache = (options.int("chunk_cache_mb", 1024, 1) * MiB, options.str("chunk_cache_dir", "") or None)
        if "decoded_cache_mb" in options:       # (mount lines written before decoded frames went uncached still mount)
            options.int("decoded_cache_mb", 0, 0)
            log.warning("-o decoded_cache_mb is no longer used (decoded frames are not kept): ignored")
        options.finish()
        meta = read_metadata(source, files)
        if files.remote and meta.kind == "video":   # (frames of a directory store are read as objects)
            files.chunk_cache = storage.ChunkCache(*chunk_cache)
        index = FrameIndex.load(meta, skip_bad_chunks=settings.pop("skip_bad_chunks"), progress=progress)
        reader = open_reader(meta, index, settings.pop("mjpeg_reader"))
    except Exception as exc:
        if files is not None and files.remote and files.chunk_cache is not None:
            files.chunk_cache.close()
        if isinstance(exc, StoreError):
            raise MountError(str(exc)) from None
        if files is None or not files.remote or isinstance(exc, MountError):
            raise
        raise MountError(f"{type(exc).__name__}: {remote.redact(str(exc))}") from None   # the store's own
    fmt = _choose_format(fmt_name, reader, settings.pop("png_compression"), settings.pop("jpeg_quality"))
    tree = ImgstoreTree(meta, index, reader, fmt, base=base, **settings)
    if not files.remote:        # (a remote store's requests happen when asked, and are counted so)
        tree.background.start(tree.learn_attributes, "learn-attributes")
    cache = getattr(files, "chunk_cache", None)        # (a video's in object storage)
    if cache is not None:
        tree.notice = (f"video chunks are fetched whole into {cache.directory} "
                       f"(at most {cache.limit >> 20} MiB, removed at unmount)")
    return tree


def _remote_files(url: str, options: Options) -> storage.RemoteFiles:
    """A store in object storage: metadata and indexes read once, frames of directory
    stores as objects (video chunks are decoded from local copies: see open_tree)."""
    fs_args = remote.s3_args(url, options)
    base = url.rstrip("/")
    if base.endswith("/metadata.yaml"):
        base = base.rpartition("/")[0]
    from .overlay.remote import FsspecRoot        # only object-store sources need it
    try:
        return storage.RemoteFiles(FsspecRoot(base, fs_args), base)
    except Exception as exc:
        raise MountError(f"{remote.public_url(url)} cannot be opened: {type(exc).__name__}: "
                         f"{remote.redact(str(exc))}") from None


def _choose_format(name: str, reader: FrameReader, png_compression: int, jpeg_quality: int) -> ImageFormat:
    """The requested format, or PNG; PNG cannot hold every dtype, so the default falls
    back to TIFF and then NPY where it must."""
    candidates = [name] if name else ["png", "tiff", "npy"]
    reasons = []
    for candidate in candidates:
        try:
            fmt = make_format(candidate, png_compression=png_compression, jpeg_quality=jpeg_quality)
        except ValueError as exc:
            raise MountError(f"option image_format: {exc}") from None
        reason = fmt.supports(reader.shape, reader.dtype)
        if reason is None:
            return fmt
        reasons.append(reason)
    raise MountError(f"{'; '.join(reasons)} (choose another -o image_format=)")


def encoder_threads() -> int:
    """Threads that encode and store frames the decoder's thread read ahead: one CPU is
    left to that thread and one to the reader and the requests, so on two CPUs none (the
    decoder's thread encodes and stores itself). Encoders there only competed for the
    same two CPUs, and added a hand-off, GIL switches and context switches a frame
    (daemon CPU 0.60-0.68 ms a frame with none against 0.62-0.90 with two, `tar` of a
    320x240 MJPEG store)."""
    return max(0, (os.cpu_count() or 1) - 2)


class FrameService:
    """Frames of one store, encoded in the served format: sizes without decoding,
    single-flight decode+encode through bounded caches, and read-ahead for sequential
    readers that keeps the video decoder positioned. A frame read ahead is offered
    (`offer(i, data)`) for the kernel's page cache: a reader that opens it next (tar,
    rsync, cp) reads it from there, without a request. Where the kernel opens files
    without asking (a read-only mount), such a reader sends nothing at all for those
    frames, so of every `signpost_every`-th frame the last page is kept back: its read
    (one request) tells where the reader is, and moves the read-ahead on."""

    def __init__(self, index: FrameIndex, reader: FrameReader, fmt: ImageFormat, *, encoded_cache: int,
                 prefetch: int, passthrough: bool):
        self.index = index
        self.reader = reader
        self.format = fmt
        self.extension = fmt.extension_for(reader.shape)
        # a frame's encoding: the read frames are of this shape (`FrameReader.read` checks)
        self._encode = fmt.buffer_encoder(reader.shape, reader.dtype)
        self._fixed_size = fmt.fixed_size(reader.shape, reader.dtype)
        if prefetch < 0:
            prefetch = self.default_prefetch()
        if encoded_cache < 0:
            encoded_cache = self.default_cache_bytes(prefetch)
        self.encoded = ByteCache(encoded_cache)
        self.passthrough = bool(
            passthrough and reader.meta.kind == "directory" and not reader.meta.encoding
            and reader.meta.format in PASSTHROUGH.get(fmt.name, ())
            # stored colour npy is BGR; served npy is RGB like every other format
            and not (fmt.name == "npy" and len(reader.shape) == 3))
        n = len(index)
        self._sizes = np.full(n, -1, np.int64)       # learned sizes (passthrough, lossy)
        self._mtimes = np.zeros(n if self.passthrough else 0, np.int64)
        self._chunk_mtimes: dict[int, int] = {}
        self._chunk_attrs: dict[int, Attr] = {}
        self._prefetch_depth = prefetch
        # read-ahead: one thread decodes in order (the video decoder stays positioned),
        # `encoder_threads()` encode what it hands them and store it in the kernel
        # (`_decode_loop`, `_encode_loop`), or it does so itself; started at the first
        # sequential read
        self._decoder: threading.Thread | None = None
        self._to_encode: queue.SimpleQueue = queue.SimpleQueue()
        self._encoders: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)        # the decoder waits for a goal ...
        self._led = threading.Condition(self._lock)         # ... a reader held for the read-ahead to lead
        self._taken = threading.Condition(self._lock)       # ... readers awaiting the decoder's next frame
        self._awaiting = 0
        self._last_read = -2
        self._ahead_to = -2                     # the last frame the decoder took
        self._goal = -2                         # the last frame to read ahead
        self._done_to = -2                      # the last frame the read-ahead is done with (offered or not)
        self._offered_to = -2                   # the last frame an encoder stored in the kernel
        self._held = 0                          # readers waiting on `_led` ...
        self._wake_at = sys.maxsize             # ... woken once `_done_to` reaches this
        self._closed = False
        self.signpost_every = max(1, prefetch // 2)
        self.frames_decoded = 0
        self.frames_offered = 0                 # read ahead before the reader came: given to `offer`
        self.rests_offered = 0                  # frames a reader began to read: their rest given to `offer`
        self.offer = lambda i, data, offset=0, wait=False: False    # the tree's: see `ImgstoreTree`

    def _frame_bytes(self) -> int:
        return self._fixed_size or int(np.prod(self.reader.shape)) * self.reader.dtype.itemsize

    def default_prefetch(self) -> int:
        """Frames in `READ_AHEAD_BYTES`, 8 to 64: the lead is what a reader finds in the
        kernel's page cache without a request, and every `signpost_every`-th frame, and
        every time the reader catches up, costs a READ, a wake-up of the loop and of the
        decoder. With 8, a `tar` of 320x240 frames sent 0.27-0.29 READs a frame and the
        daemon spent 0.45-0.60 ms CPU a frame; with 64, 0.04-0.05 and 0.37-0.44."""
        return min(64, max(8, READ_AHEAD_BYTES // self._frame_bytes()))

    def default_cache_bytes(self, prefetch: int) -> int:
        """Room for a lead of frames the kernel did not take and those being read
        (`2 * prefetch + 16`), at least 16 MiB. A frame the kernel took whole is dropped
        once stored (its page cache keeps it: keep_cache), so this mostly holds signposts,
        frames a reader came to first and frames between encoding and store; it fills
        where the kernel refuses the stores (a file it does not know that the daemon could
        not look up, no mount): the reader reads the lead from here then, and a smaller
        cache would drop frames before their read (decoded again, for video after a
        seek). Bigger, every frame put into it is new memory until it is full (65 page
        faults a 320x240 frame with the 192 MiB it had)."""
        return max(16 * MiB, (2 * prefetch + 16) * self._frame_bytes())

    # -- metadata, never decoding (except for formats whose size needs an encoding) ---
    def _source_path(self, i: int) -> str:
        chunk, position = self.index.locate(i)
        return self.reader.frame_path(chunk, position)

    def _stat_source(self, i: int) -> None:
        st = self.reader.meta.files.stat(self._source_path(i))
        self._sizes[i] = st.size
        self._mtimes[i] = st.mtime_ns

    def size(self, i: int) -> int:
        if self.passthrough:
            if self._sizes[i] < 0:
                self._stat_source(i)
            return int(self._sizes[i])
        if self._fixed_size is not None:
            return self._fixed_size
        if self._sizes[i] < 0:
            self._sizes[i] = len(self.encoded_frame(i, prefetch=False))
        return int(self._sizes[i])

    def mtime_ns(self, i: int) -> int:
        if self.passthrough:
            if self._sizes[i] < 0:
                self._stat_source(i)
            return int(self._mtimes[i])
        chunk, _ = self.index.locate(i)
        return self._chunk_mtime(chunk)

    def _chunk_mtime(self, chunk) -> int:
        mtime = self._chunk_mtimes.get(chunk.number)
        if mtime is None:
            files = self.reader.meta.files
            path = chunk.data_path if files.exists(chunk.data_path) else chunk.index_path
            mtime = self._chunk_mtimes[chunk.number] = files.stat(path).mtime_ns
        return mtime

    def fixed_attrs(self) -> bool:
        """Whether every frame of a chunk has the same attributes (known without I/O per frame)."""
        return self._fixed_size is not None and not self.passthrough

    def chunk_attr(self, chunk) -> Attr:
        """The one Attr every frame of a chunk shares (for `fixed_attrs`), made at its first
        ask (a stat of the chunk: `ImgstoreTree.learn_attributes` asks them all at mount)."""
        attr = self._chunk_attrs.get(chunk.number)
        if attr is None:
            attr = Attr(FRAME_MODE, self._fixed_size, self._chunk_mtime(chunk), FRAME_NLINK)
            self._chunk_attrs[chunk.number] = attr
        return attr

    def cached_attr(self, i: int) -> Attr | None:
        """The attributes if known without I/O (a fixed size or one the read-ahead
        encoded, the chunk's time seen)."""
        if self.fixed_attrs():
            return self._chunk_attrs.get(self.index.locate(i)[0].number)
        if self.passthrough or self._sizes[i] < 0:
            return None
        mtime = self._chunk_mtimes.get(self.index.locate(i)[0].number)
        return None if mtime is None else Attr(FRAME_MODE, int(self._sizes[i]), mtime, FRAME_NLINK)

    def _learn_attr(self, j: int, size: int) -> None:
        """Frame j's size, just encoded by the read-ahead, and its chunk's time (a stat, in
        this thread): the LOOKUP the daemon sends itself to store the frame (daemon/fs.py's
        `Notifier._looked_up`) is then answered on the loop, never waiting for a worker thread,
        which readers waiting for the read-ahead may all hold."""
        if self._fixed_size is not None or self.passthrough:
            return
        self._sizes[j] = size
        try:
            self._chunk_mtime(self.index.locate(j)[0])
        except (OSError, StoreError) as exc:         # (a LOOKUP meets it, and reports it)
            log.debug("frame %d's time: %s", j, exc)

    def attr(self, i: int) -> Attr:
        if self.fixed_attrs():
            return self.chunk_attr(self.index.locate(i)[0])
        return Attr(FRAME_MODE, self.size(i), self.mtime_ns(i), FRAME_NLINK)

    def attrs(self, indexes: np.ndarray) -> list[Attr]:
        """The attributes of many frames, for `fixed_attrs`: shared Attrs looked up by
        chunk (no call per frame)."""
        positions = self.index.chunk_positions(indexes)
        # (np.unique would import numpy.ma on a walk's first listing: 30 ms, more from a cold disk)
        present = np.flatnonzero(np.bincount(positions)).tolist()
        table = {position: self.chunk_attr(self.index.chunks[position]) for position in present}
        return list(map(table.__getitem__, positions.tolist()))

    # -- content ----------------------------------------------------------------------
    def decoded_frame(self, i: int) -> np.ndarray:
        """Frame i decoded: only ever encoded at once, so it is not kept. The encoded cache
        makes a frame once while it holds it; a frame the kernel took whole is dropped
        from it, and decoded again if the kernel later evicted it too (in the reader's
        thread: for video, on another of its chunk's decoders, after a seek)."""
        self.frames_decoded += 1
        return self.reader.read(i)

    def encoded_frame(self, i: int, prefetch: bool = True) -> bytes | memoryview:
        """Frame i encoded: the encoder's buffer, never copied (reads and offers are views of it)."""
        if prefetch and self._reading(i):        # (before waiting: the read-ahead then does not
            self._await_decoder(i)               # store frame i in the kernel)
        return self.encoded.get_or_make(i, lambda: self._encode(self.decoded_frame(i)))

    def cached_frame(self, i: int) -> bytes | memoryview | None:
        """The encoded frame if it is in memory (never waits). A hit is a read like any
        other for read-ahead: a reader served from what was read ahead keeps it going."""
        data = self.encoded.get(i)
        if data is not None:
            self._reading(i)
        return data

    def opening(self, i: int) -> None:
        """Frame i is being opened: where the daemon sees opens, a reader whose frames were
        read ahead into the kernel's page cache sends opens but no reads, and must keep the
        read-ahead going (where the kernel opens files itself, a frame is opened at its
        first read, and signposts keep it going)."""
        self._reading(i)

    def _reading(self, i: int) -> bool:
        """Frame i is being read: after i-1, or after frames read ahead up to i-1 (which
        the reader may have found in the kernel's page cache), read ahead from it. Called
        for every read: a few comparisons under a lock; the decoder is woken only when it
        waits for more. A frame the reader came to before the decoder took it is the
        reader's own (the frames it passed are skipped), but for the one the running
        decoder takes next (True: `_await_decoder`): decoded in the reader's thread, it
        took a decoder of its own (a seek) and the read-ahead's decoder decoded it once
        more to get past it."""
        if not self._prefetch_depth:
            return False
        with self._lock:
            sequential = self._last_read < i <= max(self._last_read, self._ahead_to) + 1
            if not sequential and i != self._last_read:
                self._ahead_to = self._goal = i  # a jump: what was read ahead before is no guide
            self._last_read = i
            if i > self._ahead_to + (self._decoder is not None):
                self._ahead_to = i               # (the reader's own)
            if sequential and i + self._prefetch_depth > self._goal:
                self._goal = min(i + self._prefetch_depth, len(self.index) - 1)
                if self._decoder is None:
                    self._start_threads()
                self._more.notify()
            return i > self._ahead_to

    def _await_decoder(self, i: int) -> None:
        """Wait (at most `LEAD_WAIT` s) until the decoder took frame i, the next it takes
        (`get_or_make` then waits for its encoding, instead of decoding it here)."""
        with self._lock:
            self._awaiting += 1
            self._wait(self._taken, lambda: self._ahead_to < i <= self._goal)
            self._awaiting -= 1

    def _wait(self, condition: threading.Condition, waiting, wake_at: int = sys.maxsize) -> None:
        """(Under `_lock`.) Wait on `condition` while `waiting()`, at most `LEAD_WAIT` s;
        `wake_at`: the frame whose `_done` wakes a reader held on `_led`."""
        deadline = time.monotonic() + LEAD_WAIT
        while not self._closed and waiting():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake_at = min(self._wake_at, wake_at)
            condition.wait(left)

    def _start_threads(self) -> None:
        self._decoder = threading.Thread(target=self._decode_loop, name="decode-ahead", daemon=True)
        self._encoders = [threading.Thread(target=self._encode_loop, name="encode", daemon=True)
                          for _ in range(encoder_threads())]
        for thread in (self._decoder, *self._encoders):
            thread.start()

    def _decode_loop(self) -> None:
        """The decoder thread: decodes the frames after `_ahead_to` up to `_goal`, in order,
        and hands them to the encoders (without any, encodes and stores them itself). Each
        frame is claimed first, so a reader that gets there meanwhile waits for it instead
        of decoding it a second time on a decoder that has to seek; frames the reader is
        already past are skipped."""
        while True:
            with self._lock:
                while not (self._closed or self._ahead_to < self._goal):    # (no wait_for: 2 calls a frame)
                    self._more.wait()
                if self._closed:
                    return
                j = self._ahead_to = self._ahead_to + 1
                claimed = self.encoded.claim(j)  # (under the lock: an awaiting reader finds it claimed)
                if self._awaiting:
                    self._taken.notify_all()
            if not claimed:                      # in memory, or being made by a reader
                self._done(j)
                continue
            try:
                img = self.decoded_frame(j)
            except Exception as exc:             # the reader meets it, and reports it
                self.encoded.complete(j, error=exc)
                with self._lock:
                    self._goal = min(self._goal, j)     # (no further until a reader moves on)
                self._done(j)
                continue
            if self._encoders:
                self._to_encode.put((j, img))
            else:
                self._encode_one(j, img)

    def _encode_loop(self) -> None:
        """An encoder thread: encodes the frames `_decode_loop` queues until `close` queues
        None. A plain queue, not an executor: no future, locks or conditions per frame
        (a future and its conditions were a third of the read-ahead's Python calls)."""
        while (item := self._to_encode.get()) is not None:
            self._encode_one(*item)

    def _encode_one(self, j: int, img: np.ndarray) -> None:
        """`_encode_claimed`, on a thread that must go on whatever happens."""
        try:
            self._encode_claimed(j, img)
        except Exception:                    # (a listener's failure)
            log.exception("offering frame %d failed", j)
            self._done(j)

    def _encode_claimed(self, j: int, img: np.ndarray) -> None:
        """Encode frame j and, unless the reader is there already (it reads the frame
        itself), store it in the kernel from this thread: no hand-off, and stored when
        `_done` says so."""
        try:
            data = self._encode(img)
        except Exception as exc:
            self.encoded.complete(j, error=exc)
            self._done(j)
            return
        self.encoded.complete(j, data)
        with self._lock:
            ahead = self._last_read < j
            self.frames_offered += ahead
            if ahead:
                self._offered_to = max(self._offered_to, j)
        if ahead:
            self._learn_attr(j, len(data))
            signpost = j % self.signpost_every == 0
            whole = self.offer(j, data[:(len(data) - 1) // mmap.PAGESIZE * mmap.PAGESIZE] if signpost else data,
                               wait=True) and not signpost
            if whole:                            # the kernel keeps it (keep_cache): no second copy, and
                self.encoded.discard(j)          # its memory takes the next frame's encoding
        self._done(j)

    def _done(self, j: int) -> None:
        """The read-ahead is done with frame j (stored, in memory already, or failed)."""
        with self._lock:
            self._done_to = max(self._done_to, j)
            if self._held and self._done_to >= min(self._wake_at, self._goal):
                self._wake_at = sys.maxsize     # (a reader woken early says again what it waits for)
                self._led.notify_all()

    def holds(self, i: int) -> bool:
        """Whether a first read of frame i waits for the read-ahead to lead (`offer_rest`):
        frames after i are being read ahead, and the reader came before frame i was
        stored. A reader that overtook the store of a frame read ahead is not held: that
        store waits for its read (and one encoder may be all there is)."""
        with self._lock:
            return self._lead_after(i) > i > self._offered_to

    def _lead_after(self, i: int) -> int:
        """The frame a reader held at frame i waits for (under `_lock`)."""
        return min(i + self.signpost_every, self._goal)

    def offer_rest(self, i: int, data: memoryview, offset: int, wait: bool) -> None:
        """A reader began to read frame i, which the kernel did not have: it came before
        the read-ahead (the reader is faster than decoding) or reads out of order. The
        rest of the frame (from `offset`, if any) is offered at once, so that the reader's next
        reads of it find it in the kernel's cache: the kernel's read-ahead asks for a
        frame in growing pieces otherwise (`tar`: 16, 32, 64, 128 KiB, the last bytes), a
        request each. `wait` (a worker thread's read, before its answer):
        - if the reader `holds`, wait (at most `LEAD_WAIT` s) until the read-ahead is
          `signpost_every` frames ahead and they are in the kernel: the reader then reads
          them from there, not at the heels of the decoder, where every frame cost a
          request or four;
        - store the rest from this thread: offered after the answer, it came too late
          half the time.
        The reader's own reads of those pages come after that answer; a second reader of
        the frame at once can make the store wait for its read, which the loop answers
        from the encoded cache. A reader of whole frames is held too: one that opens them
        by name (ffmpeg, tar -T) finds the next frames in the kernel only once the daemon
        looked them up and stored them (daemon/fs.py's `Notifier._looked_up`)."""
        rest = offset < len(data)
        with self._lock:
            self.rests_offered += rest
            lead = self._lead_after(i)
            if wait and lead > i > self._offered_to:
                self._held += 1                 # (woken when the lead is there, not at every frame)
                self._wait(self._led, lambda: self._done_to < min(lead, self._goal), lead)
                self._held -= 1
        if rest:
            self.offer(i, data[offset:], offset, wait)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._more.notify_all()
            self._led.notify_all()
            self._taken.notify_all()
        if self._decoder is not None:
            self._decoder.join()
        for _ in self._encoders:                 # (frames queued before are encoded: their claims complete)
            self._to_encode.put(None)
        for thread in self._encoders:
            thread.join()
        self.reader.close()


class FrameHandle(FileHandle):
    keep_cache = True            # a frame of a mounted store never changes

    def __init__(self, service: FrameService, i: int):
        self._service = service
        self._i = i

    def read(self, offset: int, size: int) -> bytes:
        try:
            data = self._service.encoded_frame(self._i)
        except (FrameError, StoreError, IndexError) as exc:
            raise OSError(errno.EIO, f"frame {self._i}: {exc}") from None
        end = offset + size
        if offset == 0:
            self._service.offer_rest(self._i, data, end, wait=True)
        return data[offset:end]

    def cached_read(self, offset: int, size: int) -> bytes | None:
        """A read from the frame's start offers the rest (if any) at once, or goes to
        `read` in a worker thread where the reader is held for the read-ahead to lead
        (`FrameService.offer_rest`)."""
        data = self._service.cached_frame(self._i)
        if data is None:
            return None
        end = offset + size
        if offset == 0:
            if self._service.holds(self._i):
                return None
            if end < len(data):
                self._service.offer_rest(self._i, data, end, wait=False)
        return data[offset:end]


class FrameFile(File):
    def __init__(self, service: FrameService, i: int):
        self.service = service
        self.i = i

    def attr(self) -> Attr:
        return self.service.attr(self.i)

    def cached_attr(self) -> Attr | None:
        return self.service.cached_attr(self.i)

    def open(self, flags: int) -> FileHandle:
        if self.service.passthrough:
            return self.service.reader.meta.files.open_read(self.service._source_path(self.i))
        return self.open_nowait(flags)

    def open_nowait(self, flags: int) -> FileHandle | None:
        if self.service.passthrough:
            return None
        self.service.opening(self.i)
        return FrameHandle(self.service, self.i)


_INDEX_NAME = re.compile(r"^(\d+)$")
_NUMBER_NAME = re.compile(r"^(-?\d+)(?:\.dup(\d+))?$")


class FramesDirectory(Directory):
    """A read-only folder of the store's frames (by index or by number)."""

    def __init__(self, tree: "ImgstoreTree", mtime_ns: int):
        self.tree = tree
        self.mtime_ns = mtime_ns

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)

    cached_attr = attr

    def lookup_attr_nowait(self, name: str):
        """Names resolve by arithmetic and binary search: no thread, once the frame's
        attributes are known without I/O."""
        return lookup_attr_nowait(self.lookup, name)


class FramesByIndex(FramesDirectory):
    def __init__(self, tree: "ImgstoreTree", mtime_ns: int):
        super().__init__(tree, mtime_ns)
        n = len(tree.index)
        self.width = max(6, len(str(max(n - 1, 0))))

    def name(self, i: int) -> str:
        return f"{i:0{self.width}d}{self.tree.service.extension}"

    def entries(self, offset: int):
        for i in range(offset, len(self.tree.index)):
            yield i + 1, self.name(i), self.tree.frame_node(i), None

    def entry_batch(self, offset: int, count: int):
        tree = self.tree
        if not tree.service.fixed_attrs():
            return None         # a stat or an encoding per frame, each of which may fail alone
        indexes = np.arange(offset, min(offset + count, len(tree.index)))
        names = _decimal_names(indexes, self.width, tree.service.extension.encode()).tolist()
        return list(zip(range(offset + 1, offset + 1 + indexes.size), names,
                        range(tree.frames_base + offset, tree.frames_base + offset + indexes.size),
                        tree.service.attrs(indexes)))

    def lookup(self, name: str):
        stem = _strip(name, self.tree.service.extension)
        m = _INDEX_NAME.match(stem or "")
        if not m:
            return None
        i = int(m.group(1))
        return self.tree.frame_node(i) if i < len(self.tree.index) else None


class FramesByNumber(FramesDirectory):
    def __init__(self, tree: "ImgstoreTree", mtime_ns: int):
        super().__init__(tree, mtime_ns)
        numbers = tree.index.numbers
        biggest = int(np.abs(numbers).max()) if numbers.size else 0
        self.width = max(6, len(str(biggest)))

    def name(self, number: int, rank: int) -> str:
        sign = "-" if number < 0 else ""
        dup = f".dup{rank}" if rank else ""
        return f"{sign}{abs(number):0{self.width}d}{dup}{self.tree.service.extension}"

    def entries(self, offset: int):
        index = self.tree.index
        for position in range(offset, len(index)):
            i, rank = index.by_number_position(position)
            yield position + 1, self.name(int(index.numbers[i]), rank), self.tree.frame_node(i), None

    def entry_batch(self, offset: int, count: int):
        tree = self.tree
        if not tree.service.fixed_attrs():
            return None         # a stat or an encoding per frame, each of which may fail alone
        order, values = tree.index.by_number_order()
        positions = np.arange(offset, min(offset + count, len(order)))
        indexes, numbers = order[positions], values[positions]
        plain = numbers >= 0
        plain[1:] &= numbers[1:] != numbers[:-1]              # no duplicate inside the batch
        if positions.size and positions[0] and numbers[0] == values[positions[0] - 1]:
            plain[0] = False                                  # nor one across its start
        if plain.all():
            names = _decimal_names(numbers, self.width, tree.service.extension.encode()).tolist()
        else:                                                 # negative or duplicate numbers: rare
            names = [self.name(int(values[p]), tree.index.by_number_position(p)[1]).encode()
                     for p in positions.tolist()]
        return list(zip(range(offset + 1, offset + 1 + positions.size), names,
                        (indexes + tree.frames_base).tolist(), tree.service.attrs(indexes)))

    def lookup(self, name: str):
        stem = _strip(name, self.tree.service.extension)
        m = _NUMBER_NAME.match(stem or "")
        if not m:
            return None
        rank = int(m.group(2)) if m.group(2) else 0
        i = self.tree.index.find_number(int(m.group(1)), rank)
        return None if i is None else self.tree.frame_node(i)


AT_TIME_README = """\
Look up a frame by time: open at-time/<time>{ext}, where <time> is
  - an ISO-8601 time, e.g. 2023-11-14T22:13:20.5+01:00 or 2023-11-14T21:13:20Z
    (without a zone it is read in the store's zone, {zone}), or
  - seconds since the epoch, e.g. 1700000000.25.
The name is a link to the frame in ../frames/ whose frame_time is nearest.
Nothing is listed here because every time is a valid name.
"""


class FramesByTime(Directory):
    def __init__(self, tree: "ImgstoreTree", mtime_ns: int):
        self.tree = tree
        self.mtime_ns = mtime_ns
        text = AT_TIME_README.format(ext=tree.service.extension, zone=_zone_name(tree.meta.timezone))
        self.readme = tree.add(GeneratedFile(lambda: text.encode(), mtime_ns))

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)

    cached_attr = attr

    def entries(self, offset: int):
        if offset == 0:
            yield 1, "README.txt", self.readme, None

    def lookup(self, name: str):
        if name == "README.txt":
            return self.readme
        # the extension is optional here: ISO times have dots of their own
        t = parse_time(_strip(name, self.tree.service.extension) or name, self.tree.meta.timezone)
        if t is None:
            return None
        i = self.tree.index.nearest_time(t)
        if i is None:
            return None
        target = "../frames/" + self.tree.frames_dir.name(i)
        return self.tree.dynamic(("at-time", name), lambda: Symlink(target, self.mtime_ns))


def _decimal_names(values: np.ndarray, width: int, suffix: bytes) -> np.ndarray:
    """Non-negative integers below 10**width as zero-padded names with a suffix, as a
    bytes array: digits are computed for all values at once, not formatted one by one."""
    out = np.empty((values.size, width + len(suffix)), np.uint8)
    rest = values.astype(np.int64)
    for column in range(width - 1, -1, -1):
        out[:, column] = 48 + rest % 10
        rest //= 10
    out[:, width:] = np.frombuffer(suffix, np.uint8)
    return out.view(f"S{width + len(suffix)}").reshape(-1)


def _strip(name: str, extension: str) -> str | None:
    """The name without the served extension, or None if it has another one."""
    return name[: -len(extension)] if name.endswith(extension) else None


_EPOCH = re.compile(r"^-?\d+(\.\d+)?$")


def parse_time(text: str, zone: _dt.tzinfo) -> float | None:
    if _EPOCH.match(text):
        return float(text)
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.timestamp()


def _zone_name(zone: _dt.tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


FRAMES_CSV_HEADER = b"frame_index,frame_number,frame_time,frame_time_iso,chunk,chunk_position\n"
_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)
#: epoch seconds of years 1000 and 9999 (with a day's margin for zone offsets): times in
#: between get a fixed-width ISO string; others (and NaN) an empty one
_ISO_RANGE = (-30610224000 + 86400, 253402214400 - 86400)


def _iso_valid(times: np.ndarray) -> np.ndarray:
    return np.isfinite(times) & (times >= _ISO_RANGE[0]) & (times <= _ISO_RANGE[1])


def _int_lengths(values: np.ndarray) -> np.ndarray:
    """len(str(v)) for every int64, without making the strings."""
    values = np.asarray(values, np.int64)
    return np.searchsorted(_POW10, np.abs(values), side="right") + 1 + (values < 0)


def _str_lengths(texts: np.ndarray) -> np.ndarray:
    """len() of every string of a str array: its characters that are not padding (a
    float's text has no NUL; np.strings.str_len is a lazy import, 5 ms on a first walk)."""
    return np.count_nonzero(texts.view(np.uint32).reshape(texts.size, texts.dtype.itemsize // 4), axis=1)


class FramesTable:
    """frames.csv, row by row: exact row lengths for the size, formatting on demand."""

    def __init__(self, index: FrameIndex, zone: _dt.tzinfo):
        self.index = index
        self.zone = zone
        self._starts = np.asarray([c.start for c in index.chunks], np.int64)
        self._numbers = np.asarray([c.number for c in index.chunks], np.int64)

    def _chunk_columns(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(lo, hi, dtype=np.int64)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        return self._numbers[which], rows - self._starts[which]

    def row_lengths(self, hi: int | None = None) -> np.ndarray:
        """The byte length of every row (of the first `hi` rows)."""
        n = len(self.index) if hi is None else hi
        times = self.index.times[:n]
        chunks, positions = self._chunk_columns(0, n)
        iso = np.where(_iso_valid(times), 32, 0)          # YYYY-MM-DDTHH:MM:SS.ffffff+HH:MM
        return (_int_lengths(np.arange(n)) + _int_lengths(self.index.numbers[:n])
                + _str_lengths(times.astype(str)) + iso
                + _int_lengths(chunks) + _int_lengths(positions) + 6)   # 5 commas, 1 newline

    def render(self, lo: int, hi: int) -> bytes:
        chunks, positions = self._chunk_columns(lo, hi)
        columns = (np.arange(lo, hi).astype(str).tolist(), self.index.numbers[lo:hi].astype(str).tolist(),
                   self.index.times[lo:hi].astype(str).tolist(), _iso_times(self.index.times[lo:hi], self.zone),
                   chunks.astype(str).tolist(), positions.astype(str).tolist())
        return "".join(",".join(row) + "\n" for row in zip(*columns)).encode()


def _iso_times(times: np.ndarray, zone: _dt.tzinfo) -> list[str]:
    """ISO-8601 with the zone's offset at each instant, vectorised: the offset is looked
    up once per distinct hour, not once per frame."""
    finite = _iso_valid(times)
    safe = np.where(finite, times, 0.0)
    hours, which = np.unique(np.floor(safe / 3600.0).astype(np.int64), return_inverse=True)
    per_hour = np.zeros(hours.size, np.int64)
    for k, hour in enumerate(hours.tolist()):
        instant = _dt.datetime.fromtimestamp(hour * 3600, _dt.timezone.utc)
        per_hour[k] = int((zone.utcoffset(instant.astimezone(zone)) or _dt.timedelta(0)).total_seconds())
    offsets = per_hour[which.reshape(-1)]
    local = (np.round(safe * 1e6).astype(np.int64) + offsets * 1_000_000).astype("datetime64[us]")
    text = np.datetime_as_string(local, unit="us").tolist()
    out = []
    for s, off, ok in zip(text, offsets.tolist(), finite.tolist()):
        if not ok:
            out.append("")
            continue
        sign = "+" if off >= 0 else "-"
        off = abs(off)
        out.append(f"{s}{sign}{off // 3600:02d}:{off % 3600 // 60:02d}")
    return out


class ImgstoreTree(Tree):
    def __init__(self, meta, index: FrameIndex, reader: FrameReader, fmt: ImageFormat, base: int = ROOT_INO,
                 **settings):
        super().__init__(base)
        self.meta = meta
        self.index = index
        self.service = FrameService(index, reader, fmt, **settings)
        self.service.offer = lambda i, data, offset=0, wait=False: self.offer(self.frames_base + i, data, offset, wait)
        self.generated_cache = ByteCache(64 * MiB)
        self.attributes_learned = False         # (`learn_attributes`)
        self.background = Background()          # (its thread, started at mount when the store is local)
        mtime = meta.files.stat(os.path.join(meta.path, "metadata.yaml")).mtime_ns
        root = self.add(StaticDirectory(mtime))
        self.frames_base = self.reserve(len(index), lambda i: FrameFile(self.service, i))
        self.frames_dir = self.add(FramesByIndex(self, mtime))
        root.add("frames", self.frames_dir)
        by_number = self.add(FramesByNumber(self, mtime))
        root.add("by-number", by_number)
        root.add("at-time", self.add(FramesByTime(self, mtime)))
        small = (GeneratedFile(lambda: meta.raw, mtime), self._json_file(lambda: meta.user, mtime),
                 self._json_file(self.summary, mtime))
        for name, node in zip(("metadata.yaml", "metadata.json", "store.json"), small):
            root.add(name, self.add(node))
            node.attr()         # made now, in memory: lookups and opens then need no thread
        table = FramesTable(index, meta.timezone)
        self.generated_files = [self.add(RowsFile(FRAMES_CSV_HEADER, table.row_lengths, table.render, mtime))]
        root.add("frames.csv", self.generated_files[0])
        self._rehearse_walk(table, self.frames_dir, by_number)
        if extra_data.extra_data_files(meta, index):
            records = lambda: extra_data.read_extra_data(meta, index)  # noqa: E731
            for name, make in (("extra.jsonl", extra_data.records_to_jsonl), ("extra.csv", extra_data.records_to_csv)):
                node = self.add(GeneratedFile(lambda make=make: make(records()), mtime, self.generated_cache))
                root.add(name, node)
                self.generated_files.append(node)

    def learn_attributes(self) -> None:
        """The sizes of the root's generated files (frames.csv, extra.*) and the frames'
        times (a stat per chunk), learned in a thread of its own from mount on: listings
        with attributes need them (the root's sizes were 44% of the daemon's time in a
        cold `find` of 3,000 frames, the chunks' stats most of the rest), and then no
        request waits for them. A failure is met again by whoever asks."""
        learn = [node.attr for node in self.generated_files]
        if self.service.fixed_attrs():
            learn += [lambda chunk=chunk: self.service.chunk_attr(chunk) for chunk in self.index.chunks]
        for attr in learn:
            if self.background.stopping.is_set():
                return
            try:
                attr()
            except Exception as exc:
                log.debug("learning attributes at mount: %s", exc)
        self.attributes_learned = True

    @staticmethod
    def _rehearse_walk(table: FramesTable, *folders: FramesDirectory) -> None:
        """Do at mount, for one frame, what a walk does for all (list it in each frames
        folder, size its frames.csv row): the walk then runs numpy code already mapped,
        which dropping the page cache keeps (a cold `ls -lR` took 6 major faults in it
        otherwise, a few ms each), and the first chunk's frame times are known."""
        table.row_lengths(min(1, len(table.index)))
        for folder in folders:
            try:
                folder.entry_batch(0, 1)
            except OSError as exc:              # the walk meets it, and reports it
                log.debug("listing the first frame: %s", exc)

    @staticmethod
    def _json_file(make, mtime: int) -> GeneratedFile:
        return GeneratedFile(lambda: (json.dumps(make(), indent=2, default=str, ensure_ascii=False) + "\n").encode(),
                             mtime)

    def path_of(self, ino: int) -> str | None:
        """A frame's path in frames/, if its attributes are known without I/O (a tree
        grafted into another has no such path)."""
        i = ino - self.frames_base
        if self.base != ROOT_INO or not 0 <= i < len(self.index) or self.service.cached_attr(i) is None:
            return None
        return f"frames/{self.frames_dir.name(i)}"

    def frame_node(self, i: int) -> FrameFile:
        return self.get(self.frames_base + i)

    def summary(self) -> dict:
        meta, index, service = self.meta, self.index, self.service
        n = len(index)
        return {
            "source": meta.path,
            "class": meta.store["class"],
            "format": meta.format,
            "encoding": meta.encoding,
            "frame_count": n,
            "frame_number_min": int(index.numbers.min()) if n else None,
            "frame_number_max": int(index.numbers.max()) if n else None,
            "frame_time_min": float(np.nanmin(index.times)) if n else None,
            "frame_time_max": float(np.nanmax(index.times)) if n else None,
            "chunks": len(index.chunks),
            "timezone": _zone_name(meta.timezone),
            "uuid": meta.store.get("uuid"),
            "created_utc": str(meta.created_utc) if meta.created_utc else None,
            "served": {
                "image_format": service.format.name,
                "lossless": service.format.lossless,
                "extension": service.extension,
                "shape": list(service.reader.shape),
                "dtype": service.reader.dtype.name,
                "channel_order": "RGB" if len(service.reader.shape) == 3 else "gray",
                "original_files": service.passthrough,
                "size_known_without_decoding": service.passthrough or service._fixed_size is not None,
            },
        }

    def statfs_counts(self) -> tuple[int, int]:
        n = len(self.index)
        size = self.service._fixed_size or 0
        return n * size, n + 16

    def status(self) -> dict:
        service = self.service
        hits, misses = service.encoded.hits, service.encoded.misses
        return {"frames": len(self.index), "frames_decoded": service.frames_decoded,
                "frames_offered": service.frames_offered, "frame_rests_offered": service.rests_offered,
                "attributes_learned": self.attributes_learned,
                "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
                "encoded_cache_bytes": service.encoded.used_bytes,
                **(self.meta.files.status() if self.meta.files.remote else {})}

    @property
    def _chunk_cache(self) -> storage.ChunkCache | None:
        return getattr(self.meta.files, "chunk_cache", None)

    def close(self) -> None:
        self.background.close()
        self.service.close()
        if self._chunk_cache:
            self._chunk_cache.close()
        self.meta.files.close()
