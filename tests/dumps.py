"""Dumps of layer trees and their comparison: the one kernel-vs-Stack upper-layer check.

* :func:`dump_tree` records every path under a directory (an upper layer,
  usually) without disturbing it: every lstat before the directory is read,
  directories and data read with ``O_NOATIME``, a symlink's atime put back
  after ``readlink``.
* :func:`compare_dumps` diffs two dumps (side *a* is the reference, the
  kernel's; side *b* the one under test, the Stack's) under a :class:`Rules`
  and sorts every difference into a class (:data:`DIFF_CLASSES`).  Two rule
  sets cover the callers: :data:`WRITE_RULES` (``write_ops``: after write
  operations, whose "now" times are only comparable as "fresh") and
  :func:`copy_up_rules` (``test_copy_up``: after pure copy-ups, where every
  time is kept exactly and the Stack must write no private xattr).

A dump is ``{path: record}`` with fsdecoded paths relative to the root (""
is the root).  A record holds

``type``
    ``dir``, ``reg``, ``lnk``, ``chr``, ``blk``, ``fifo``, ``sock``, or
    ``whiteout`` (a char device 0:0)
``mode``
    the permission bits as ``"%04o"``
``uid``, ``gid``, ``size``, ``blocks``, ``ino``, ``atime`` (ns)
``mtime``
    ns, or ``"fresh"`` if it falls within the *window* given to the dump
    (the time of the operations, :data:`WINDOW_MARGIN_NS` either side)
``nlink``
    not for whiteouts (the kernel shares one whiteout inode)
``links``
    for non-directories with more than one link: the paths of the dump
    that share the inode, sorted
``sha256``, ``data_map``
    regular files: the content hash and the data extents
    ``[[start, end], ...]`` (SEEK_DATA/SEEK_HOLE), or an errno name
``target``
    symlinks: the fsdecoded target
``rdev``
    devices (not whiteouts): ``"major:minor"``
``xattrs``
    ``{name: value hex}`` (a value that cannot be read is an errno name),
    without the names the dump was told to ignore; absent if none

Stdlib-only (plus the sibling ``kernel`` module), so that the namespace child can
load it by path.
"""

from __future__ import annotations

import hashlib
import os
import stat

import kernel

#: Margin around an operation window for "fresh" timestamps (the kernel's
#: file times use the coarse clock, a tick behind time.time_ns()).
WINDOW_MARGIN_NS = 2 * 10**9

#: The file-handle bookkeeping the kernel writes into an upper layer and the
#: Stack does not (the copy-up origin, impure parents, the filesystem uuid),
#: under either xattr namespace.
KERNEL_ONLY_XATTRS = ("origin", "impure", "uuid")

#: Upper-layer xattrs the write-parity dumps leave out (both namespaces).
IGNORED_UPPER_XATTRS = frozenset("%s.overlay.%s" % (ns, k) for ns in ("trusted", "user")
                                 for k in KERNEL_ONLY_XATTRS)


def is_fresh(ns, window) -> bool:
    """Is the time *ns* inside the operation *window* ``[t0, t1]`` (with the margin)?"""
    return window is not None and window[0] - WINDOW_MARGIN_NS <= ns <= window[1] + WINDOW_MARGIN_NS


