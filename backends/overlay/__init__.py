"""Two directory trees shown as one: a read-only *static* root under a writable *overlay*.

The rules follow Linux overlayfs, with fuse-overlayfs's on-disk conventions (`rules`):
- directories present in both are merged; on a name clash the overlay wins;
- changes go to the overlay; changing a file that exists only in the static root first
  copies it up (written in the overlay's work directory, fsynced, renamed into place;
  an open that truncates copies no data), owner, mode and times kept;
- deleting something the static root has leaves a whiteout in the overlay; a directory
  made or moved where the static root has one is opaque (the static entries stay hidden);
- a directory with static entries merged in cannot be renamed (EXDEV: tools copy);
  files, links and overlay-only directories can, with RENAME_NOREPLACE and RENAME_EXCHANGE;
- hard links of static files link their copy-up (as overlayfs).
The static root is never written. Names starting with `.wh.` are reserved.

Modules: `rules` (reserved names on disk), `root` (what a root must do: the `Root`
protocol), `local` (a directory), `remote` (an object store through fsspec), `walk` (work
done ahead for walkers), `tree` (the nodes and the merge).
"""
from .local import LocalRoot
from .remote import FETCH_BLOCK, FsspecRoot
from .root import Root
from .tree import OverlayTree
from .walk import ScanAhead, SiblingWarmer

__all__ = ["FETCH_BLOCK", "FsspecRoot", "LocalRoot", "OverlayTree", "Root", "ScanAhead", "SiblingWarmer"]
