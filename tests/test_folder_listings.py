"""The daemon's listings of directories the kernel opened itself (`daemon/listings.py`),
without the kernel: found by the offsets they gave, bounded, dropped with their folder."""
from __future__ import annotations

from scopefs.daemon.listings import NUMBERS, POSITION_BITS, FolderListings, Listing


def snapshots():
    """An opendir that counts the snapshots it made (each with attributes: not lean)."""
    made = []

    def opendir():
        made.append(Listing(object()))
        return made[-1]
    return opendir, made


def test_offsets_lead_back_to_their_listing_whoever_reads_on():
    listings, (opendir, made) = FolderListings(), snapshots()
    first, at = listings.find(7, 0, opendir)
    second, _ = listings.find(7, 0, opendir)            # another reader from the start
    assert at == 0 and first is not second and len(made) == 2
    for listing in (first, second):
        found, at = listings.find(7, listing.base + 5, opendir)
        assert found is listing and at == 5
    assert len(made) == 2
    other, _ = listings.find(8, first.base + 5, opendir)    # not this folder's offset
    assert other is not first and other.ino == 8


def test_kept_listings_are_bounded_and_go_with_their_folder():
    listings, (opendir, _) = FolderListings(kept=4), snapshots()
    old, _ = listings.find(1, 0, opendir)
    for ino in range(2, 8):
        listings.find(ino, 0, opendir)
    assert len(listings) == 4
    again, at = listings.find(1, old.base + 3, opendir)    # dropped: a new one, same place
    assert again is not old and at == 3
    listings.forget(1)
    assert len(listings) == 3 and listings.find(1, again.base + 3, opendir)[0] is not again


def test_numbers_wrap_below_the_sign_bit():
    listings, (opendir, _) = FolderListings(), snapshots()
    listings._next = NUMBERS - 1
    last, _ = listings.find(1, 0, opendir)
    wrapped, _ = listings.find(1, 0, opendir)
    assert last.base == (NUMBERS - 1) << POSITION_BITS and last.base + (1 << POSITION_BITS) - 1 < 1 << 63
    assert wrapped.base == 1 << POSITION_BITS



def test_names_gone_reach_the_folders_listings_made_before_and_are_bounded():
    listings, (opendir, _) = FolderListings(gone_kept=3), snapshots()
    old, _ = listings.find(1, 0, opendir)
    other, _ = listings.find(2, 0, opendir)
    listings.names_gone(1, (b"a", b"b"))
    later, _ = listings.find(1, 0, opendir)
    assert old.gone == {b"a", b"b"} and not other.gone and not later.gone
    assert listings.find(1, old.base + 1, opendir)[0] is old     # read on: now the most recently read
    listings.names_gone(1, (b"c",))             # 4 names: the least recently read go till 3 are left
    assert old.gone == {b"a", b"b", b"c"} and len(listings) == 1
    assert listings.find(1, later.base + 1, opendir)[0] is not later
    listings.forget(1)                          # (their names no longer count)
    kept, _ = listings.find(2, 0, opendir)
    listings.names_gone(2, (b"x", b"y", b"z"))
    assert kept.gone == {b"x", b"y", b"z"} and listings.find(2, kept.base + 1, opendir)[0] is kept


def test_lean_rule_answers_a_folders_lookups_from_its_first_until_told_otherwise(monkeypatch):
    """What a folder's first LOOKUP sized answers the LOOKUPs of its other names once
    each, and nothing once a name is removed through the mount, the tree reports a
    change (also one told while the sizing ran), or the time is up."""
    from scopefs.daemon import listings
    rule = listings.LeanRule(entry_timeout=2.0)
    a, b, attr = object(), object(), object()
    rule.listed_lean(7, [("a", a)])
    rule.listed_lean(7, [("b", b), ("a", object())])       # (a name kept keeps its node)
    assert rule.unsized(7) == {"a": a, "b": b} and rule.unsized(7) == {}

    def sized() -> None:
        rule.sized(7, {"b": (b, attr)}, rule.changes)
    sized()
    assert rule.answer(7, "b") == (b, attr) and rule.answer(7, "b") is None
    assert rule.answered == 1
    sized()
    rule.names_gone(7, [b"b"])
    assert rule.answer(7, "b") is None
    sized()
    rule.changed((), ())
    assert rule.answer(7, "b") is None
    before = rule.changes
    rule.changed((), ())                    # (while the sizing ran)
    rule.sized(7, {"b": (b, attr)}, before)
    assert rule.answer(7, "b") is None
    now = listings.time.monotonic()
    sized()
    monkeypatch.setattr(listings.time, "monotonic", lambda: now + 2.5)
    assert rule.answer(7, "b") is None



