"""Replaying a tar-split record (docs/tar-split.md) against the layer dir it was made
with: the original tar stream, byte for byte, for :func:`overlayfs.export.export_layer`.

Two steps:

* :func:`plan` reads the record, walks the tar headers it holds (the data areas are
  known by their length only) and checks the layer dir against the names they imply:
  every entry with its type, a regular file's size, a symlink's target, a hardlink's
  inode, whiteouts (``.wh.NAME``: char 0:0 or an xattr whiteout) and opaque markers
  (``.wh..wh..opq``: ``<ns>.overlay.opaque=y``), implied parent directories.  Any
  difference, or a record that does not parse, gives a reason and no plan: the caller
  exports afresh.  Modes, owners, times and xattrs are not compared (the record's
  headers say what they were; a layer whose metadata alone changed exports the
  original headers).
* :meth:`Plan.chunks` yields the stream in reused 1 MiB buffers: recorded bytes,
  zeros, and each regular file's data read with ``preadv`` from a file opened
  ``O_NOFOLLOW`` one component at a time from the layer root (never through a
  symlink, never ``..``).  What the bytes hash to is the caller's check.
"""

from __future__ import annotations

import bisect
import gzip
import os
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Final

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]

MAGIC: Final = b"OVLTSPL1"
RAW: Final = 1
DATA: Final = 2
ZERO: Final = 3
BLOCK: Final = 512
_ZEROS: Final = bytes(1 << 20)
_DIRFLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILEFLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

# A record: (RAW, bytes) | (ZERO, n) | (DATA, path, ((offset, length), ...), total)
_Rec = tuple


class SplitError(ValueError):
    """The record does not parse, or does not fit the layer dir."""


@dataclass
class _Entry:
    name: bytes
    type: str
    linkname: bytes
    size: int  # the file's size (a sparse file's real size)
    data_start: int  # the data area in the stream
    data_end: int


@dataclass
class Plan:
    """A record that fits its layer dir: :meth:`chunks` replays it."""

    root: bytes
    records: list[_Rec]
    entries: int
    size: int = 0
    _fds: dict[bytes, int] = field(default_factory=dict)

    def chunks(self, bufs: list[bytearray]) -> Iterator[memoryview]:
        """The tar stream in the rotating buffers *bufs* (all of one size; the consumer
        must be done with a chunk before ``len(bufs)`` more were yielded)."""
        nbuf = len(bufs)
        cap = len(bufs[0])
        bi = 0
        buf = bufs[0]
        mv = memoryview(buf)
        fill = 0
        root = os.open(self.root, _DIRFLAGS)
        cur_dir: bytes | None = None
        cur_fd = -1
        try:
            for rec in self.records:
                kind = rec[0]
                if kind == DATA:
                    path: bytes = rec[1]
                    parent, _, base = path.rpartition(b"/")
                    if parent != cur_dir:
                        if cur_fd >= 0:
                            os.close(cur_fd)
                            cur_fd = -1
                        cur_dir = None
                        cur_fd = _open_dir(root, parent)
                        cur_dir = parent
                    fd = os.open(base, _FILEFLAGS, dir_fd=cur_fd if parent else root)
                    try:
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            raise SplitError(f"{path!r}: not a regular file")
                        for off, ln in rec[2]:
                            while ln:
                                k = min(cap - fill, ln)
                                got = os.preadv(fd, [mv[fill:fill + k]], off)
                                if got <= 0:  # shrank since the check: zeros keep the tar whole
                                    mv[fill:fill + k] = _ZEROS[:k]
                                    got = k
                                fill += got
                                off += got
                                ln -= got
                                if fill == cap:
                                    yield mv
                                    bi += 1
                                    buf = bufs[bi % nbuf]
                                    mv = memoryview(buf)
                                    fill = 0
                    finally:
                        os.close(fd)
                    continue
                if kind == RAW:
                    data = memoryview(rec[1])
                    n = len(data)
                else:
                    data = None
                    n = rec[1]
                at = 0
                while at < n:
                    k = min(cap - fill, n - at)
                    mv[fill:fill + k] = data[at:at + k] if data is not None else _ZEROS[:k]
                    fill += k
                    at += k
                    if fill == cap:
                        yield mv
                        bi += 1
                        buf = bufs[bi % nbuf]
                        mv = memoryview(buf)
                        fill = 0
            if fill:
                yield mv[:fill]
        finally:
            if cur_fd >= 0:
                os.close(cur_fd)
            os.close(root)


