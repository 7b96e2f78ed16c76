"""The node contract's declarations (backends/nodes.py), checked over every backend."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import scopefs.backends
from scopefs.backends.nodes import FileHandle, Symlink


def subclasses(cls):
    """The subclasses the package defines (not the tests')."""
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("scopefs."):
            yield sub
        yield from subclasses(sub)


def test_every_call_that_may_block_is_declared():
    """The daemon calls flush, fsync and a link's target on the event loop unless the class
    declares that they may block (the thread rule): a handle that writes back at flush or
    fsync, or a link whose target is read from somewhere, must say so."""
    for module in pkgutil.walk_packages(scopefs.backends.__path__, "scopefs.backends."):
        importlib.import_module(module.name)
    handles = list(subclasses(FileHandle))
    assert len(handles) >= 10
    for cls in handles:
        if cls.flush is not FileHandle.flush:
            assert cls.flush_blocks, cls
        if cls.fsync is not FileHandle.fsync:
            assert cls.fsync_blocks, cls
    for cls in subclasses(Symlink):
        if isinstance(inspect.getattr_static(cls, "target", None), property):
            assert cls.target_blocks, cls


def test_the_contract_imports_no_machinery():
    """nodes.py is the interface only: importing it loads no numpy, mmap or kernel.py."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, scopefs.backends.nodes; print(' '.join(sys.modules))"],
        check=True, capture_output=True, text=True).stdout.split()
    assert "scopefs.backends.nodes" in loaded
    assert not {"numpy", "mmap", "scopefs.backends.kernel", "scopefs.backends.blocks"} & set(loaded)