def test_lean_rule_changes_told_from_threads_are_never_lost_while_the_loop_answers():
    """`changed` comes from the notifier's listeners in any thread, while the loop sizes
    and answers: once the loop sees a change counted, nothing sized before it is answered
    (no change lost, no answer kept across one), and nothing raises."""
    import sys
    import threading

    import trio

    from scopefs.daemon.listings import LeanRule
    rule = LeanRule(entry_timeout=1e-4)         # (answers expire now and then: that path too)
    node, attr = object(), object()
    stop, errors = threading.Event(), []

    def tell_changes():
        try:
            while not stop.is_set():
                rule.changed((), ())
        except Exception as exc:                # (reported below)
            errors.append(exc)

    async def answer_while_told():
        stale = answers = 0
        for i in range(30_000):
            folder = i % 3
            before = rule.changes
            rule.sized(folder, {"x": (node, attr)}, before)
            seen = rule.changes
            found = rule.answer(folder, "x")
            answers += found is not None
            stale += found is not None and seen != before
            if i % 1000 == 0:
                await trio.lowlevel.checkpoint()
        return stale, answers

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                 # (threads interleave with the loop at every chance)
    threads = [threading.Thread(target=tell_changes) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        stale, answers = trio.run(answer_while_told)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(switch)
    assert not errors
    assert stale == 0 and answers > 0

def test_lean_rule_probes_a_stat_walk_less_often_each_time():
    """LOOKUPs of names listed lean (a stat walk) turn the next listings full: 64, then
    twice as many at each trip after a probe, and 64 again once folders listed lean bring
    no LOOKUPs (a walk of names)."""
    from scopefs.daemon.listings import FULL_LISTINGS, LEAN_MISSES, LeanRule
    rule = LeanRule()
    folders = iter(range(100, 10_000))

    def probe(looked_up: bool) -> int:
        """A lean listing of a new folder, looked up or not: the full listings that follow."""
        assert rule.lean()
        folder = next(folders)
        rule.listed_lean(folder, [("a.csv", object())])
        for _ in range(LEAN_MISSES if looked_up else 0):
            rule.looked_up(folder)
        full = rule.full_left
        assert not any(rule.lean() for _ in range(full))
        return full
    assert [probe(True) for _ in range(3)] == [FULL_LISTINGS, 2 * FULL_LISTINGS, 4 * FULL_LISTINGS]
    assert [probe(False) for _ in range(3)] == [0, 0, 0]
    assert probe(True) == FULL_LISTINGS


def test_lean_rule_gives_a_folder_dropped_at_a_trip_its_lean_listing_again_until_told_otherwise(monkeypatch):
    """A lean listing read to the end keeps its rows; a trip that drops the kernel's copy
    of the folder has it given again once (no new scan), not after a change told since
    it was made, nor once the kernel would no longer trust what it gave, nor a listing
    that left nothing out; the rows kept are bounded."""
    from scopefs.daemon import listings
    from scopefs.daemon.listings import LEAN_MISSES, LeanRule
    rule = LeanRule(entry_timeout=60.0, attr_timeout=30.0)

    def listed(ino: int, lean_rows: int = 1, rows: int = 3):
        listing = Listing(object(), ino, lean=True, rows=[], changes=rule.changes)
        batch = [(k + 1, b"n%d" % k, 100 + k, 0o100000 if k < lean_rows else object(), object())
                 for k in range(rows)]
        assert listing.record(0, batch[:1], True) is False and listing.record(1, batch[1:], False)
        rule.recorded(listing)
        if lean_rows:
            rule.listed_lean(ino, [("n0", batch[0][4])])
        return listing

    def trip(*inos):
        for ino in inos:
            listed(ino)
        listed(99, lean_rows=0)                 # (no file left out: nothing to give again)
        for _ in range(LEAN_MISSES):
            rule.looked_up(inos[0])
    first = listed(7)
    trip(8, 7)
    again = rule.replay(7)
    assert again is not None and again.reader is not first.reader and len(again.rows) == 3
    assert rule.replay(7) is None and rule.replay(8) is None and rule.replay(99) is None
    trip(8, 7)
    rule.changed()
    assert rule.replay(7) is None
    trip(8, 7)
    now = listings.time.monotonic()
    monkeypatch.setattr(listings.time, "monotonic", lambda: now + 31)
    assert rule.replay(7) is None
    monkeypatch.undo()
    monkeypatch.setattr(listings, "LEAN_ROWS", 5)
    trip(8, 6, 7)                               # 9 rows: the oldest dropped
    assert rule.replay(6) is None and rule.replay(7) is not None and rule._rows == 0
    broken = Listing(object(), 5, lean=True, rows=[])
    assert broken.record(3, [(4, b"x", 1, 0, None)], False) is False and broken.rows is None


def test_lean_rule_keeps_at_most_lean_unsized_names_however_a_reply_gives_them(monkeypatch):
    """The names lean replies gave are kept up to LEAN_UNSIZED in all, whether a reply
    gives one or many (the first of a name kept), and a folder's are given back once."""
    from scopefs.daemon import listings
    monkeypatch.setattr(listings, "LEAN_UNSIZED", 5)
    rule = listings.LeanRule()
    nodes = [object() for _ in range(8)]
    rule.listed_lean(1, [("a", nodes[0]), ("a", nodes[1]), ("b", nodes[2])])
    rule.listed_lean(2, [(f"n{k}", nodes[k]) for k in range(8)])
    assert rule.unsized(1) == {"a": nodes[0], "b": nodes[2]}
    assert rule.unsized(2) == {"n0": nodes[0], "n1": nodes[1], "n2": nodes[2]} and rule.unsized(2) == {}