def _open_dir(root: int, rel: bytes) -> int:
    """``rel`` under the directory fd ``root``, one ``O_NOFOLLOW`` component at a time
    (a symlink anywhere fails with ELOOP/ENOTDIR)."""
    fd = os.dup(root)
    try:
        for comp in rel.split(b"/") if rel else ():
            nfd = os.open(comp, _DIRFLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- reading the record -----------------------------------------------------------------


def read_record(src: _Path | IO[bytes] | bytes) -> list[_Rec]:
    """The records of a gzip'd (or plain) tar-split record."""
    if isinstance(src, bytes) and not src.startswith(b"\x1f\x8b"):
        raw = src
    elif isinstance(src, bytes):
        raw = gzip.decompress(src)
    elif isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            raw = f.read()
        raw = gzip.decompress(raw) if raw.startswith(b"\x1f\x8b") else raw
    else:
        data = src.read()
        raw = gzip.decompress(data) if data.startswith(b"\x1f\x8b") else data
    if raw[:8] != MAGIC:
        raise SplitError("not a tar-split record (bad magic)")
    out: list[_Rec] = []
    i = 8
    end = len(raw)
    u64 = struct.Struct("<Q").unpack_from
    u16 = struct.Struct("<H").unpack_from
    seg = struct.Struct("<QQ").unpack_from
    append = out.append
    try:
        while i < end:
            kind = raw[i]
            if kind == RAW:
                (n,) = u64(raw, i + 1)
                i += 9
                if i + n > end:
                    raise SplitError("truncated RAW record")
                append((RAW, raw[i:i + n]))
                i += n
            elif kind == ZERO:
                append((ZERO, u64(raw, i + 1)[0]))
                i += 9
            elif kind == DATA:
                (pl,) = u16(raw, i + 1)
                i += 3
                path = raw[i:i + pl]
                i += pl
                (nseg,) = u64(raw, i)
                i += 8
                if i + 16 * nseg > end:
                    raise SplitError("truncated DATA record")
                if nseg == 1:
                    segs: tuple[tuple[int, int], ...] = (seg(raw, i),)
                    total = segs[0][1]
                else:
                    segs = tuple(seg(raw, i + 16 * k) for k in range(nseg))
                    total = sum(s[1] for s in segs)
                i += 16 * nseg
                append((DATA, path, segs, total))
            else:
                raise SplitError(f"unknown record type {kind}")
    except struct.error:
        raise SplitError("truncated record") from None
    return out


# -- the tar headers in the record --------------------------------------------------------


class _Stream:
    """The recorded stream with holes where the DATA records go."""

    def __init__(self, records: list[_Rec]):
        self.starts: list[int] = []
        self.recs = records
        self.data_at: list[tuple[int, _Rec]] = []
        pos = 0
        for r in records:
            self.starts.append(pos)
            if r[0] == DATA:
                self.data_at.append((pos, r))
                pos += r[3]
            elif r[0] == RAW:
                pos += len(r[1])
            else:
                pos += r[1]
        self.size = pos

    def read(self, pos: int, n: int) -> bytes:
        """``n`` recorded bytes at ``pos``."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0:
            r = self.recs[i]
            off = pos - self.starts[i]
            if r[0] == RAW and off + n <= len(r[1]):  # the common case: one header record
                return r[1][off:off + n]  # type: ignore[no-any-return]
        out = []
        while n > 0:
            if i < 0 or i >= len(self.recs):
                raise SplitError("a header lies beyond the recorded stream")
            r = self.recs[i]
            off = pos - self.starts[i]
            if r[0] == DATA:
                raise SplitError("a header lies in file data")
            if r[0] == RAW:
                piece = r[1][off:off + n]
            else:
                piece = bytes(min(n, r[1] - off))
            out.append(piece)
            n -= len(piece)
            pos += len(piece)
            i += 1
        return b"".join(out)


def _num(field_: bytes) -> int:
    try:
        return int(field_.rstrip(b" \0"), 8)  # the common case: NUL-terminated octal
    except ValueError:
        pass
    if field_ and field_[0] & 0x80:  # base-256
        v = int.from_bytes(field_, "big", signed=False) & ~(0x80 << (8 * (len(field_) - 1)))
        return v if not field_[0] & 0x40 else -1
    s = field_.split(b"\0", 1)[0].strip(b" \0")
    return int(s, 8) if s else 0


def _cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def _pax(body: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    i = 0
    while i < len(body):
        sp = body.find(b" ", i)
        if sp < 0:
            break
        try:
            n = int(body[i:sp])
        except ValueError:
            raise SplitError("bad PAX record") from None
        if n <= 0:
            raise SplitError("bad PAX record")
        rec = body[sp + 1:i + n - 1]
        k, _, v = rec.partition(b"=")
        out[k] = v
        i += n
    return out


def clean(name: bytes) -> bytes | None:
    """The name as apply cleans it (no leading ``/`` or ``./``, no empty or ``.``
    components); None for one with ``..``."""
    parts = [c for c in name.split(b"/") if c not in (b"", b".")]
    if b".." in parts:
        return None
    return b"/".join(parts)


def _headers(st: _Stream) -> list[_Entry]:
    """The entries of the recorded tar (extension headers folded in)."""
    out: list[_Entry] = []
    pos = 0
    pax: dict[bytes, bytes] = {}
    longname: bytes | None = None
    longlink: bytes | None = None
    zero = bytes(BLOCK)
    while pos + BLOCK <= st.size:
        b = st.read(pos, BLOCK)
        if b == zero:
            break
        pos += BLOCK
        t = b[156:157]
        size = _num(b[124:136])
        if t in (b"x", b"g", b"L", b"K"):
            body = st.read(pos, size)
            pos += -(-size // BLOCK) * BLOCK
            if t == b"x":
                pax.update(_pax(body))
            elif t == b"L":
                longname = _cstr(body)
            elif t == b"K":
                longlink = _cstr(body)
            continue  # 'g': ignored, as Go and our reader do
        typ = {b"\0": "0", b"7": "0", b"D": "5"}.get(t, t.decode("latin-1"))
        ustar = b[257:263] == b"ustar\0"
        name = _cstr(b[0:100])
        if ustar and b[345]:
            name = _cstr(b[345:500]) + b"/" + name
        if longname is not None:
            name = longname
        if b"path" in pax:
            name = pax[b"path"]
        if b"GNU.sparse.name" in pax:
            name = pax[b"GNU.sparse.name"]
        link = longlink if longlink is not None else _cstr(b[157:257])
        if b"linkpath" in pax:
            link = pax[b"linkpath"]
        if b"size" in pax:
            size = int(pax[b"size"])
        if typ == "0" and name.endswith(b"/"):
            typ = "5"
        if typ not in ("0", "S", "V"):
            size = 0
        real = size
        if typ == "S":
            real = _num(b[483:495])
            ext = b[482]
            while ext:
                e = st.read(pos, BLOCK)
                pos += BLOCK
                ext = e[504]
            typ = "0"
        for k in (b"GNU.sparse.realsize", b"GNU.sparse.size"):
            if k in pax:
                real = int(pax[k])
        out.append(_Entry(name, typ, link, real, pos, pos + size))
        pos += -(-size // BLOCK) * BLOCK
        pax = {}
        longname = longlink = None
    return out


# -- the check ----------------------------------------------------------------------------


def plan(layer_dir: _Path, src: _Path | IO[bytes] | bytes, xattr_ns: str = "trusted"
         ) -> Plan | str:
    """A :class:`Plan` replaying the record *src* from *layer_dir*, or the reason why
    not (the first difference between the record and the layer dir)."""
    walk = _Walk(os.fsencode(layer_dir), xattr_ns)
    walk.start()
    try:
        return _plan(walk, src)
    finally:
        walk.join()


def _plan(walk: _Walk, src: _Path | IO[bytes] | bytes) -> Plan | str:
    try:
        records = read_record(src)
        stream = _Stream(records)
        entries = _headers(stream)
    except (SplitError, ValueError, OSError, EOFError) as exc:
        return f"unusable tar-split record: {exc}"
    # The DATA records: each inside the data area of the regular file it names.
    k = 0
    for at, rec in stream.data_at:
        while k < len(entries) and entries[k].data_end <= at:
            k += 1
        if k == len(entries):
            return f"DATA {rec[1]!r} outside any entry"
        e = entries[k]
        if not (e.type == "0" and e.data_start <= at and at + rec[3] <= e.data_end
                and clean(e.name) == rec[1]):
            return f"DATA {rec[1]!r} does not belong to entry {e.name!r}"
        if any(off + ln > e.size for off, ln in rec[2]):
            return f"DATA {rec[1]!r}: a segment beyond the file's size"

    want: dict[bytes, tuple[str, object]] = {}
    opaque: set[bytes] = set()
    root_opaque = False
    for e in entries:
        name = clean(e.name)
        if name is None:
            return f"entry {e.name!r} leaves the layer"
        if not name:
            continue  # "./": the root
        d, _, base = name.rpartition(b"/")
        if base.startswith(b".wh."):
            if base == b".wh..wh..opq":
                if d:
                    opaque.add(d)
                else:
                    root_opaque = True
            else:
                want[d + b"/" + base[4:] if d else base[4:]] = ("w", None)
            continue
        if e.type == "0":
            want[name] = ("f", e.size)
        elif e.type == "5":
            want[name] = ("d", None)
        elif e.type == "2":
            want[name] = ("l", e.linkname)
        elif e.type == "1":
            target = clean(e.linkname)
            if not target:
                return f"hardlink {e.name!r} -> {e.linkname!r} leaves the layer"
            want[name] = ("h", target)
            want.setdefault(target, ("f", None))  # a lower file copied up
        elif e.type in ("3", "4", "6"):
            want[name] = (e.type, None)
        # 'V': a volume label, not made
    for _, rec in stream.data_at:  # the name a DATA record reads is still that file
        if not rec[1] or want.get(rec[1], ("",))[0] != "f":
            return f"DATA {rec[1]!r}: a later entry made it something else"
    for name in list(want):
        d = name.rpartition(b"/")[0]
        while d and d not in want:
            want[d] = ("d", None)
            d = d.rpartition(b"/")[0]
    return _compare(walk, want, opaque, root_opaque, records, len(entries))


class _Walk(threading.Thread):
    """The layer dir listed in a thread while the record is parsed (its system calls
    release the GIL): ``{path: (mode, size, (dev, ino), rdev, extra)}``, *extra* the
    symlink's target, a directory's opaque flag, a zero-size file's whiteout flag."""

    def __init__(self, root: bytes, xattr_ns: str):
        super().__init__(name="overlayfs-tarsplit-walk", daemon=True)
        self.root = root
        self.opq_x = f"{xattr_ns}.overlay.opaque"
        self.wh_x = f"{xattr_ns}.overlay.whiteout"
        self.found: dict[bytes, tuple[int, int, tuple[int, int], int, object]] = {}
        self.error: str | None = None

    def run(self) -> None:
        found = self.found
        stack = [b""]
        root = self.root
        try:
            while stack:
                rel = stack.pop()
                with os.scandir(root + b"/" + rel if rel else root) as it:
                    for de in it:
                        path = rel + b"/" + de.name if rel else de.name
                        st = de.stat(follow_symlinks=False)
                        mode = st.st_mode
                        extra: object = None
                        if stat.S_ISDIR(mode):
                            extra = _xattr(de.path, self.opq_x) == b"y"
                            stack.append(path)
                        elif stat.S_ISLNK(mode):
                            extra = os.readlink(de.path)
                        elif stat.S_ISREG(mode) and st.st_size == 0:
                            extra = _xattr(de.path, self.wh_x) is not None
                        found[path] = (mode, st.st_size, (st.st_dev, st.st_ino), st.st_rdev,
                                       extra)
        except OSError as e:
            self.error = f"cannot list the layer: {e}"


def _xattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _compare(walk: _Walk, want: dict[bytes, tuple[str, object]], opaque: set[bytes],
             root_opaque: bool, records: list[_Rec], nentries: int) -> Plan | str:
    walk.join()
    if walk.error is not None:
        return walk.error
    found = walk.found
    for path, (mode, size, ino, rdev, extra) in found.items():
        w = want.get(path)
        whiteout = (stat.S_ISCHR(mode) and rdev == 0) or (stat.S_ISREG(mode) and extra is True)
        if w is None:
            if root_opaque and b"/" not in path and whiteout:
                continue  # an opaque root emulated with whiteouts of the lowers
            return f"{path!r}: not in the record"
        kind, arg = w
        if kind == "d":
            if not stat.S_ISDIR(mode):
                return f"{path!r}: not a directory"
            if extra != (path in opaque):
                return f"{path!r}: opaque marker differs"
        elif kind == "f" or kind == "h":
            if not stat.S_ISREG(mode):
                return f"{path!r}: not a regular file"
            if kind == "f" and arg is not None and size != arg:
                return f"{path!r}: size {size}, recorded {arg}"
            if kind == "h" and (arg not in found or found[arg][2] != ino):  # type: ignore[index]
                return f"{path!r}: no longer a hardlink to {arg!r}"
        elif kind == "l":
            if not stat.S_ISLNK(mode) or extra != arg:
                return f"{path!r}: not the recorded symlink"
        elif kind == "w":
            if not whiteout:
                return f"{path!r}: not a whiteout"
        elif kind == "3":
            if not stat.S_ISCHR(mode) or rdev == 0:
                return f"{path!r}: not a char device"
        elif kind == "4":
            if not stat.S_ISBLK(mode):
                return f"{path!r}: not a block device"
        elif kind == "6" and not stat.S_ISFIFO(mode):
            return f"{path!r}: not a fifo"
    if len(found) < len(want) or any(p not in found for p in want):
        missing = next(p for p in want if p not in found)
        return f"{missing!r}: recorded, not in the layer"
    return Plan(walk.root, records, nentries)
