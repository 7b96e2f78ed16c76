"""Work done ahead of need for programs that walk a tree: listings of the directories a
walker opens next (`ScanAhead`), stats of a directory's entries once lookups in it
keep missing the kernel's caches (`SiblingWarmer`), and small files read whole with a
sibling's once reads in their directory keep missing the page cache (`SmallSiblings`)."""
from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable

from ..kept_sizes import identity
from ..nodes import Attr
from .root import Root

log = logging.getLogger(__name__)

PLAN_LIMIT = 100_000           # directories a scan-ahead plan remembers


class Workers:
    """A few daemon threads for work done ahead of need: they never hold up the exit,
    and what they fail at is done again by whoever needs it. Work submitted `later`
    waits for the rest, unless it is hurried (`hurry`) before a thread begins it."""

    def __init__(self, threads: int, name: str):
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._waiting: dict[Future, tuple] = {}       # work submitted `later`, not begun: (fn, args)
        self._lock = threading.Lock()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"scopefs-{name}-{i}", daemon=True).start()

    def submit(self, fn, *args, later: bool = False) -> Future:
        future: Future = Future()
        if later:
            with self._lock:
                self._waiting[future] = fn, args
        self._jobs.put((later, next(self._order), future, fn, args, later))
        return future

    def hurry(self, future: Future) -> None:
        """Work submitted `later`, if no thread began it, goes before all that waits
        `later` (queued again: whichever copy a thread takes first is done, once)."""
        with self._lock:
            job = self._waiting.get(future)
        if job is not None:
            self._jobs.put((False, next(self._order), future, *job, True))

    def _work(self) -> None:
        while True:
            _, _, future, fn, args, waiting = self._jobs.get()
            if waiting:
                with self._lock:
                    if self._waiting.pop(future, None) is None:
                        continue                 # (begun from its other copy)
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


