"""Small helpers to build OverlayFS layer trees on disk, and test oracles.

Every builder takes a host path and creates missing parent directories.  The
on-disk forms are the ones the kernel reads (see docs/overlay-semantics.md
§0-§3):

* :func:`whiteout` -- a char device 0:0 (any mode bits);
* :func:`xwhiteout` -- a zero-size regular file with ``<ns>.overlay.whiteout``;
* :func:`opaque` -- ``<ns>.overlay.opaque`` on a directory (``b"y"``; ``b"x"``
  marks a directory that may hold xattr whiteouts, see :func:`xmarker`);
* :func:`redirect` -- ``<ns>.overlay.redirect`` on a directory or metacopy file;
* :func:`metacopy` -- a metadata-only file with ``<ns>.overlay.metacopy``;
* :func:`oci_whiteout` / :func:`oci_opaque` -- the AUFS/OCI ``.wh.`` names.

:class:`Layers` lays out ``upper``/``work``/``l1``.. under a temporary
directory, and :func:`check_stat` / :func:`check_entry` compare what a Stack
answers with ``os.lstat`` of the host file the layer rules say must win
(CPython ``test_scandir.check_entry`` style).

``--import-mode=importlib`` does not put ``tests/`` on ``sys.path``; conftest
adds it before any test module does ``import util``.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

import overlayfs

NS = "trusted"


# ---------------------------------------------------------------------------
# Implementations under test
# ---------------------------------------------------------------------------

def is_c(cls) -> bool:
    return cls is overlayfs.Stack


# ---------------------------------------------------------------------------
# Layer builders
# ---------------------------------------------------------------------------

def _parent(path):
    parent = os.path.dirname(os.fsencode(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def xname(name: str, ns: str = NS) -> str:
    """The private xattr ``<ns>.overlay.<name>``."""
    return f"{ns}.overlay.{name}"


def mkdir(path, mode=None, xattrs=None):
    """Create the directory path (and parents); return path."""
    os.makedirs(path, exist_ok=True)
    if mode is not None:
        os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v, follow_symlinks=False)
    return path


def mkfile(path, data=b"", mode=None, xattrs=None):
    """Create a regular file holding data (str is encoded); return path."""
    _parent(path)
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v, follow_symlinks=False)
    return path


def symlink(path, target):
    """Create a symlink path -> target; return path."""
    _parent(path)
    os.symlink(target, path)
    return path


def whiteout(path, mode=0o000):
    """A kernel whiteout: char device 0:0 with the given permission bits."""
    _parent(path)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(0, 0))
    os.chmod(path, mode)
    return path


def chardev(path, major=1, minor=3, mode=0o644):
    """A char device that is *not* a whiteout (rdev != 0:0)."""
    _parent(path)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    return path


def xwhiteout(path, ns=NS, value=b""):
    """An xattr whiteout: a zero-size regular file with ``<ns>.overlay.whiteout``."""
    mkfile(path)
    os.setxattr(path, xname("whiteout", ns), value)
    return path


def opaque(path, value=b"y", ns=NS):
    """Mark directory path opaque (creating it); value b"x" marks xwhiteouts."""
    mkdir(path)
    os.setxattr(path, xname("opaque", ns), value)
    return path


def xmarker(path, ns=NS):
    """``<ns>.overlay.opaque = "x"``: this (lower) dir may hold xattr whiteouts."""
    return opaque(path, b"x", ns)


def redirect(path, target, ns=NS):
    """Set ``<ns>.overlay.redirect`` on path (a dir, created if missing, or a file)."""
    if not os.path.lexists(path):
        mkdir(path)
    os.setxattr(path, xname("redirect", ns), os.fsencode(target), follow_symlinks=False)
    return path


def metacopy(path, size=0, redirect_to=None, ns=NS, mode=None, value=b""):
    """A metacopy file: metadata here (sparse, st_size=size), data below."""
    mkfile(path, mode=mode)
    if size:
        os.truncate(path, size)
    os.setxattr(path, xname("metacopy", ns), value)
    if redirect_to is not None:
        os.setxattr(path, xname("redirect", ns), os.fsencode(redirect_to))
    return path


def oci_whiteout(dirpath, name):
    """An OCI/AUFS whiteout ``dirpath/.wh.<name>`` (an empty regular file)."""
    sep = b"/" if isinstance(dirpath, bytes) else "/"
    pre = b".wh." if isinstance(dirpath, bytes) else ".wh."
    return mkfile(dirpath + sep + pre + name)


def oci_opaque(dirpath):
    """An OCI/AUFS opaque marker ``dirpath/.wh..wh..opq``."""
    return mkfile(os.path.join(dirpath, ".wh..wh..opq"))


# ---------------------------------------------------------------------------
# Layer stacks
# ---------------------------------------------------------------------------

class Layers:
    """Layer directories under root: ``l1..lN`` (top-most first), plus
    ``upper``/``work`` when asked and ``d1..`` data-only layers.

    ``L[i]`` is the host path of layer index i (0 = upper) and ``L.p(i, rel)``
    the host path of rel inside it.
    """

    def __init__(self, root, nlowers=2, upper=False, ndata=0):
        self.root = os.fspath(root)
        self.lowers = [mkdir(os.path.join(self.root, f"l{i}")) for i in range(1, nlowers + 1)]
        self.upper = mkdir(os.path.join(self.root, "upper")) if upper else None
        self.work = mkdir(os.path.join(self.root, "work")) if upper else None
        self.data = [mkdir(os.path.join(self.root, f"d{i}")) for i in range(1, ndata + 1)]

    def __getitem__(self, i):
        if i == 0:
            if self.upper is None:
                raise IndexError("no upper layer")
            return self.upper
        if i <= len(self.lowers):
            return self.lowers[i - 1]
        return self.data[i - 1 - len(self.lowers)]

    def p(self, i, rel=""):
        base = self[i]
        if isinstance(rel, bytes):
            base = os.fsencode(base)
        return os.path.join(base, rel) if rel else base

    def stack(self, cls, **kw):
        """Open cls over these layers (upper/work/data layers when present)."""
        if self.upper is not None:
            kw.setdefault("upper", self.upper)
            kw.setdefault("work", self.work)
        if self.data:
            kw.setdefault("data_layers", self.data)
        return cls(self.lowers, **kw)


# ---------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------

STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid",
               "st_size", "st_mtime_ns", "st_ctime_ns", "st_blocks", "st_rdev")


def check_stat(st, host, *, merged_origin=None, blocks_from=None, skip=(), impl=None):
    """Assert that os.stat_result st describes the host file host.

    merged_origin: host path of the top-most *lower* dir of a merged
    directory (st_nlink is then 1 and st_ino the origin's, as the kernel
    reports on one filesystem).  blocks_from: host path whose st_blocks a
    metacopy file reports.  impl: the class under test (unused; kept so
    known per-implementation differences can be switched off in one place).
    """
    assert isinstance(st, os.stat_result), type(st)
    want = os.lstat(host)
    expect = {f: getattr(want, f) for f in STAT_FIELDS}
    if merged_origin is not None:
        expect["st_nlink"] = 1
        expect["st_ino"] = os.lstat(merged_origin).st_ino
    if blocks_from is not None:
        expect["st_blocks"] = os.lstat(blocks_from).st_blocks
    for f in skip:
        expect.pop(f, None)
    got = {f: getattr(st, f) for f in expect}
    assert got == expect, f"stat of {host!r}: got {got}, want {expect}"


def check_entry(entry, stack, name, host, *, is_dir, is_file, is_symlink, layer=None,
                merged=False):
    """CPython test_scandir.check_entry: an Entry agrees with its host file.
    merged: a merged dir (st_nlink 1, st_ino from its lower origin): only
    the type, size and mtime are compared with host."""
    assert entry.name == name
    assert type(entry.name) is type(name)
    assert entry.is_dir() == is_dir
    assert entry.is_file() == is_file
    assert entry.is_symlink() == is_symlink
    assert entry.is_dir(follow_symlinks=False) == (is_dir and not is_symlink)
    assert entry.is_file(follow_symlinks=False) == (is_file and not is_symlink)
    if layer is not None:
        assert entry.layer == layer
    want = os.lstat(host)
    st = entry.stat(follow_symlinks=False)
    assert (st.st_mode, st.st_size, st.st_mtime_ns) == \
        (want.st_mode, want.st_size, want.st_mtime_ns)
    if merged:
        assert st.st_nlink == 1
    else:
        assert (st.st_ino, st.st_nlink) == (want.st_ino, want.st_nlink)
        assert entry.inode() == want.st_ino
    if not is_symlink:
        assert entry.stat() == st
    assert entry.stat(follow_symlinks=False) is st      # cached per entry


def expect_errno(code, fn, *args, **kw):
    """Call fn and assert it raises OSError with errno code; return the error."""
    with pytest.raises(OSError) as info:
        fn(*args, **kw)
    assert info.value.errno == code, (
        f"{fn.__name__}{args}: errno {errno.errorcode.get(info.value.errno)}, "
        f"want {errno.errorcode[code]}")
    return info.value


def merged_order(layer_dirs, hidden=()):
    """The kernel's merged listing order of layer_dirs (top-most first, the
    dir's merge stack): the bottom layer's names in getdents order, then the
    others by first appearance top-down; names in hidden are dropped."""
    bottom = layer_dirs[-1]
    out = list(os.listdir(bottom))
    seen = set(out)
    for d in layer_dirs[:-1]:
        for n in os.listdir(d):
            if n not in seen:
                seen.add(n)
                out.append(n)
    return [n for n in out if n not in hidden]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def mkdirs_deep(base, components):
    """Create base/c0/c1/... with dir fds (host paths may exceed PATH_MAX).
    Return nothing; base must exist."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in components:
            try:
                os.mkdir(c, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def write_deep(base, components, name, data):
    """Create base/c0/.../name holding data, walking with dir fds."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in components:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        os.write(ffd, data)
        os.close(ffd)
    finally:
        os.close(fd)


def lstat_deep(base, components):
    """os.lstat of base/c0/.../cN, walking with dir fds."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in components[:-1]:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.stat(components[-1], dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
