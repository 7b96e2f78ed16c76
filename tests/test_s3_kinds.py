"""Kinds other than copick mounted straight from S3 (SeaweedFS on loopback): the same
tree as the local mount, read-only with a notice, no credential anywhere a user or
another user may look, and a server that goes away costs reads their EIO only."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SCOPEFS, MountFailed, alive, daemon_pid, daemon_status, run_scopefs
from contract import READ_CHECKS, Walk, check_read_only_refuses_changes
from iid_samples import ODD_ADDRESSES, masks_for
from s3server import KEY, SECRET, s3  # noqa: F401 (a fixture)
from test_contract import sample_sources  # noqa: F401 (a fixture)

from scopefs.backends import open_tree, source_kind
from scopefs.backends.options import Options
from scopefs.formats.iid import IIDFile


def s3_options(server) -> list[str]:
    return ["-o", f"endpoint_url={server.endpoint},key={KEY},secret={SECRET}"]


def mount_both(mount, server, url: str, local: Path, *local_options: str, remote_options: tuple[str, ...] = ()):
    """The source mounted from S3 and from disk: (the S3 mount, the notice it printed,
    the names whose content differs); both trees hold the same names."""
    remote = mount(url, *s3_options(server), *remote_options)
    notice = mount.stderr
    expected = tree_of(mount(local, *local_options))
    got = tree_of(remote)
    assert sorted(got) == sorted(expected) and len(got) > 5
    return remote, notice, [name for name in expected if got[name] != expected[name]]


def tree_of(root: Path) -> dict[str, bytes | str]:
    """Every name under root: a file's bytes, a link's target, a folder's marker."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
                assert len(out[rel]) == path.stat().st_size, rel
    return out


def build_iid(path: Path) -> Path:
    """An .iid with odd addresses, domains, two groups and metadata."""
    f = IIDFile()
    for i, (address, mask) in enumerate(zip(ODD_ADDRESSES, masks_for(len(ODD_ADDRESSES)))):
        f.add(mask, (3 * i, 2 * i, 3 * i + mask.shape[0], 2 * i + mask.shape[1]), address=address,
              domain=f"dom{i % 3}".encode(), groups=("plain",) if i % 2 else ("odd/group name",))
    f.meta = {"image": "leaf.png"}
    f.save(str(path))
    return path


@pytest.fixture(scope="module")
def iid_object(s3, tmp_path_factory):
    """A local .iid with odd addresses and groups, and the same file in a bucket."""
    path = build_iid(tmp_path_factory.mktemp("iid") / "sample.iid")
    fs = s3.filesystem()
    fs.mkdir("iids")
    fs.put_file(str(path), "iids/sample.iid")
    return path, "s3://iids/sample.iid"


def test_iid_from_s3_is_the_local_tree(s3, iid_object, mount):
    local, url = iid_object
    remote, notice, differing = mount_both(mount, s3, url, local, "-o", "ro")
    assert notice == "scopefs: mounted read-only: an .iid in object storage cannot be rewritten in place\n"
    assert differing == ["README.txt"]                       # it names where the file is
    with pytest.raises(OSError) as err:
        (remote / "meta.json").write_text("{}")
    assert err.value.errno == errno.EROFS