class ScanAhead:
    """Listings (names with their stat) of the directories a walker will open next, made
    by background threads while the daemon answers for the current one. `find`, `du`,
    `rsync`, `tar` and copick descend in listing order, so the disk reads (or S3 LISTs)
    of the next directories overlap the work on this one.

    A listing is used once, and only within `horizon` seconds of being asked for (the
    kernel trusts what it is told for as long), if nothing it shows changed since it
    began (`_stale`). At most `window` listings wait at a time, and new ones are started
    only as the walker takes them, so an `ls` of a directory of a thousand folders costs
    `window` listings, not a thousand. The folders a listing made ahead names (planned
    `deeper`) wait in at most half the window, for one horizon after they were planned:
    once the walker has gone, at most `window // 2` of them are listed for nothing."""

    def __init__(self, root, *, threads: int, window: int = 16, horizon: float = 1.0, wait: float | None = None):
        self.root = root
        self.window = window
        self.horizon = horizon
        self.wait = horizon if wait is None else wait       # for one under way, at most
        self._ready: dict[str, tuple[float, object, Future, bool]] = {}     # rel: (begun at, `_mark()`, listing, deeper)
        self._plan: deque[str] = deque()
        self._deeper: deque[tuple[float, str]] = deque()    # (planned at, rel) by listings made ahead
        self._planned: set[str] = set()           # what the walker's own plan still holds
        self._planned_deeper: set[str] = set()    # ... and the deeper plan (each expires alone)
        self._lock = threading.Lock()
        self._purge_at, self._purged_mark = math.inf, None      # (`_purge`)
        self._workers = Workers(threads, "scan-ahead")
        self.used = self.unused = 0               # listings taken / made for nothing

    def plan(self, rels: list[str], deeper: bool = False) -> None:
        """These directories were just listed: a depth-first walker opens them next, before
        what an earlier plan named. `deeper`: listed ahead, not by the walker; those are
        listed only while the walker's own plan is empty and at most half the window waits
        (the walker's next folders always find room)."""
        with self._lock:
            ready, todo = self._ready, []   # (not again one made, or under way, in time for the walker)
            for rel in rels:
                made = ready.get(rel)
                if made is None or self._stale(made[0], made[1]):
                    todo.append(rel)
                elif made[3] and not deeper:
                    self._hurry(rel, made)  # (planned deeper, queued behind the walker's own: its own now)
            rels = todo
            if not rels:
                return
            if deeper:
                now = time.monotonic()
                self._deeper.extendleft((now, rel) for rel in reversed(rels))
                self._planned_deeper.update(rels)
            else:
                self._plan.extendleft(reversed(rels))
                self._planned.update(rels)
            while len(self._plan) > PLAN_LIMIT:
                self._planned.discard(self._plan.pop())
            while len(self._deeper) > PLAN_LIMIT:
                self._planned_deeper.discard(self._deeper.pop()[1])
            self._start(purge=True)

    def take(self, rel: str) -> dict[str, Attr | None] | None:
        """The listing of rel made ahead, or None if there is none fresh."""
        with self._lock:
            started, mark, future, deeper = self._ready.pop(rel, (0.0, None, None, False))
            if deeper:
                self._workers.hurry(future)      # (the walker waits for it: not behind the deeper plan)
            if future is None:
                self._planned.discard(rel)       # the walker got here first: not later either
                self._planned_deeper.discard(rel)
            self._start()
        if future is None:
            return None
        if self._stale(started, mark):                   # (not waited for: it would not be given)
            return self._counted(None, wasted=True)
        try:
            # waited for no longer than it would stay usable: a hung source costs the
            # walker one horizon, then it lists for itself
            listing = future.result(timeout=max(min(self.horizon, self.wait) - (time.monotonic() - started), 0.0))
        except Exception as exc:                         # the caller lists it itself
            log.debug("scan ahead of %s: %r", rel, exc)
            listing, wasted = None, isinstance(exc, TimeoutError)
        else:
            wasted = self._stale(started, mark)
        return self._counted(listing, wasted)

    def take_nowait(self, rel: str):
        """What `take` gives, if it is made already (else None, and the listing stays for a
        `take` that waits for it): no waiting, no I/O, for the trio thread."""
        with self._lock:
            started, mark, future, _ = self._ready.get(rel, (0.0, None, None, False))
            if future is None or not future.done() or future.exception() is not None or self._stale(started, mark):
                return None
            del self._ready[rel]
            self._start()
        return self._counted(future.result(), wasted=False)

    def under_way(self, rel: str) -> tuple[Future, float] | None:
        """(the listing of rel being made ahead, the seconds `take` would wait for it) if
        one is under way: for a caller that waits without a thread of its own (the trio
        thread), then takes it with `take_nowait`."""
        with self._lock:
            made = started, mark, future, deeper = self._ready.get(rel, (0.0, None, None, False))
            if future is None or future.done() or self._stale(started, mark):
                return None
            if deeper:
                self._hurry(rel, made)           # (the walker waits for it: not behind the deeper plan)
        left = min(self.horizon, self.wait) - (time.monotonic() - started)
        return (future, left) if left > 0 else None

    def _hurry(self, rel: str, made: tuple) -> None:
        """rel's listing, begun as deeper work (`made`: its `_ready` entry), is the walker's
        own next: made before the rest of the deeper plan, if no thread began it (lock held)."""
        self._ready[rel] = (*made[:3], False)
        self._workers.hurry(made[2])

    def _mark(self):
        """What a listing begun now is checked against when given (`_stale`): nothing here."""
        return None

    def _stale(self, started: float, mark) -> bool:
        """A listing begun at `started` (when `_mark()` was `mark`) is no longer to be given."""
        return time.monotonic() - started >= self.horizon

    def _counted(self, listing, wasted: bool):
        """What a take gives, counted: a listing made for nothing, or one used."""
        with self._lock:                                 # (walkers take listings in many threads)
            if wasted:
                self.unused += 1
            elif listing is not None:
                self.used += 1
        return None if wasted else listing

    def _start(self, purge: bool = False) -> None:
        now = time.monotonic()
        if purge and (now >= self._purge_at or self._mark() != self._purged_mark):
            self._purge(now)
        deeper = self._deeper
        while deeper and now - deeper[-1][0] >= self.horizon:     # (the walker has gone elsewhere)
            self._planned_deeper.discard(deeper.pop()[1])
        while len(self._ready) < self.window:
            if self._plan:
                rel, later, planned = self._plan.popleft(), False, self._planned
            elif deeper and len(self._ready) < self.window // 2:
                rel, later, planned = deeper.popleft()[1], True, self._planned_deeper    # (after the walker's own next)
            else:
                break
            if rel in planned:                   # else taken by the walker, or planned twice
                self._planned.discard(rel)       # (started: by neither plan again)
                self._planned_deeper.discard(rel)
                if self._ready.pop(rel, None) is not None:      # (one made before a change: re-planned)
                    self.unused += 1
                self._ready[rel] = (now, self._mark(), self._workers.submit(self._scan, rel, later=later), later)
                self._purge_at = min(self._purge_at, now + self.horizon)

    def _purge(self, now: float) -> None:
        """Listings made that are no longer to be given go (lock held): looked for again
        only once one may be (one grew older than the horizon, `_mark()` changed, or one
        under way was already), not at every plan (a walker plans at every folder)."""
        self._purge_at, self._purged_mark = math.inf, self._mark()
        for rel, (started, mark, future, _) in list(self._ready.items()):
            if not self._stale(started, mark):
                self._purge_at = min(self._purge_at, started + self.horizon)
            elif future.done():
                del self._ready[rel]
                self.unused += 1
            else:
                self._purge_at = now            # (under way: looked at again at the next plan)

    def _scan(self, rel: str) -> dict[str, Attr | None]:
        names = self.root.listdir(rel, touch=False) or []
        return dict(zip(names, self.root.stat_many(rel, names)))


