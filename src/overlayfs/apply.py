"""Applying a layer tar: graphdriver ApplyDiff, containerd Applier, ``umoci raw unpack``.

:func:`apply_layer` reads a layer (a path or a binary file object; plain tar,
gzip -- several members too -- zstd, bzip2 or xz, told apart by magic) and
hands the uncompressed stream to the C core (``csrc/tar.c`` parses it,
``csrc/apply.c`` makes the entries fd-relative under the target: every rule
about names, links, whiteouts, owners and duplicates is there and in
``csrc/ovl.h``).  Three stages, each in its own thread: one reads and
inflates, the caller's applies, one hashes what was applied (the diff ID is
the sha256 of every uncompressed byte, trailing zeros included); all three
release the GIL for their heavy part, so they share the cores.

Modes:

- ``"layer"`` (dockerd's overlay2): ``dest`` must not exist; it is built
  beside and published with one rename after one ``syncfs``, or not at all.
  Whiteouts in the kernel's form (``whiteouts="chardev"``: char 0:0;
  ``"xattr"``: a zero-size file with ``<ns>.overlay.whiteout``), opaque
  directories with ``<ns>.overlay.opaque=y``, an opaque layer root emulated
  with whiteouts of the ``lowers`` (refused without them).
- ``"rootfs"`` (moby ApplyLayer): into the existing directory ``dest``;
  whiteouts delete, an opaque marker deletes what this layer did not make.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from . import _compress
from ._core import (
    APPLY_DEVICES,
    APPLY_NO_SYNC,
    APPLY_SAME_OWNER,
    APPLY_TAR_SPLIT,
    APPLY_XATTR_WHITEOUTS,
    _Applier,
)
from .errors import CorruptArchiveError, DiffIDMismatchError

__all__ = ["ApplyResult", "apply_layer"]

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_QUEUE_DEPTH = 4  # chunks in flight between two stages (memory bound)


@dataclass(frozen=True)
class ApplyResult:
    """What :func:`apply_layer` did."""

    diff_id: str
    """``sha256:...`` of the uncompressed stream (every byte read, to EOF)."""
    digest: str
    """``sha256:...`` of the bytes as given (the blob digest; = diff_id if uncompressed)."""
    compression: str
    """``none``, ``gzip``, ``zstd``, ``bzip2`` or ``xz``."""
    size: int
    """Uncompressed bytes (the tar stream)."""
    compressed_size: int
    entries: int
    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    devices: int
    fifos: int
    whiteouts: int
    opaques: int
    skipped: int
    """Devices not made (``devices=False``) and volume labels."""
    copied_up: int
    """Lower files copied into the layer as hardlink targets."""
    data_bytes: int


class _Head:
    """A binary stream with its first bytes read back in front (for the magic)."""

    def __init__(self, head: bytes, src: IO[bytes]):
        self._head = head
        self._src = src
        self.name = getattr(src, "name", None)

    def readinto(self, buf: bytearray) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._src, "readinto", None)
        if readinto is not None:
            return readinto(buf) or 0
        data = self._src.read(len(buf)) or b""
        buf[:len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._src.read(n - len(data)) or b""
            return data
        return self._src.read(n)


def _read_head(src: IO[bytes], n: int = 6) -> bytes:
    head = b""
    while len(head) < n:
        data = src.read(n - len(head))
        if not data:
            break
        head += data
    return head


class _Reader:
    """Uncompressed chunks of the layer; the digest of the input."""

    def __init__(self, src: IO[bytes], compression: str):
        head = _read_head(src)
        stream = _Head(head, src)
        self.compression = _compress.detect(head) if compression == "auto" else compression
        self._plain = self.compression == "none"
        self._src: Any = stream if self._plain else _compress.open_decompressed(
            stream, self.compression)  # type: ignore[arg-type]
        self.size = 0

    def chunk(self, buf: bytearray) -> memoryview | bytes:
        """The next piece of the stream (b"" at the end): read into *buf*
        (reused: no fresh pages for every chunk) when uncompressed."""
        if self._plain:
            n = self._src.readinto(buf)
            data: memoryview | bytes = memoryview(buf)[:n]
        else:
            try:
                data = self._src.read_chunk()
            except ValueError as e:  # corrupt or truncated compressed data
                raise CorruptArchiveError(str(e)) from None
        if not len(data):
            return b""
        self.size += len(data)
        return data

    def digest(self, diff_id: str) -> str:
        """The digest of the input as given: *diff_id* when it was not compressed."""
        return diff_id if self._plain else self._src.digest()

    def compressed_size(self) -> int:
        return self.size if self._plain else self._src.compressed_size


def _pump(reader: _Reader, q: queue.Queue[Any], free: queue.Queue[bytearray],
          stop: threading.Event) -> None:
    """The reader thread: read, inflate and hash; hand chunks over (with the
    buffer to give back to *free* once applied)."""
    try:
        while not stop.is_set():
            try:
                buf = free.get(timeout=0.1)
            except queue.Empty:
                continue
            data = reader.chunk(buf)
            while not stop.is_set():
                try:
                    q.put((data, buf), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not len(data):
                return
    except BaseException as e:  # handed to the applying thread
        q.put((e, None))


def _hash_chunks(h: Any, q: queue.Queue[Any], free: queue.Queue[bytearray]) -> None:
    """The hashing thread: the diff ID over each chunk once applied, in order;
    then the chunk's buffer goes back to the reader.  None ends it."""
    while (item := q.get()) is not None:
        data, buf = item
        h.update(data)
        free.put(buf)


