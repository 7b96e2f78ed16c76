"""Sources in object storage (`s3://bucket/key`): what every kind shares.

- `redact`: credentials masked in every text a user or a log may see.
- `public_url`: a URL as it may be shown (no `user:password@`).
- `open_filesystem`: the fsspec filesystem of a URL, from mount options (`endpoint_url`,
  `key`, `secret`, `token`, `region`, `profile`, `anon`) over the usual AWS environment
  and config files, with bounded timeouts so that a server that went away costs a read
  its EIO, not a hung worker.
- `RemoteObject`: one object read by byte ranges (nothing downloaded whole).

fsspec and s3fs are imported only when a remote source is opened: the CLI imports this
module for `redact`.
"""
from __future__ import annotations

import errno
import os
import re

from .options import MountError, Options

_SECRETS = [
    (re.compile(r"(\w:/+[^/\s:@]*:)[^/\s@]+@"), r"\1***@"),                      # user:password@ in URLs
    (re.compile(r"(?i)((?:secret|password|passwd|token|key)[\w-]*[\"']?\s*[=:]\s*[\"']?)[^\s,\"'}]+"),
     r"\1***"),
]

#: mount options of a remote source -> s3fs arguments
S3_OPTIONS = ("endpoint_url", "key", "secret", "token", "region", "profile", "anon")
#: options whose values are credentials: the CLI hands them to the daemon out of its argv
SECRET_OPTIONS = ("key", "secret", "token")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
#: at open, byte ranges closer than this are fetched as one request
MERGE_GAP = 256 << 10
MERGE_BLOCK = 32 << 20


def redact(text: str) -> str:
    """The text with credentials (URL passwords, secret=..., token: ...) masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def public_url(url: str) -> str:
    """The URL without any `user:password@` part."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")          # an '@' in a key is part of the name
    return scheme + sep + host.rpartition("@")[2] + slash + path


def open_filesystem(url: str, options: Options):
    """(filesystem, path inside it) of an `s3://` URL, made from the mount options; the
    filesystem counts its requests."""
    fs, path = filesystem(url, s3_args(url, options))
    return CountedFilesystem(fs), path


def s3_args(url: str, options: Options) -> dict:
    """s3fs's arguments for an `s3://` URL from the mount options; what they do not give,
    botocore finds as always (AWS_* variables, ~/.aws/config and credentials)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in ("s3", "s3a"):
        raise MountError(f"{public_url(url)}: only s3:// URLs can be mounted directly")
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise MountError("credentials in the URL are not accepted: give them as -o key=KEY,secret=SECRET "
                         "or in the AWS environment")
    values = {name: options.str(name, "") for name in S3_OPTIONS}
    args: dict = {"skip_instance_cache": True,
                  "config_kwargs": {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
                                    "retries": {"max_attempts": 2}}}
    for name in ("key", "secret", "token", "profile"):
        if values[name]:
            args[name] = values[name]
    if options.flag("anon"):
        args["anon"] = True
    client = {k: v for k, v in (("endpoint_url", values["endpoint_url"]),
                                ("region_name", values["region"])) if v}
    if client:
        args["client_kwargs"] = client
    return args


def filesystem(url: str, fs_args: dict):
    """fsspec's filesystem for url with fs_args (s3fs for s3://), and the path in it."""
    import fsspec                                    # only remote sources need it
    try:
        return fsspec.core.url_to_fs(url, **fs_args)
    except Exception as exc:
        raise MountError(f"{public_url(url)} cannot be opened: {type(exc).__name__}: {redact(str(exc))}") from None


def probe(fs, path: str) -> dict:
    """The object's info, or a one-line MountError saying why there is none."""
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise MountError(f"s3://{path} does not exist") from None
    except Exception as exc:
        raise MountError(f"s3://{path} cannot be read: {type(exc).__name__}: {redact(str(exc))}") from None


def mtime_ns(info: dict) -> int:
    """An object's modification time in ns (0 if the store gives none)."""
    mtime = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return int(float(mtime) * 1e9)