def test_no_credential_in_cmdline_status_log_or_errors(s3, iid_object, fsdb_bucket, imgstores, mount):
    urls = [iid_object[1], fsdb_bucket[1], imgstores["png"][1]]
    wrong = "wrong-secret-Kx93"
    for url in urls:
        remote = mount(url, *s3_options(s3), "--debug")
        cmdline = Path(f"/proc/{daemon_pid(remote)}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline and KEY.encode() not in cmdline
        assert b"endpoint_url" in cmdline                   # the other options are still there
        tree_of(remote)                                     # every file read
        for args in (["status", str(remote)], ["status", "--json", str(remote)]):   # (not others' mounts)
            status = run_scopefs(*args)
            assert str(remote) in status.stdout, status.stderr
            assert SECRET not in status.stdout + status.stderr
        with pytest.raises(MountFailed) as err:
            mount(url, "-o", f"endpoint_url={s3.endpoint},key={KEY},secret={wrong}")
        assert err.value.stderr.count("\n") == 1 and wrong not in err.value.stderr
    for source in ("s3://iids/missing.iid", "s3://iids/sample", "s3://iids"):
        with pytest.raises(MountFailed) as err:
            mount(source, *s3_options(s3))
        assert err.value.stderr.count("\n") == 1 and SECRET not in err.value.stderr
        if source == "s3://iids/sample":
            assert err.value.stderr.endswith("s3://iids/sample: it does not exist\n")
    assert "cannot tell what kind of source s3://iids is" in err.value.stderr
    log = mount.log()
    assert "get_object" in log.lower() or "GET" in log          # the debug log saw the requests
    assert SECRET not in log and wrong not in log


@pytest.fixture(scope="module")
def fsdb_bucket(s3, tmp_path_factory):
    """The sample FSDB (images with metadata, an .iid, an imgstore) on disk and in a bucket."""
    from scopefs.formats.samples import make_fsdb
    local = make_fsdb(str(tmp_path_factory.mktemp("fsdb") / "db"))
    fs = s3.filesystem()
    fs.mkdir("plants")
    fs.put(local + "/", "plants/db/", recursive=True)
    return Path(local), "s3://plants/db"


def test_fsdb_from_s3_is_the_local_tree_read_only(s3, fsdb_bucket, mount):
    local, url = fsdb_bucket
    remote, notice, differing = mount_both(mount, s3, url, local, "-o", "ro")
    assert notice == "scopefs: mounted read-only: an FSDB in object storage has no lock that plantdb would honour\n"
    # the views of the .iid and the imgstore inside, whose README and store.json say where they are
    assert differing == ["plant_001/segmentation/cells.iid.view/README.txt", "plant_001/video.view/store.json"]
    with pytest.raises(OSError) as err:
        (remote / "plant_001" / "images" / "new.png").write_bytes(b"x")
    assert err.value.errno == errno.EROFS


@pytest.fixture(scope="module")
def imgstores(s3, tmp_path_factory):
    """Local stores (PNG frames with extra data, npy frames served as PNG, an MJPEG video)
    and their copies in a bucket."""
    from stores import make_store
    base = tmp_path_factory.mktemp("stores")
    made = {"png": make_store(base / "png", "png", extra=True),
            "npy": make_store(base / "npy", "npy", shape=(24, 32)),
            "avi": make_store(base / "avi", "mjpeg/avi", shape=(64, 64, 3), video=True, numbers=range(7), chunksize=3)}
    fs = s3.filesystem()
    fs.mkdir("stores")
    for name, sample in made.items():
        fs.put(str(sample.path) + "/", f"stores/{name}/", recursive=True)
    return {name: (sample.path, f"s3://stores/{name}") for name, sample in made.items()}


@pytest.mark.parametrize("kind", ["png", "npy", "avi"])
def test_imgstore_from_s3_is_the_local_tree(s3, imgstores, kind, mount, tmp_path):
    local, url = imgstores[kind]
    caches = tmp_path / "caches"
    caches.mkdir()
    remote, notice, differing = mount_both(mount, s3, url, local, remote_options=("-o", f"chunk_cache_dir={caches}"))
    assert differing == ["store.json"]                       # its "source"
    status = daemon_status(remote)
    if kind == "avi":                 # each chunk fetched once, into a cache that says where it is
        assert notice.startswith("scopefs: video chunks are fetched whole into ")
        assert status["chunk_fetches"] == 3 and status["chunk_cache"] in notice
        assert os.path.isdir(status["chunk_cache"])
        assert run_scopefs("umount", str(remote)).returncode == 0
        assert not os.path.exists(status["chunk_cache"])                   # removed at unmount
    else:                             # frames are objects: no chunk cache, not even its folder
        assert notice == "" and "chunk_fetches" not in status and list(caches.iterdir()) == []


@pytest.mark.daemon_log(r"EndpointConnectionError: Could not connect to the endpoint URL",
                        reason="the server is stopped mid-test (botocore's error is no OSError: the "
                               "daemon logs it with its traceback)")
@pytest.mark.daemon_log(r"GET failed: ClientConnectorError", reason="the server is stopped mid-test: "
                        "a read's GET fails, and that read gets EIO")
def test_server_gone_mid_read_costs_reads_their_eio_and_comes_back(tmp_path, mount):
    """While the server is down: a read that needs it fails with EIO within the mount's
    timeout, listings and unmount still answer; once it is back, reads work again."""
    from s3server import SeaweedS3
    server = SeaweedS3(tmp_path / "weed")
    try:
        from stores import make_store
        fs = server.filesystem()
        fs.mkdir("gone")
        fs.pipe("gone/sample.iid", Path(build_iid(tmp_path / "sample.iid")).read_bytes())
        fs.put(str(make_store(tmp_path / "store", "png").path) + "/", "gone/store/", recursive=True)
        local = mount(tmp_path / "sample.iid", "-o", "ro")
        remote = mount("s3://gone/sample.iid", *s3_options(server), "-o", "timeout=15")
        store = mount("s3://gone/store", *s3_options(server), "-o", "timeout=15")
        entries = sorted(n for n in os.listdir(local) if n[:6].isdigit())
        # a mask read needs its segment, a (passed through) frame its object
        files = [(remote / name / "mask.png", local / name / "mask.png") for name in entries[:4]]
        files += [(store / "frames" / f"{i:06d}.png", tmp_path / "store" / f"{i // 5:06d}" / f"{i % 5:06d}.png")
                  for i in range(4)]
        for got, expected in files[::4]:
            assert got.read_bytes() == expected.read_bytes()
        server.stop()
        for got, _ in files[1::4]:
            started = time.monotonic()
            with pytest.raises(OSError) as err:
                got.read_bytes()
            assert err.value.errno == errno.EIO and time.monotonic() - started < 15 + 5
        assert sorted(n for n in os.listdir(remote) if n[:6].isdigit()) == entries    # listings answer
        assert len(os.listdir(store / "frames")) == 12
        assert daemon_status(remote)["errors"] >= 1 and daemon_status(store)["errors"] >= 1
        server.start()
        for got, expected in files[1::4] + files[2::4]:
            assert got.read_bytes() == expected.read_bytes()
        server.stop()
        assert (remote / entries[5] / "mask.png").stat().st_size > 0    # sizes need no server
        pid = daemon_pid(remote)
        assert subprocess.run([*SCOPEFS, "umount", str(remote)], timeout=60).returncode == 0
        assert not os.path.ismount(remote) and not alive(pid)
    finally:
        server.stop()


def test_a_walk_costs_one_list_per_folder(s3, imgstores, fsdb_bucket, iid_object, mount):
    """Names and sizes of a whole tree cost one LIST per folder of the source at most,
    and no HEAD per file."""
    for url, folders in ((imgstores["png"][1], 1 + 3), (fsdb_bucket[1], None), (iid_object[1], 0)):
        remote = mount(url, *s3_options(s3))
        for dirpath, dirnames, filenames in os.walk(remote):
            for name in filenames:
                os.stat(os.path.join(dirpath, name))
        requests = daemon_status(remote)["s3_requests"]
        if folders is None:          # FSDB: its folders, and each fileset's file metadata folder
            folders = sum(1 for _ in os.walk(fsdb_bucket[0])) + 3 * 2       # (missing: s3fs lists its parent too)
        # (and the source itself, at mount: a HEAD, and s3fs's LIST when it is a folder)
        assert requests["head"] <= 1 and requests["list"] <= folders + 1, (url, requests)
        for dirpath, dirnames, filenames in os.walk(remote):             # again: all known
            for name in filenames:
                os.stat(os.path.join(dirpath, name))
        assert daemon_status(remote)["s3_requests"] == requests


@pytest.mark.parametrize("value, anonymous", [("", True), ("yes", True), ("no", False)])
def test_anon_alone_asks_for_no_credentials(value, anonymous):
    """`-o anon`, the bare flag the manual gives, is `-o anon=yes` (it used to be ignored)."""
    from scopefs.backends.options import Options
    from scopefs.backends.remote import s3_args
    assert s3_args("s3://bucket/store", Options({"anon": value})).get("anon", False) is anonymous


def test_credentials_in_the_url_are_refused_in_a_line_that_stays_readable_masked():
    """The refusal names the ways to give credentials; masking must not eat them (it took
    `secret= or` for a secret)."""
    from scopefs.backends.options import MountError, Options
    from scopefs.backends.remote import redact, s3_args
    with pytest.raises(MountError) as refused:
        s3_args("s3://key:sec@bucket/store", Options())
    assert redact(str(refused.value)) == ("credentials in the URL are not accepted: give them as "
                                          "-o key=***,secret=*** or in the AWS environment")


# -- the node contract (tests/contract.py) on every kind in the bucket, copick's static
# root too, without the kernel (here: they share this module's server) ------------------

#: (name, URL in the bucket "samples", the key of sample_sources uploaded there)
SOURCES = [("imgstore-video", "s3://samples/video", "video"),
           ("imgstore-directory", "s3://samples/directory", "directory"),
           ("iid", "s3://samples/cells.iid", "iid"),
           ("fsdb", "s3://samples/plantdb", "fsdb"),
           ("copick", "copick", "copick")]


@pytest.fixture(scope="module")
def remote_sources(s3, sample_sources, tmp_path_factory) -> dict:  # noqa: F811
    """Each sample uploaded; copick as a config whose static root is in the bucket."""
    fs = s3.filesystem()
    fs.mkdir("samples")
    for name, url, key in SOURCES:
        local = Path(sample_sources[key])
        if key == "iid":
            fs.put_file(str(local), url[len("s3://"):])
        elif key == "copick":
            fs.put(str(local.parent / "static") + "/", "samples/copick-static/", recursive=True)
        else:
            fs.put(str(local) + "/", url[len("s3://"):] + "/", recursive=True)
    config = json.loads(Path(sample_sources["copick"]).read_text())
    config.update(static_root="s3://samples/copick-static", static_fs_args=s3.fs_args)
    path = tmp_path_factory.mktemp("copick") / "config.json"
    path.write_text(json.dumps(config))
    return {name: str(path) if key == "copick" else url for name, url, key in SOURCES}


@pytest.fixture(scope="module", params=[name for name, _, _ in SOURCES])
def remote_tree(request, s3, remote_sources, tmp_path_factory):  # noqa: F811
    source = remote_sources[request.param]
    options = {} if request.param == "copick" else {"endpoint_url": s3.endpoint, "key": KEY, "secret": SECRET}
    kind = source_kind(source, None, options)
    tree = open_tree(kind, source, Options(options), read_only=True,
                     mountpoint=str(tmp_path_factory.mktemp("mnt")))
    yield tree
    tree.close()


@pytest.fixture(scope="module")
def walked(remote_tree) -> Walk:
    return Walk.of(remote_tree)


@pytest.mark.parametrize("check", READ_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract_over_s3(walked, check):
    check(walked)


async def test_s3_trees_refuse_changes(walked):
    await check_read_only_refuses_changes(walked)


@pytest.mark.parametrize("name", ["imgstore-directory", "fsdb", "copick"])
def test_a_closed_tree_leaves_no_connection_open(name, s3, remote_sources, tmp_path):  # noqa: F811
    """Reads open a pool of connections (the GETs of presigned URLs); closing the tree at
    unmount must close it, whatever the kind."""
    import gc
    from scopefs.backends.remote import CountedFilesystem
    source = remote_sources[name]
    options = {} if name == "copick" else {"endpoint_url": s3.endpoint, "key": KEY, "secret": SECRET}
    def filesystems() -> set:
        return {fs for fs in gc.get_objects() if isinstance(fs, CountedFilesystem)}
    others = filesystems()                              # (other tests' trees still open)
    tree = open_tree(source_kind(source, None, options), source, Options(options), read_only=True,
                     mountpoint=str(tmp_path))
    Walk.of(tree)                                       # reads every file
    mine = filesystems() - others
    assert any(fs._http is not None for fs in mine)     # (its reads made a pool)
    tree.close()
    assert [fs for fs in mine if fs._http is not None and not fs._http.closed] == []