def apply_layer(
    src: _Path | IO[bytes],
    dest: _Path,
    *,
    lowers: Sequence[_Path] = (),
    mode: Literal["layer", "rootfs"] = "layer",
    whiteouts: Literal["chardev", "xattr"] = "chardev",
    xattr_ns: Literal["trusted", "user"] = "trusted",
    same_owner: bool = True,
    devices: bool = True,
    expect_diff_id: str | None = None,
    max_size: int | None = None,
    sync: bool = True,
    tar_split: _Path | IO[bytes] | None = None,
    progress: Callable[[int], object] | None = None,
    compression: str = "auto",
) -> ApplyResult:
    """Apply the layer tar *src* to *dest*; return an :class:`ApplyResult`.

    *lowers* (layer mode only) are the layer directories below, top first:
    implied parent directories take their mode and owner, a hardlink to a
    lower file copies it up first, an opaque root is emulated with their
    names.  *expect_diff_id* is checked after the last byte and before the
    layer is published (rootfs mode: after the fact).  *max_size* bounds the
    uncompressed bytes.  *tar_split*, a path or binary file object, gets the
    gzip'd tar-split record (docs/tar-split.md).  *progress* is called with
    the number of input bytes read so far, after every chunk.

    Raises the :mod:`overlayfs.errors` classes (``ValueError`` subclasses
    with ``.entry``) for what is wrong with the archive; ``OSError`` for a
    failed system call, with the entry's name as its filename (a parent
    that is not a directory: ``NotADirectoryError``);
    ``FileExistsError`` if a layer *dest* exists.
    """
    if mode not in ("layer", "rootfs"):
        raise ValueError(f"mode must be 'layer' or 'rootfs', not {mode!r}")
    if whiteouts not in ("chardev", "xattr"):
        raise ValueError(f"whiteouts must be 'chardev' or 'xattr', not {whiteouts!r}")
    if xattr_ns not in ("trusted", "user"):
        raise ValueError(f"xattr_ns must be 'trusted' or 'user', not {xattr_ns!r}")
    if mode == "rootfs" and lowers:
        raise ValueError("lowers are for mode='layer' only")
    if max_size is not None and max_size <= 0:
        raise ValueError("max_size must be positive")
    flags = ((APPLY_SAME_OWNER if same_owner else 0) | (APPLY_DEVICES if devices else 0)
             | (0 if sync else APPLY_NO_SYNC)
             | (APPLY_XATTR_WHITEOUTS if whiteouts == "xattr" else 0)
             | (APPLY_TAR_SPLIT if tar_split is not None else 0))
    lower_paths = [os.fspath(p) for p in lowers]

    own_src = isinstance(src, (str, bytes, os.PathLike))
    fsrc: IO[bytes] = open(src, "rb", buffering=0) if isinstance(src, (str, bytes, os.PathLike)) else src
    split_out: Any = None
    split_raw: Any = None
    own_split = False
    try:
        reader = _Reader(fsrc, compression)
        applier = _Applier(os.fspath(dest), lower_paths, mode == "rootfs",
                           xattr_ns == "user", flags, max_size or 0)
        try:
            if tar_split is not None:
                own_split = isinstance(tar_split, (str, bytes, os.PathLike))
                split_raw = (open(tar_split, "wb") if isinstance(tar_split, (str, bytes, os.PathLike))
                             else tar_split)
                split_out = gzip.GzipFile(fileobj=split_raw, mode="wb", mtime=0)
            q: queue.Queue[Any] = queue.Queue(_QUEUE_DEPTH)
            free: queue.Queue[bytearray] = queue.Queue()
            for _ in range(_QUEUE_DEPTH + 2):
                free.put(bytearray(_compress.CHUNK))
            stop = threading.Event()
            # Three stages, so inflating, applying and hashing share the cores:
            # the reader (read, inflate) -> this thread (the C apply) -> the hasher.
            t = threading.Thread(target=_pump, args=(reader, q, free, stop),
                                 name="overlayfs-apply-read", daemon=True)
            hq: queue.Queue[Any] = queue.Queue()
            diff = hashlib.sha256()
            hasher = threading.Thread(target=_hash_chunks, args=(diff, hq, free),
                                      name="overlayfs-apply-hash", daemon=True)
            t.start()
            hasher.start()
            try:
                while True:
                    data, buf = q.get()
                    if isinstance(data, BaseException):
                        raise data
                    if not len(data):
                        break
                    applier.feed(data)
                    hq.put((data, buf))
                    if split_out is not None:
                        split_out.write(applier.split())
                    if progress is not None:
                        progress(reader.compressed_size())
            finally:
                hq.put(None)
                stop.set()
                t.join()
                hasher.join()
            diff_id = "sha256:" + diff.hexdigest()
            if expect_diff_id is not None and expect_diff_id != diff_id and mode == "layer":
                raise DiffIDMismatchError(expect_diff_id, diff_id)
            stats = applier.end()
            if split_out is not None:
                split_out.write(applier.split())
                split_out.close()
                split_out = None
                if own_split:
                    split_raw.close()
            if expect_diff_id is not None and expect_diff_id != diff_id:
                raise DiffIDMismatchError(expect_diff_id, diff_id)
        finally:
            applier.close()
    finally:
        if split_out is not None:
            split_out.close()
            if own_split:
                split_raw.close()
                if isinstance(tar_split, (str, bytes, os.PathLike)):
                    try:
                        os.unlink(tar_split)
                    except OSError:
                        pass
        if own_src:
            fsrc.close()
    del stats["bytes"]
    return ApplyResult(diff_id=diff_id, digest=reader.digest(diff_id), compression=reader.compression,
                       size=reader.size, compressed_size=reader.compressed_size(), **stats)