def _open_noatime(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs the owner or CAP_FOWNER
        return os.open(path, flags)


def sha256(path) -> str:
    """The hex digest of a regular file's data, read with O_NOATIME (raises OSError)."""
    h = hashlib.sha256()
    fd = _open_noatime(os.fsencode(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        while True:
            chunk = os.read(fd, 4 << 20)
            if not chunk:
                break
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def data_map(path, size=None):
    """The data extents of a regular file as ``[[start, end], ...]`` (SEEK_DATA/SEEK_HOLE),
    or an errno name."""
    out = []
    try:
        fd = os.open(os.fsencode(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return kernel.errname(e)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append([start, end])
            pos = end
    finally:
        os.close(fd)
    return out


def dump_tree(root, window=None, *, ignored_xattrs=()) -> dict:
    """A record of every path under *root* (see the module docstring), changing nothing
    (but a symlink's ctime: its atime is put back after readlink).

    *window* (``[t0, t1]`` in ns) turns mtimes inside it into ``"fresh"``;
    xattrs named in *ignored_xattrs* are left out.
    """
    root = os.fsencode(root)
    ignored = {os.fsdecode(n) for n in ignored_xattrs}
    out: dict = {}
    inodes: dict = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        path = root + b"/" + rel if rel else root
        st = os.lstat(path)
        fmt = stat.S_IFMT(st.st_mode)
        whiteout = fmt == stat.S_IFCHR and st.st_rdev == 0
        rec: dict = {"type": "whiteout" if whiteout else kernel._TYPE_NAMES.get(fmt, oct(fmt)),
                     "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                     "size": st.st_size, "mtime": "fresh" if is_fresh(st.st_mtime_ns, window) else st.st_mtime_ns,
                     "atime": st.st_atime_ns, "blocks": st.st_blocks, "ino": st.st_ino}
        if not whiteout:
            rec["nlink"] = st.st_nlink
            if fmt != stat.S_IFDIR and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(os.fsdecode(rel))
        xattrs = {}
        for name in sorted(os.listxattr(path, follow_symlinks=False)):
            if name in ignored:
                continue
            try:
                xattrs[name] = os.getxattr(path, name, follow_symlinks=False).hex()
            except OSError as e:
                xattrs[name] = kernel.errname(e)
        if xattrs:
            rec["xattrs"] = xattrs
        names = []
        if fmt == stat.S_IFREG:
            try:
                rec["sha256"] = sha256(path)
            except OSError as e:
                rec["sha256"] = kernel.errname(e)
            rec["data_map"] = data_map(path, st.st_size)
        elif fmt == stat.S_IFLNK:
            rec["target"] = os.fsdecode(os.readlink(path))
            # readlink(2) updates the atime (relatime): put it back.
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK) and not whiteout:
            rec["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif fmt == stat.S_IFDIR:
            fd = _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = sorted(os.listdir(fd))
            finally:
                os.close(fd)
        out[os.fsdecode(rel)] = rec
        todo.extend(rel + b"/" + os.fsencode(n) if rel else os.fsencode(n) for n in names)
    for paths in inodes.values():
        for p in paths:
            out[p]["links"] = sorted(paths)
    return out


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

#: Classes of differences; each names what it covers.
DIFF_CLASSES = {
    "names": "which names exist",
    "type": "object type (a whiteout is a type of its own)",
    "mode": "permission bits",
    "owner": "uid/gid",
    "size": "size",
    "data": "content hash",
    "data-map": "data extents (holes)",
    "target": "symlink target",
    "rdev": "device numbers",
    "mtime": "mtime (exact, or both \"fresh\")",
    "atime": "atime of regular files",
    "atime-dir": "atime of a directory",
    "atime-special": "atime of a symlink, fifo, device or whiteout",
    "xattr": "xattrs of regular files and directories (but security.capability)",
    "xattr-special": "xattrs of symlinks, fifos, devices, whiteouts",
    "capability": "security.capability",
    "private-xattr": "a private <ns>.overlay.* xattr in side b's copy",
    "sparse": "side b's copy uses more blocks than side a's / the lower's",
    "nlink": "link count",
    "links": "which names share an inode (hard-link groups)",
    "shared-inode": "two regular files of side b share an inode",
}

#: Fields that :class:`Rules` can leave out of the comparison.
IGNORABLE = frozenset({"data_map", "atime", "dir_mtime", "dir_size"})


class Rules:
    """What :func:`compare_dumps` checks besides names, types, modes, owners, sizes,
    content, targets, device numbers, mtimes, link counts, hard-link groups and xattrs
    (always compared).

    *ignore*
        fields left out (:data:`IGNORABLE`): ``data_map``, ``atime``,
        ``dir_mtime`` and ``dir_size`` (a directory's mtime and size).
    *kernel_only_xattrs*
        xattr names dropped from side a only (the kernel writes them, the
        Stack does not).
    *private_ns*
        side b must hold no ``<ns>.overlay.*`` xattr that is not escaped
        (``<ns>.overlay.overlay.*``): each is a ``private-xattr`` difference.
    *check_blocks*
        a regular file of side b may use at most 64 KiB more than side a's
        (or, with *lower_blocks* ``{path: blocks}``, than the lower file's).
    *distinct_inodes*
        no two regular files of side b share an inode.
    """

    def __init__(self, *, ignore=(), kernel_only_xattrs=(), private_ns=None, check_blocks=False,
                 lower_blocks=None, distinct_inodes=False):
        bad = set(ignore) - IGNORABLE
        if bad:
            raise ValueError("unknown ignore fields: %r" % sorted(bad))
        self.ignore = frozenset(ignore)
        self.kernel_only_xattrs = frozenset(kernel_only_xattrs)
        self.private_ns = private_ns
        self.check_blocks = check_blocks
        self.lower_blocks = lower_blocks
        self.distinct_inodes = distinct_inodes


#: After write operations (``write_ops``): directory mtimes change with every
#: entry and sizes with the filesystem's directory layout, atimes and blocks
#: are the filesystem's business, and the kernel's copy-up skips holes only
#: at 1 MiB chunk boundaries (copy_up.c: ``ovl_copy_up_file`` checks
#: SEEK_DATA once per chunk and splices the whole chunk), so a hole inside a
#: chunk that holds data becomes allocated zeros: a copy that keeps every
#: hole has the same content but another data map.  Dumps for these rules
#: leave out :data:`IGNORED_UPPER_XATTRS` on both sides.
WRITE_RULES = Rules(ignore=("data_map", "atime", "dir_mtime", "dir_size"))


def copy_up_rules(ns, lower_blocks=None) -> Rules:
    """After pure copy-ups in the *ns* xattr namespace (``test_copy_up``): every time
    exactly, directories too; the kernel's origin/impure/uuid ignored, and no private
    xattr in the Stack's copy; no more blocks than the kernel's copy or the lower file
    (data maps differ: see :data:`WRITE_RULES`); hard links broken."""
    return Rules(ignore=("data_map",), kernel_only_xattrs={"%s.overlay.%s" % (ns, k) for k in KERNEL_ONLY_XATTRS},
                 private_ns=ns, check_blocks=True, lower_blocks=lower_blocks, distinct_inodes=True)


def short(value, limit=60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_dumps(a: dict, b: dict, rules: Rules = WRITE_RULES, *, labels=("kernel", "stack")) -> list:
    """Differences between dump *a* (the reference: the kernel's) and dump *b*, under
    *rules*, as a list of ``(class, message)`` (classes in :data:`DIFF_CLASSES`)."""
    la, lb = labels
    ign = rules.ignore
    out = []
    for path in sorted(set(a) | set(b)):
        ra, rb = a.get(path), b.get(path)
        where = repr(path)
        if ra is None or rb is None:
            out.append(("names", "%s only in the %s upper: %s" % (where, la if rb is None else lb,
                                                                  short(ra if rb is None else rb, 300))))
            continue

        def diff(cls, field, ra=ra, rb=rb, where=where):
            if ra.get(field) != rb.get(field):
                out.append((cls, "%s: %s %s %s, %s %s" % (where, field, la, short(ra.get(field)), lb,
                                                           short(rb.get(field)))))

        if ra["type"] != rb["type"]:
            diff("type", "type")
            continue
        kind = ra["type"]
        isdir = kind == "dir"
        special = kind not in ("reg", "dir")
        diff("mode", "mode")
        if (ra["uid"], ra["gid"]) != (rb["uid"], rb["gid"]):
            out.append(("owner", "%s: %s %d:%d, %s %d:%d" % (where, la, ra["uid"], ra["gid"], lb, rb["uid"],
                                                              rb["gid"])))
        if not (isdir and "dir_size" in ign):
            diff("size", "size")
        for field, cls in (("sha256", "data"), ("target", "target"), ("rdev", "rdev"), ("nlink", "nlink"),
                           ("links", "links")):
            diff(cls, field)
        if "data_map" not in ign:
            diff("data-map", "data_map")
        if not (isdir and "dir_mtime" in ign):
            diff("mtime", "mtime")
        if "atime" not in ign:
            diff("atime-dir" if isdir else "atime-special" if special else "atime", "atime")
        xa = {n: v for n, v in ra.get("xattrs", {}).items() if n not in rules.kernel_only_xattrs}
        xb = dict(rb.get("xattrs", {}))
        if rules.private_ns is not None:
            priv = rules.private_ns + ".overlay."
            for n in sorted(xb):
                if n.startswith(priv) and not n.startswith(priv + "overlay."):
                    out.append(("private-xattr", "%s: %s copy has %s=%s" % (where, lb, n, short(xb[n]))))
                    xa.pop(n, None)
                    del xb[n]
        for n in sorted(set(xa) | set(xb)):
            if xa.get(n) != xb.get(n):
                cls = "capability" if n == "security.capability" else "xattr-special" if special else "xattr"
                out.append((cls, "%s: xattr %s %s %s, %s %s" % (where, n, la, short(xa.get(n)), lb,
                                                                short(xb.get(n)))))
        if rules.check_blocks and kind == "reg":
            lower = (rules.lower_blocks or {}).get(path)
            limit = ra["blocks"] if lower is None else max(ra["blocks"], lower)
            if rb["blocks"] > limit + 128:
                out.append(("sparse", "%s: %s copy uses %d blocks, %s's %d, the lower's %s"
                            % (where, lb, rb["blocks"], la, ra["blocks"], "?" if lower is None else lower)))
    if rules.distinct_inodes:
        seen: dict = {}
        for path in sorted(b):
            rec = b[path]
            if rec["type"] == "reg":
                if rec["ino"] in seen:
                    out.append(("shared-inode", "%r and %r (%s)" % (seen[rec["ino"]], path, lb)))
                seen.setdefault(rec["ino"], path)
    return out
