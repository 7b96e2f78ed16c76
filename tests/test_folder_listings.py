"""The daemon's listings of directories the kernel opened itself (`daemon/listings.py`),
without the kernel: found by the offsets they gave, bounded, dropped with their folder."""
from __future__ import annotations

from scopefs.daemon.listings import NUMBERS, POSITION_BITS, FolderListings


def snapshots():
    """An opendir that counts the snapshots it made."""
    made = []

    def opendir():
        made.append(object())
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
