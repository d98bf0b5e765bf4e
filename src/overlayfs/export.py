"""Layers out as OCI layer tars: export a layer dir (graphdriver ``Diff``), flatten a
Stack's merged view (``docker export`` / ``crane export`` without a mount), squash a
range of layers into one layer tar.

The archive bytes of :func:`export_layer` and :func:`flatten` come from the C core
(``csrc/export.c``, ``csrc/tar_write.c``): a walk in byte order, a directory before
its children, PAX headers as moby writes them (uname/gname empty, whole-second
mtimes, no atime/ctime), file data read straight into a reused buffer.  A thread
runs that producer and writes (or compresses) what it makes while the calling thread
hashes it (the diff ID: sha256 of the uncompressed stream): ``hashlib``, ``zlib`` and
file writes release the GIL, so the two halves run on two cores.  Memory stays at a few MiB
whatever the layer's size.

The same dir always gives the same bytes, so the same diff ID; ``source_date_epoch``
(or ``$SOURCE_DATE_EPOCH`` in the CLI) clamps later mtimes to it.

Decisions (see ``docs/oci-layers.md`` §0 fact 8, §1.2):

* whiteouts (char 0:0; a zero-size file with ``<ns>.overlay.whiteout``, whatever its
  directory's marker, as the Stack's lookup and the kernel's, once the layer has any
  ``opaque=x`` directory, honour it) become ``.wh.NAME`` (a regular empty file, mode 0600, the
  whiteout's owner and mtime, never a hardlink); an opaque directory is its entry
  followed by ``DIR/.wh..wh..opq`` (mode: the directory's permission bits, its owner,
  mtime 0: moby's extra header sets no time);
* regular files with several links are one hardlink group per inode: the first name
  written is a file, the others type ``1`` naming it;
* xattrs: ``security.capability`` only (a v3 capability is written as v2, as moby
  does: its root uid means nothing outside the user namespace it was set in);
  ``xattrs="all"`` writes every xattr except the overlay's private
  ``<ns>.overlay.*`` ones; an escaped ``<ns>.overlay.overlay.X`` is written as
  ``<ns>.overlay.X``, what a mount of the layer shows (our apply escapes it again);
* sockets are left out (moby skips them);
* a layer holding a redirect (a directory renamed with ``redirect_dir=on``) or a
  metacopy file cannot be exported alone: :class:`UnsupportedLayerError` names the
  path.  Given ``lowers=``, :func:`export_layer` then falls back to the diff of the
  merged view against the parent's (:func:`overlayfs.changes.changes`), moby's
  naive diff.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal, NamedTuple

from . import _tarsplit
from ._core import _Export, _tar_header
from .errors import DiffIDMismatchError, UnsupportedLayerError

if TYPE_CHECKING:  # pragma: no cover
    from .stack import Stack

__all__ = ["ExportResult", "UnsupportedLayerError", "export_layer", "flatten", "squash"]

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_Out = _Path | IO[bytes]
_Progress = Callable[[int], object]

CHUNK: Final = 1 << 20
_NBUF: Final = 4
_BLOCK: Final = 512
_XCAP: Final = "security.capability"
_OPQ: Final = b".wh..wh..opq"
_WH: Final = b".wh."


class ExportResult(NamedTuple):
    """What an export wrote."""

    diff_id: str  #: "sha256:..." of the uncompressed tar
    digest: str  #: "sha256:..." of the bytes written (the diff ID when uncompressed)
    size: int  #: bytes written
    entries: int  #: tar entries (whiteouts and opaque markers included)
    #: the original stream replayed from a tar-split record (``export_layer(tar_split=)``)
    reassembled: bool = False
    #: why a tar-split record given was not replayed (the first difference found), or None
    fallback_reason: str | None = None


# -- the pipeline: a producer thread, hashing/compressing/writing here ----------------


def _c_chunks(exp: _Export, bufs: list[bytearray]) -> Iterator[memoryview]:
    """The archive in chunks, read by the C producer into the _NBUF reused buffers
    ``bufs`` (the hashing side is never more than _NBUF - 2 chunks behind, see _pump).
    They are allocated by the calling thread, not the producer's: a new thread's
    allocations may land in a new malloc arena each time."""
    i = 0
    while True:
        buf = bufs[i % _NBUF]
        n = exp.readinto(buf)
        if n == 0:
            return
        yield memoryview(buf)[:n]
        i += 1


def _pump(chunks: Iterator[bytes | memoryview], out: IO[bytes], compression: str | None,
          level: int | None, progress: _Progress | None = None) -> tuple[str, str, int]:
    """Run *chunks* and write (or compress) each in a thread; hash them here (the diff
    ID).  Both halves hold no GIL for their heavy part (the C producer's reads, the
    writes, ``zlib``, ``hashlib`` on large buffers), so they use two cores.  Return
    (diff_id, digest, bytes written)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=_NBUF - 2)
    stop = threading.Event()
    done = object()
    writer: Any = None
    if compression not in (None, "none"):
        from ._compress import open_compressed
        writer = open_compressed(out, compression, level)
    written = [0]

    def produce() -> None:
        try:
            for c in chunks:
                if writer is not None:
                    writer.write(c)
                else:
                    _write_all(out, c)
                    written[0] += len(c)
                while not stop.is_set():
                    try:
                        q.put(c, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            if writer is not None:
                writer.close()
            q.put(done)
        except BaseException as e:  # handed to the hashing side
            q.put(e)

    diff = hashlib.sha256()
    t = threading.Thread(target=produce, name="overlayfs-export", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            diff.update(item)
            if progress is not None:
                progress(len(item))
    finally:
        stop.set()
        t.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    diff_id = "sha256:" + diff.hexdigest()
    if writer is not None:
        return diff_id, writer.digest(), writer.compressed_size
    with contextlib.suppress(AttributeError, OSError):
        out.flush()
    return diff_id, diff_id, written[0]


def _write_all(out: IO[bytes], data: bytes | memoryview) -> None:
    n = out.write(data)
    if n is not None and n < len(data):  # a raw stream's short write
        mv = memoryview(data)[n:]
        while len(mv):
            k = out.write(mv) or 0
            mv = mv[k:]


class _Target:
    """``out`` as a binary stream: a path is opened (and, if it is a regular file,
    removed again when the export fails: never /dev/null or a fifo); a file object is
    used as it is."""

    def __init__(self, out: _Out):
        self.path: str | bytes | None = None
        self.regular = False
        if isinstance(out, (str, bytes, os.PathLike)):
            self.path = os.fspath(out)
            self.f: IO[bytes] = open(self.path, "wb")
            self.regular = stat.S_ISREG(os.fstat(self.f.fileno()).st_mode)
            self.start = 0 if self.regular else -1
        else:
            self.f = out
            try:
                self.start = out.tell() if out.seekable() else -1
            except (AttributeError, OSError):
                self.start = -1

    def rewind(self) -> bool:
        """Back to where the export started, dropping what it wrote, if possible."""
        if self.start < 0:
            return False
        try:
            self.f.seek(self.start)
            self.f.truncate()
        except OSError:
            return False
        return True

    def close(self, ok: bool) -> None:
        if self.path is None:
            return
        self.f.close()
        if not ok and self.regular:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _run(make: Callable[[], tuple[Iterator[bytes | memoryview], Callable[[], int]]], out: _Out,
         compression: str | None, level: int | None,
         fallback: Callable[[], tuple[Iterator[bytes | memoryview], Callable[[], int]]] | None = None,
         expect_diff_id: str | None = None, progress: _Progress | None = None) -> ExportResult:
    if compression not in (None, "none", "gzip", "zstd"):
        raise ValueError(f"compression must be None, 'gzip' or 'zstd', not {compression!r}")
    target = _Target(out)
    ok = False
    try:
        chunks, entries = make()
        try:
            diff_id, digest, size = _pump(chunks, target.f, compression, level, progress)
        except UnsupportedLayerError:
            if fallback is None or not target.rewind():
                raise
            chunks, entries = fallback()
            diff_id, digest, size = _pump(chunks, target.f, compression, level, progress)
        if expect_diff_id is not None and diff_id != expect_diff_id:
            raise DiffIDMismatchError(expect_diff_id, diff_id)
        ok = True
        return ExportResult(diff_id, digest, size, entries())
    finally:
        target.close(ok)


def _native(layer: _Path | None, stack: Stack | None, xattr_ns: str, xattrs: str,
            source_date_epoch: int | None) -> tuple[Iterator[bytes | memoryview], Callable[[], int]]:
    exp = _Export(layer, stack, xattr_namespace=xattr_ns, all_xattrs=xattrs == "all",
                  source_date_epoch=source_date_epoch)

    count = [0]
    bufs = [bytearray(CHUNK) for _ in range(_NBUF)]

    def chunks() -> Iterator[bytes | memoryview]:
        with exp:
            yield from _c_chunks(exp, bufs)
            count[0] = exp.stats()[0]

    return chunks(), lambda: count[0]


def _check_xattrs(xattrs: str, xattr_ns: str) -> None:
    if xattrs not in ("capability", "all"):
        raise ValueError(f"xattrs must be 'capability' or 'all', not {xattrs!r}")
    if xattr_ns not in ("trusted", "user"):
        raise ValueError(f"xattr_ns must be 'trusted' or 'user', not {xattr_ns!r}")


# -- the public calls ------------------------------------------------------------------


def export_layer(layer_dir: _Path, out: _Out, *, compression: Literal["gzip", "zstd"] | None = None,
                 level: int | None = None, source_date_epoch: int | None = None,
                 xattrs: Literal["capability", "all"] = "capability",
                 xattr_ns: Literal["trusted", "user"] = "trusted",
                 lowers: Sequence[_Path] | None = None,
                 tar_split: _Path | IO[bytes] | bytes | None = None,
                 expect_diff_id: str | None = None,
                 progress: _Progress | None = None) -> ExportResult:
    """Write the layer dir ``layer_dir`` (an upper or overlay2 ``diff`` dir, in the
    kernel's form) to ``out`` as an OCI layer tar: graphdriver ``Diff``.

    ``tar_split``: the record :func:`overlayfs.apply.apply_layer` wrote when it made
    ``layer_dir`` (a path, a binary file object or its bytes; docs/tar-split.md).
    If the layer dir still fits it -- checked before anything is written: the names
    the record implies (whiteouts and opaque markers in their kernel form, hardlinks,
    implied parents), each one's type, regular files' sizes, symlink targets -- the
    ORIGINAL tar stream is written (recorded headers, padding and trailer, file data
    read from the layer dir, fd-relative and never through a symlink) and the result
    says ``reassembled=True``; else the deterministic export runs and
    ``fallback_reason`` says what differed.  The other options (``source_date_epoch``,
    ``xattrs``) only shape that fallback.  Metadata-only changes (mode, owner, times,
    xattrs) are not detected: the recorded headers are written.  ``expect_diff_id``
    (the diff ID the apply reported) is checked after the last byte:
    :class:`overlayfs.errors.DiffIDMismatchError` when a file's content changed
    without changing its size; ``out`` then holds an invalid stream (removed if
    ``out`` was a path to a regular file).

    ``out``: a path (removed again if the export fails) or a binary file object
    (written from its position, not closed).  ``compression``: ``"gzip"`` or
    ``"zstd"`` (``level`` as for those); the diff ID is always the uncompressed
    stream's.  ``source_date_epoch``: no mtime later than it.  ``xattrs``, the
    forms converted and the hardlink rule: see the module docstring.

    A layer holding a redirect or a metacopy file raises
    :class:`UnsupportedLayerError` -- unless ``lowers`` (its lower layers, top-most
    first) are given and ``out`` can be rewound: the export then starts again as the
    naive diff of the merged view against the lowers' (every added or changed path
    with its merged content, ``.wh.`` entries for deletions, opaque markers for
    directories that hide the parent's view).
    """
    _check_xattrs(xattrs, xattr_ns)
    fallback = None
    if lowers is not None:
        below = list(lowers)

        def fallback() -> tuple[Iterator[bytes | memoryview], Callable[[], int]]:
            return _naive_diff(layer_dir, below, xattr_ns, xattrs, source_date_epoch)

    reason = None
    if tar_split is not None:
        plan = _tarsplit.plan(layer_dir, tar_split, xattr_ns)
        if isinstance(plan, str):
            reason = plan
        else:
            replay = plan

            def make() -> tuple[Iterator[bytes | memoryview], Callable[[], int]]:
                return replay.chunks([bytearray(CHUNK) for _ in range(_NBUF)]), \
                    lambda: replay.entries

            r = _run(make, out, compression, level, expect_diff_id=expect_diff_id,
                     progress=progress)
            return r._replace(reassembled=True)
    r = _run(lambda: _native(layer_dir, None, xattr_ns, xattrs, source_date_epoch), out,
             compression, level, fallback, progress=progress)
    return r._replace(fallback_reason=reason) if reason is not None else r


def flatten(stack: Stack, out: _Out, *, compression: Literal["gzip", "zstd"] | None = None,
            level: int | None = None, source_date_epoch: int | None = None,
            xattrs: Literal["capability", "all"] = "capability",
            progress: _Progress | None = None) -> ExportResult:
    """Write the merged view of ``stack`` to ``out`` as one tar (``docker export``,
    ``crane export``), read through the C core without mounting: no whiteouts, no
    opaque markers; names that share a (layer, inode) are one hardlink group.
    Arguments as for :func:`export_layer`.  The Stack must stay open meanwhile and
    its layers unchanged."""
    _check_xattrs(xattrs, "trusted")
    return _run(lambda: _native(None, stack, "trusted", xattrs, source_date_epoch), out,
                compression, level, progress=progress)


def squash(layers: Sequence[_Path], out: _Out, *, below: Sequence[_Path] | None = None,
           compression: Literal["gzip", "zstd"] | None = None, level: int | None = None,
           source_date_epoch: int | None = None,
           xattrs: Literal["capability", "all"] = "capability",
           xattr_ns: Literal["trusted", "user"] = "trusted",
           progress: _Progress | None = None) -> ExportResult:
    """Write layer dirs ``layers`` (top-most first, in the kernel's form) as ONE layer
    tar: the merged view of those layers, plus what it takes for that one layer to
    hide, over the layers below, what the range hid:

    * a ``.wh.NAME`` for each name whited out within the range and not recreated --
      every one when ``below`` (the layers under the range, top-most first) is not
      given, only those whose target exists in the view of ``below`` when it is;
    * a ``DIR/.wh..wh..opq`` after each directory whose merge stops inside the range
      (an opaque directory, or one over a whiteout or a non-directory), unless an
      ancestor already hides everything below it.

    So a kernel mount of the squashed layer over ``below`` shows what a mount of
    ``layers`` over ``below`` shows.  Layers with redirects raise
    :class:`UnsupportedLayerError`.  Other arguments as for :func:`export_layer`.
    """
    _check_xattrs(xattrs, xattr_ns)
    if not layers:
        raise ValueError("squash needs at least one layer")

    def make() -> tuple[Iterator[bytes | memoryview], Callable[[], int]]:
        w = _PyTar(xattrs, source_date_epoch)
        return _squash_chunks(w, list(layers), list(below) if below else None, xattr_ns), \
            lambda: w.entries

    return _run(make, out, compression, level, progress=progress)


# -- Python-composed archives: squash and the naive diff ------------------------------


def _join(a: bytes, b: bytes) -> bytes:
    return a + b"/" + b if a else b


class _PyTar:
    """Entries of a Stack's view as tar bytes (headers by the C core's encoder)."""

    def __init__(self, xattrs: str, source_date_epoch: int | None):
        self.all = xattrs == "all"
        self.sde = source_date_epoch
        self.entries = 0
        self.links: dict[tuple[int, int], bytes] = {}

    def _mtime(self, t: int) -> int:
        return min(t, self.sde) if self.sde is not None else t

    def header(self, name: bytes, typeflag: str, st: os.stat_result | None, *, mode: int | None = None,
               size: int = 0, linkname: bytes = b"", xattrs: Iterable[tuple[str, bytes]] = (),
               mtime: int | None = None) -> bytes:
        self.entries += 1
        uid = st.st_uid if st else 0
        gid = st.st_gid if st else 0
        if mtime is None:
            mtime = int(st.st_mtime // 1) if st else 0
        mtime = self._mtime(mtime)
        if mode is None:  # the type bits too, as moby writes them
            mode = st.st_mode if st else 0o644
        major = minor = 0
        if st is not None and typeflag in "34":
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        return _tar_header(name, typeflag, mode, uid, gid, size, mtime, linkname, major, minor,
                           list(xattrs))

    def xattrs_of(self, view: Stack, path: bytes) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        try:
            names = view.listxattr(path, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.ENODATA):
                return out
            raise
        for name in sorted(names):
            if not self.all and name != _XCAP:
                continue
            try:
                value = view.getxattr(path, name, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                raise
            if name == _XCAP and len(value) == 24 and value[3] == 3:
                # v3 -> v2 as moby writes it: revision 2, the effective flag kept.
                value = bytes([value[0] & 1, 0, 0, 2]) + value[4:20]
            out.append((name, value))
        return out

    def entry(self, view: Stack, path: bytes, layer: int) -> Iterator[bytes]:
        """The entry at ``path`` of ``view`` (``layer``: the layer supplying it)."""
        st = view.lstat(path)
        x = self.xattrs_of(view, path)
        if stat.S_ISDIR(st.st_mode):
            yield self.header(path + b"/", "5", st, xattrs=x)
        elif stat.S_ISLNK(st.st_mode):
            yield self.header(path, "2", st, linkname=os.fsencode(view.readlink(path)), xattrs=x)
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                first = self.links.setdefault((layer, st.st_ino), path)
                if first != path:
                    yield self.header(path, "1", st, linkname=first, xattrs=x)
                    return
            yield self.header(path, "0", st, size=st.st_size, xattrs=x)
            yield from _file_data(view, path, st.st_size)
        elif stat.S_ISCHR(st.st_mode):
            yield self.header(path, "3", st, xattrs=x)
        elif stat.S_ISBLK(st.st_mode):
            yield self.header(path, "4", st, xattrs=x)
        elif stat.S_ISFIFO(st.st_mode):
            yield self.header(path, "6", st, xattrs=x)
        # sockets: left out

    def whiteout(self, path: bytes, st: os.stat_result | None) -> bytes:
        d, _, base = path.rpartition(b"/")
        return self.header(_join(d, _WH + base), "0", st, mode=0o600)

    def opaque(self, path: bytes, st: os.stat_result) -> bytes:
        return self.header(path + b"/" + _OPQ, "0", st, mode=stat.S_IMODE(st.st_mode) & 0o777, mtime=0)


def _file_data(view: Stack, path: bytes, size: int) -> Iterator[bytes]:
    left = size
    with view.open(path, "rb", buffering=0) as f:
        while left:
            data = f.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
    if left:  # shrank: zeros to the size in the header
        yield bytes(left)
    if size % _BLOCK:
        yield bytes(_BLOCK - size % _BLOCK)


def _end() -> bytes:
    return bytes(2 * _BLOCK)


def _xattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _is_whiteout(path: bytes, st: os.stat_result, prefix: str) -> bool:
    """The kernel's whiteout forms: a char 0:0, or a zero-size regular file carrying
    ``<ns>.overlay.whiteout`` (as lookups honour it)."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return _xattr(path, prefix + "whiteout") is not None
    return False


def _squash_chunks(w: _PyTar, layers: list[_Path], below: list[_Path] | None,
                   xattr_ns: str) -> Iterator[bytes]:
    from .stack import Stack

    prefix = f"{xattr_ns}.overlay."
    hosts = [os.fsencode(p) for p in layers]
    opts: dict[str, Any] = {"xattr_namespace": xattr_ns, "metacopy": xattr_ns == "trusted"}
    with contextlib.ExitStack() as es:
        merged = es.enter_context(Stack(hosts, **opts))
        under = es.enter_context(Stack([os.fsencode(p) for p in below], **opts)) if below else None

        def below_has(path: bytes) -> bool:
            if under is None:
                return True
            try:
                under.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError:
                return True
            return True

        def child_dirs(dirs: list[tuple[bytes, bytes | None]], name: bytes
                       ) -> tuple[list[tuple[bytes, bytes | None]], bool]:
            """The layer dirs the merge of child ``name`` reads (with their opaque
            xattr), and whether it stops inside the range."""
            out: list[tuple[bytes, bytes | None]] = []
            for host, _ in dirs:
                p = os.path.join(host, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    return out, True  # a whiteout or a non-directory stops it
                if _xattr(p, prefix + "redirect") is not None:
                    raise UnsupportedLayerError(os.fsdecode(p), "redirect")
                opq = _xattr(p, prefix + "opaque")
                out.append((p, opq))
                if opq == b"y":
                    return out, True
            return out, False

        def visit(rel: bytes, dirs: list[tuple[bytes, bytes | None]], hidden: bool) -> Iterator[bytes]:
            """Directory ``rel`` of the merged view; ``dirs`` its layer dirs, ``hidden``:
            the squashed layer already hides everything below it (an opaque marker at
            it or above)."""
            entries = {}
            for e in merged.scandir(rel):
                try:
                    e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # listed, but a whiteout (the kernel lists some xattr whiteouts too)
                entries[os.fsencode(e.name)] = e
            names = sorted(entries)
            whited: set[bytes] = set()
            if not hidden:
                for host, _ in dirs:
                    with os.scandir(host) as it:
                        for de in it:
                            n = os.fsencode(de.name)
                            if n in entries or n in whited:
                                continue
                            if _is_whiteout(os.fsencode(de.path), de.stat(follow_symlinks=False),
                                            prefix):
                                whited.add(n)
            whs = sorted(n for n in whited if below_has(_join(rel, n)))
            # Whiteouts and entries in one byte order.
            # Whiteouts and entries in the byte order of the names (as export_layer).
            items = sorted([(n, True) for n in whs] + [(n, False) for n in names])
            for n, is_wh in items:
                path = _join(rel, n)
                if is_wh:
                    yield w.whiteout(path, None)
                    continue
                e = entries[n]
                yield from w.entry(merged, path, e.layer)
                if e.is_dir(follow_symlinks=False):
                    sub, stops = child_dirs(dirs, n)
                    if stops and not hidden:
                        yield w.opaque(path, merged.lstat(path))
                    yield from visit(path, sub, hidden or stops)

        root = [(h, _xattr(h, prefix + "opaque")) for h in hosts]
        yield from visit(b"", root, False)
        yield _end()


def _naive_diff(upper: _Path, lowers: list[_Path], xattr_ns: str, xattrs: str,
                source_date_epoch: int | None) -> tuple[Iterator[bytes | memoryview], Callable[[], int]]:
    """A layer's changes as a tar, from the merged view against the lowers' (moby's
    naive diff): redirects and metacopy files are resolved by the merged view."""
    from .changes import changes
    from .stack import Stack

    w = _PyTar(xattrs, source_date_epoch)

    def chunks() -> Iterator[bytes]:
        found = changes(upper, lowers, xattr_namespace="user" if xattr_ns == "user" else "trusted")
        top = os.fsencode(upper)
        with Stack([top, *[os.fsencode(p) for p in lowers]], xattr_namespace=xattr_ns,
                   metacopy=xattr_ns == "trusted") as merged:
            for c in found:
                path = os.fsencode(c.path)
                if c.kind == "deleted":
                    yield w.whiteout(path, None)
                    continue
                yield from w.entry(merged, path, 0)
                if c.opaque:
                    yield w.opaque(path, merged.lstat(path))
        yield _end()

    return chunks(), lambda: w.entries