class SiblingWarmer:
    """zarr reads a tomogram's chunks, and copick a run's files, by looking up one name
    after another in the same directory. On a local root each lookup that the kernel's
    caches cannot answer costs the daemon a worker thread. After two such lookups in a
    directory within `window` seconds, its entries are stat'ed in the background, and the
    kernel's lookup cache answers for their siblings from then on (`LocalRoot.stat_cached`);
    if it has dropped them again, two more misses warm the directory again. A directory
    looked into once is never warmed, and one of more than `limit` entries (warmed in part)
    not again within `window`."""

    def __init__(self, root: Root, *, limit: int = 4096, window: float = 10.0, remember: int = 1024):
        self.root = root
        self.limit = limit
        self.window = window
        self.remember = remember
        # directory: (first miss since the last warming, misses since, not again before)
        self._misses: OrderedDict[str, tuple[float, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._workers = Workers(1, "warm")
        self.warmed = 0

    def missed(self, rel: str) -> None:
        """A lookup in directory rel needed I/O."""
        now = time.monotonic()
        with self._lock:
            first, count, hold = self._misses.pop(rel, (now, 0, 0.0))
            if now - first >= self.window:
                first, count = now, 0
            warm = count + 1 >= 2 and now >= hold
            self._misses[rel] = (now, 0, hold) if warm else (first, count + 1, hold)
            while len(self._misses) > self.remember:
                self._misses.popitem(last=False)
            if not warm:
                return
            self.warmed += 1
        self._workers.submit(self._warm, rel)

    def _warm(self, rel: str) -> None:
        names = self.root.listdir(rel, touch=False) or []
        self.root.stat_many(rel, names[:self.limit])
        if len(names) > self.limit:
            with self._lock:
                first, count, _ = self._misses.get(rel, (0.0, 0, 0.0))
                self._misses[rel] = (first, count, time.monotonic() + self.window)


class SmallSiblings:
    """A walker that reads small files one after another (a loop of `open().read()`, tar,
    rsync) costs the daemon a worker thread for each cold READ. After two cold whole reads
    of small files in a directory within `window` seconds, the worker of the next one
    reads the directory's next small files too (at most `files` of at most `size` bytes,
    the disk asked for all at once; the directory listed once, kept while it is read on,
    each batch from where the last stopped), and their opens are answered with those
    bytes: no worker thread for their READs. Each is given once, to an open whose file
    shows what it showed when read (`kept_sizes.identity`, from before the batch's stats:
    a file changed within the last seconds is not held) while the tree saw no change
    (`edits()`); at most `held` files of `held_bytes` in all wait, each at most `window`
    seconds (the oldest go first; those past it go at the next batch or open)."""

    #: directories whose cold reads are counted, and those whose listing is read on
    MISSES_KEPT = 1024
    LISTINGS_KEPT = 16

    def __init__(self, edits, *, files: int = 64, size: int = 64 << 10, window: float = 10.0, held: int = 4096,
                 held_bytes: int = 8 << 20):
        self._edits = edits
        self.files, self.size, self.window = files, size, window
        self.held_limit, self.held_bytes_limit = held, held_bytes
        self.held_bytes = 0
        # (root, directory): (first cold read since the window began, cold reads since, the last one's name)
        self._misses: OrderedDict[tuple, tuple[float, int, str]] = OrderedDict()
        # (root, directory): [its names, where the next batch starts, when listed, names read cold]
        self._listed: OrderedDict[tuple, list] = OrderedDict()
        # (root, path): (edits when read, identity, bytes, when read)
        self._held: OrderedDict[tuple, tuple[int, tuple, bytes, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.read_ahead = 0           # files read with a sibling's
        self.given = 0                # opens answered with them

    def read_whole(self, root: Root, rel: str, size: int) -> None:
        """A cold READ of rel (in a worker) read its whole `size` bytes: the directory's
        next small files are read now if it had another such read within `window`. What
        fails here fails no READ (each file is read again when opened)."""
        if size > self.size or not root.local_storage:
            return
        try:
            self._read_next(root, rel)
        except Exception as exc:
            log.debug("reading the small files beside %s ahead: %s: %s", rel, type(exc).__name__, exc)

    def _read_next(self, root: Root, rel: str) -> None:
        folder, _, name = rel.rpartition("/")
        now = time.monotonic()
        with self._lock:
            first, count, last = self._misses.pop((root, folder), (now, 0, ""))
            if now - first >= self.window:
                first, count = now, 0
            self._misses[root, folder] = first, count + 1, name
            while len(self._misses) > self.MISSES_KEPT:
                self._misses.popitem(last=False)
            if count + 1 < 2:
                return
            listed = self._listed.get((root, folder))
        if listed is None or now - listed[2] >= self.window:     # (kept while read on)
            names = root.listdir(folder, touch=False) or []
            with self._lock:                # (another worker may have listed it meanwhile)
                listed = self._listed.get((root, folder))
                if listed is None or now - listed[2] >= self.window:
                    listed = self._listed[root, folder] = [names, 0, now, set()]
        prefix = folder + "/" if folder else ""
        with self._lock:
            names, start, _, cold = listed
            listed[2] = now
            cold.update((last, name))
            picked = []
            while start < len(names) and len(picked) < self.files:
                if names[start] not in cold and (root, prefix + names[start]) not in self._held:
                    picked.append(names[start])
                start += 1
            listed[1] = start
            self._listed[root, folder] = listed
            self._listed.move_to_end((root, folder))
            while len(self._listed) > self.LISTINGS_KEPT:
                self._listed.popitem(last=False)
        edits = self._edits()
        started = time.time_ns()            # (a change after the stats may keep its ctime's tick)
        found = root.read_small(folder, picked, self.size)
        with self._lock:
            self._expire(now)
            for sibling, (info, data) in found.items():
                known = identity(info, started)
                if known is not None:
                    self._drop(self._held.pop((root, prefix + sibling), None))
                    self._held[root, prefix + sibling] = edits, known, data, now
                    self.held_bytes += len(data)
                    self.read_ahead += 1
            while len(self._held) > self.held_limit or self.held_bytes > self.held_bytes_limit:
                self._drop(self._held.popitem(last=False)[1])

    def _expire(self, now: float) -> None:
        """Drop what waited `window` seconds (under the lock; the oldest are first, but for
        batches that ended out of order: `take` checks its entry's time again)."""
        while self._held and now - next(iter(self._held.values()))[3] >= self.window:
            self._drop(self._held.popitem(last=False)[1])

    def _drop(self, entry: tuple | None) -> None:
        if entry is not None:
            self.held_bytes -= len(entry[2])

    def take(self, root: Root, rel: str, opened: Callable[[], Attr | None]) -> tuple[bytes, tuple] | None:
        """(The bytes of rel read ahead, their identity) if the file opened for them
        (`opened()`: its fstat, asked only if rel is held) is still the one they were read
        from, else None; once. Never waits for the disk."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._held.pop((root, rel), None)
            self._drop(entry)
            if entry is None:
                return None
            edits, known, data, when = entry
            if now - when >= self.window or edits != self._edits() or identity(opened()) != known:
                return None
            self.given += 1
        return data, known
