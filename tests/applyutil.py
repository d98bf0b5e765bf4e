"""Helpers for the apply tests: raw tar building (what tarfile cannot write),
tree records to compare an applied layer with a peer's, and sentinels that
prove nothing was written outside the target.
"""

from __future__ import annotations

import hashlib
import os
import stat

from dumps import dump_tree

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return ("%0*o" % (width - 1, value)).encode() + b"\0"


def _num(value: int, width: int) -> bytes:
    """Octal if it fits, else base-256 (GNU)."""
    if 0 <= value < 8 ** (width - 1):
        return _octal(value, width)
    raw = value.to_bytes(width, "big", signed=True) if value < 0 else value.to_bytes(width, "big")
    return bytes([raw[0] | 0x80]) + raw[1:] if value >= 0 else raw


def header(name: bytes, *, type: bytes = b"0", size: int = 0, mode: int = 0o644, uid: int = 0,
           gid: int = 0, mtime: int = 1_600_000_000, linkname: bytes = b"", devmajor: int = 0,
           devminor: int = 0, prefix: bytes = b"", gnu: bool = False, checksum_delta: int = 0) -> bytes:
    """One 512-byte header block, ustar (or GNU) with a right checksum (+ delta)."""
    b = bytearray(BLOCK)
    b[0:len(name[:100])] = name[:100]
    b[100:108] = _octal(mode, 8)
    b[108:116] = _num(uid, 8)
    b[116:124] = _num(gid, 8)
    b[124:136] = _num(size, 12)
    b[136:148] = _num(mtime, 12)
    b[156:157] = type
    b[157:157 + len(linkname[:100])] = linkname[:100]
    b[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    b[329:337] = _octal(devmajor, 8)
    b[337:345] = _octal(devminor, 8)
    if prefix:
        b[345:345 + len(prefix)] = prefix
    b[148:156] = b" " * 8
    b[148:156] = ("%06o" % (sum(b) + checksum_delta)).encode() + b"\0 "
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def pax_records(records: dict[bytes, bytes]) -> bytes:
    out = b""
    for k, v in records.items():
        body = b" " + k + b"=" + v + b"\n"
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


def pax(records: dict[bytes, bytes], *, glob: bool = False) -> bytes:
    body = pax_records(records)
    return header(b"PaxHeader", type=b"g" if glob else b"x", size=len(body)) + pad(body)


def gnu_long(name: bytes, *, link: bool = False) -> bytes:
    body = name + b"\0"
    return header(b"././@LongLink", type=b"K" if link else b"L", size=len(body), gnu=True) + pad(body)


def entry(name: bytes, data: bytes = b"", *, records: dict[bytes, bytes] | None = None,
          **kw) -> bytes:
    """An entry: optional PAX header, the header, the data padded."""
    out = pax(records) if records else b""
    if kw.get("type", b"0") in (b"0", b"7"):
        kw.setdefault("size", len(data))
    return out + header(name, **kw) + pad(data)


def file(name: bytes, data: bytes = b"", **kw) -> bytes:
    return entry(name, data, **kw)


def dir_(name: bytes, mode: int = 0o755, **kw) -> bytes:
    return entry(name, type=b"5", mode=mode, **kw)


def symlink(name: bytes, target: bytes, **kw) -> bytes:
    return entry(name, type=b"2", linkname=target, mode=0o777, **kw)


def hardlink(name: bytes, target: bytes, **kw) -> bytes:
    return entry(name, type=b"1", linkname=target, **kw)


END = b"\0" * (2 * BLOCK)


def tar(*entries: bytes, end: bytes = END) -> bytes:
    return b"".join(entries) + end


# --- trees --------------------------------------------------------------

def records(root, *, mtimes: bool = True, ignore_xattrs=(), whiteout_owner: bool = True) -> dict:
    """``{path: record}`` of the tree at *root*, without what differs between
    two equal extractions (inode numbers, atimes, block counts, dir sizes and
    link counts, the root's own metadata)."""
    out = {}
    for path, rec in dump_tree(root).items():
        if path == "":
            continue
        r = {k: v for k, v in rec.items() if k not in ("ino", "atime", "blocks", "data_map")}
        if r["type"] == "dir":
            r.pop("size", None)
            r.pop("nlink", None)
        if r["type"] == "whiteout":
            r.pop("mtime", None)
            if not whiteout_owner:
                r.pop("uid", None)
                r.pop("gid", None)
        if not mtimes:
            r.pop("mtime", None)
        if "xattrs" in r:
            x = {k: v for k, v in r["xattrs"].items() if k not in ignore_xattrs}
            if x:
                r["xattrs"] = x
            else:
                del r["xattrs"]
        out[path] = r
    return out


def diff_records(a: dict, b: dict, labels=("expected", "applied")) -> list[str]:
    out = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            out.append(f"{p}: only in {labels[1]}: {b[p]}")
        elif p not in b:
            out.append(f"{p}: only in {labels[0]}: {a[p]}")
        elif a[p] != b[p]:
            keys = sorted(set(a[p]) | set(b[p]))
            d = {k: (a[p].get(k), b[p].get(k)) for k in keys if a[p].get(k) != b[p].get(k)}
            out.append(f"{p}: {d}")
    return out


def snapshot(base, exclude=()) -> dict:
    """Everything under *base* but the *exclude* names at its top: type, mode,
    owner, size, mtime, content, link target, xattrs."""
    base = os.fsencode(base)
    excl = {os.fsencode(e) for e in exclude}
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base:
            dirnames[:] = [d for d in dirnames if d not in excl]
            filenames = [f for f in filenames if f not in excl]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rec = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, st.st_size,
                   st.st_mtime_ns,
                   os.listxattr(p, follow_symlinks=False))
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    rec += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            out[os.path.relpath(p, base)] = rec
    return out


