"""Tar archives as comparable records, a tiny layer-tar extractor for tests, and a
GNU tar worker for kernel mounts (stdlib only: kernel.run_in_mount loads it by path).

:func:`records` reads an archive with :mod:`tarfile` into ``{name: record}`` (names
as bytes, without ``./`` or a trailing ``/``; hardlinks resolved to their target's
content so two archivers' link choices compare equal).  :func:`extract_layer`
writes a layer tar into a layer dir in the kernel's form (``.wh.X`` -> char 0:0,
``.wh..wh..opq`` -> ``trusted.overlay.opaque=y``, ``trusted.overlay.X`` xattrs
escaped), enough to mount what an export or squash wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile

_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
          tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk",
          tarfile.FIFOTYPE: "fifo", tarfile.LNKTYPE: "link"}


def _name(n: str) -> bytes:
    b = os.fsencode(n)
    while b.startswith(b"./"):
        b = b[2:]
    return b.rstrip(b"/")


def open_tar(data) -> tarfile.TarFile:
    fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else open(data, "rb")
    return tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8", errors="surrogateescape")


def xattrs_of(m: tarfile.TarInfo) -> dict:
    out = {}
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[len("SCHILY.xattr."):]] = v.encode("utf-8", "surrogateescape").hex()
    return out


def records(data, *, xattrs=True, mtime=True, order=None, raw_mode=False) -> dict:
    """``{name: record}`` of an archive (bytes or a path); ``order`` (a list) gets the
    names in archive order.  Modes are the permission bits unless ``raw_mode`` (moby
    writes the file type bits too; GNU tar does not)."""
    out: dict = {}
    content: dict = {}
    with open_tar(data) as tf:
        for m in tf:
            name = _name(m.name)
            if order is not None:
                order.append(name)
            if name in (b"", b"."):
                continue
            mode = m.mode if raw_mode else m.mode & 0o7777
            rec = {"type": _TYPES.get(m.type, m.type.decode()), "mode": oct(mode), "uid": m.uid, "gid": m.gid}
            if mtime:
                rec["mtime"] = int(m.mtime)
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                f = tf.extractfile(m)
                assert f is not None
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                rec["size"] = m.size
                rec["sha256"] = content[name] = h.hexdigest()
            elif m.type == tarfile.SYMTYPE:
                rec["target"] = os.fsencode(m.linkname).hex()
            elif m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                rec["dev"] = [m.devmajor, m.devminor]
            elif m.type == tarfile.LNKTYPE:
                target = _name(m.linkname)
                rec.update(type="file", size=out[target]["size"], sha256=content[target])
                rec["linked"] = True
            if xattrs:
                rec["xattrs"] = xattrs_of(m)
            out[name] = rec
    return out


def strip(recs: dict, *keys) -> dict:
    return {n: {k: v for k, v in r.items() if k not in keys} for n, r in recs.items()}


def gnu_tar_worker(root: bytes, args: dict) -> dict:
    """kernel.run_in_mount worker (chroot=False): GNU tar of the mount into args["out"]."""
    cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", args["out"], "-C", root, "."]
    p = subprocess.run(cmd, capture_output=True)
    return {"rc": p.returncode, "stderr": p.stderr.decode(errors="replace")}


def extract_layer(data, layer: str) -> None:
    """Write a layer tar into the empty layer dir *layer* in the kernel's form."""
    layer_b = os.fsencode(layer)
    times = []
    with open_tar(data) as tf:
        for m in tf:
            name = _name(m.name)
            if name in (b"", b"."):
                continue
            path = os.path.join(layer_b, name)
            d, base = os.path.split(path)
            if base == b".wh..wh..opq":
                os.setxattr(d, "trusted.overlay.opaque", b"y", follow_symlinks=False)
                continue
            if base.startswith(b".wh."):
                wpath = os.path.join(d, base[4:])
                os.mknod(wpath, stat.S_IFCHR | 0o600, os.makedev(0, 0))
                times.append((wpath, m.mtime))
                continue
            if m.isdir():
                if not os.path.isdir(path):
                    os.mkdir(path)
            elif m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                with open(path, "wb") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
            elif m.issym():
                os.symlink(os.fsencode(m.linkname), path)
            elif m.islnk():
                os.link(os.path.join(layer_b, _name(m.linkname)), path)
                continue
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                os.mkfifo(path)
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
            for k, v in xattrs_of(m).items():
                if k.startswith("trusted.overlay."):
                    k = "trusted.overlay.overlay." + k[len("trusted.overlay."):]
                os.setxattr(path, k, bytes.fromhex(v), follow_symlinks=False)
            if not m.issym():
                os.chmod(path, m.mode)
            times.append((path, m.mtime))
    for path, mtime in reversed(times):
        os.utime(path, ns=(int(mtime) * 10**9, int(mtime) * 10**9), follow_symlinks=False)


def differences(ours: dict, theirs: dict) -> list[str]:
    """Readable differences of two :func:`records` results (empty when equal)."""
    out = []
    for n in sorted(set(ours) | set(theirs)):
        if ours.get(n) != theirs.get(n):
            out.append(f"{n!r}:\n  ours   {ours.get(n)}\n  theirs {theirs.get(n)}")
    return out