class RemoteObject:
    """One object, read by byte ranges; a short read is an error, never silent."""

    def __init__(self, fs, path: str, size: int):
        self.fs, self.path, self.size = fs, path, size

    def read(self, offset: int, length: int) -> bytes:
        data = self.fs.cat_file(self.path, start=offset, end=offset + length)
        if len(data) != length:
            raise OSError(f"s3://{self.path}: {len(data)} bytes at {offset}, expected {length}")
        return data

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Many (offset, length) ranges: neighbours fetched as one request, the requests
        sent concurrently."""
        from fsspec.utils import merge_offset_ranges
        if not ranges:
            return []
        order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
        starts = [ranges[i][0] for i in order]
        ends = [ranges[i][0] + ranges[i][1] for i in order]
        _, block_starts, block_ends = merge_offset_ranges([self.path] * len(starts), starts, ends,
                                                          max_gap=MERGE_GAP, max_block=MERGE_BLOCK, sort=False)
        blocks = self.fs.cat_ranges([self.path] * len(block_starts), block_starts, block_ends)
        for block, start, end in zip(blocks, block_starts, block_ends):
            if isinstance(block, Exception):
                raise block
            if len(block) != end - start:
                raise OSError(f"s3://{self.path}: {len(block)} bytes at {start}, expected {end - start}")
        out: list[bytes] = [b""] * len(ranges)
        b = 0
        for i, start, end in zip(order, starts, ends):
            while block_ends[b] < end:
                b += 1
            out[i] = blocks[b][start - block_starts[b]:end - block_starts[b]]
        return out


def remote_kind(url: str, options: dict[str, str]) -> str:
    """The kind of an object-store source: from its name (`.iid`, `metadata.yaml`), else
    from one listing of the prefix (a `metadata.yaml` object: an imgstore; a `romidb`
    marker: an FSDB)."""
    path = url.rstrip("/")
    if path.endswith(".iid"):
        return "iid"
    if path.endswith("/metadata.yaml"):
        return "imgstore"
    fs, root = open_filesystem(path, Options(options))
    try:
        names = {entry.rstrip("/").rpartition("/")[2] for entry in fs.ls(root, detail=False)}
    except FileNotFoundError:
        raise MountError("it does not exist") from None
    except Exception as exc:
        raise MountError(f"{public_url(url)} cannot be listed: {type(exc).__name__}: {redact(str(exc))}") from None
    if "metadata.yaml" in names:
        return "imgstore"
    if "romidb" in names:
        return "fsdb"
    raise MountError(f"cannot tell what kind of source {public_url(url)} is (not an .iid name, no "
                     f"metadata.yaml, no romidb marker): give -t imgstore, iid or fsdb")


class CountedFilesystem:
    """An fsspec filesystem whose requests to an S3 server are counted by kind (LIST,
    HEAD, GET, other), for `scopefs status`: what a walk or a read cost the server. They
    are counted as botocore makes them, so the requests s3fs makes on its own (a HEAD
    before a read, the LISTs of `info` on a folder) count too. Other filesystems (memory://
    in unit tests) are not counted.

    `get_range` is the reads' GET: for S3, a URL presigned by botocore and fetched with
    aiohttp on a pool of at most POOL connections. botocore's own GetObject costs several
    times the CPU (it builds, checks and parses every request and reply in Python), which
    is what bounds a Python daemon reading many small objects."""
    OPERATIONS = {"ListObjectsV2": "list", "ListObjects": "list", "HeadObject": "head", "GetObject": "get"}
    POOL = 16

    def __init__(self, fs):
        self._fs = fs
        self.requests = {"list": 0, "head": 0, "get": 0, "other": 0}
        self._s3 = hasattr(fs, "_s3")       # s3fs: its botocore client is made at first use
        self._client = None                 # the client counted (s3fs may make a new one)
        self._http = None                   # aiohttp session of get_range, made on fsspec's loop

    def _count(self, model, **_) -> None:
        self.requests[self.OPERATIONS.get(model.name, "other")] += 1

    def _watch(self, client) -> None:
        if client is not self._client:
            client.meta.events.register("before-call.s3", self._count)
            self._client = client

    def __getattr__(self, name):
        if self._s3:
            if self._fs._s3 is None:
                self._fs.connect()          # (makes the client; no request)
            self._watch(self._fs._s3)
        return getattr(self._fs, name)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes start..end of an object, by one GET (a coroutine for fsspec's loop)."""
        if not self._s3:
            return await self._cat_file(path, start=start, end=end)
        import aiohttp
        client = await self._fs.set_session()
        self._watch(client)
        bucket, key, version = self._fs.split_path(path)
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        url = await client.generate_presigned_url("get_object", Params=params)
        if self._http is None:
            import ssl
            tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.POOL, ssl=tls),
                timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT))
        self.requests["get"] += 1
        try:
            async with self._http.get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as reply:
                data = await reply.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OSError(errno.EIO, f"GET failed: {type(exc).__name__}: {exc}", path) from None
        if reply.status == 404:
            raise FileNotFoundError(errno.ENOENT, "no such object", path)
        if reply.status not in (200, 206):
            raise OSError(errno.EACCES if reply.status == 403 else errno.EIO, f"the server answered {reply.status}",
                          path)
        return data if reply.status == 206 else data[start:end]

    def close(self) -> None:
        """At unmount: the connections of get_range."""
        if self._http is not None:
            from fsspec.asyn import sync
            try:
                sync(self._fs.loop, self._http.close, timeout=5)
            except Exception:
                pass
            self._http = None