def records_worker(root: bytes, args: dict) -> dict:
    """kernel.run_in_mount worker: :func:`records` of the mounted union (read-only:
    dump_tree's putting back of a symlink's atime is skipped)."""
    import errno

    real = os.utime

    def utime(*a, **kw):
        try:
            real(*a, **kw)
        except OSError as e:
            if e.errno != errno.EROFS:
                raise

    os.utime = utime  # this is the mount child's own process
    return records(root, mtimes=args.get("mtimes", True), ignore_xattrs=args.get("ignore_xattrs", ()))


def kernel_records(lowers, **args) -> dict:
    """:func:`records` of the kernel's read-only overlay of *lowers* (top first)."""
    import kernel

    return kernel.run_in_mount(records_worker, args, lowers, chroot=False, what="kernel records")


def reassemble(split: bytes, root) -> bytes:
    """The tar stream a tar-split record (docs/tar-split.md, uncompressed) and
    the applied tree at *root* give back: a reference reader of the format."""
    import struct

    assert split[:8] == b"OVLTSPL1"
    out = []
    i = 8
    root = os.fsencode(root)
    while i < len(split):
        kind = split[i]
        i += 1
        if kind == 1:
            (n,) = struct.unpack_from("<Q", split, i)
            out.append(split[i + 8:i + 8 + n])
            i += 8 + n
        elif kind == 3:
            (n,) = struct.unpack_from("<Q", split, i)
            out.append(b"\0" * n)
            i += 8
        elif kind == 2:
            (pl,) = struct.unpack_from("<H", split, i)
            path = split[i + 2:i + 2 + pl]
            i += 2 + pl
            (nseg,) = struct.unpack_from("<Q", split, i)
            i += 8
            with open(root + b"/" + path, "rb") as f:
                for _ in range(nseg):
                    off, ln = struct.unpack_from("<QQ", split, i)
                    i += 16
                    f.seek(off)
                    out.append(f.read(ln))
        else:
            raise ValueError(f"unknown record {kind}")
    return b"".join(out)
