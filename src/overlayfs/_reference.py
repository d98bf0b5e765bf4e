"""Pure-Python reference resolver for the Linux OverlayFS merged view.

``ReferenceStack`` answers the same questions as the C-backed ``overlayfs.Stack``
(stat, listdir, scandir, walk, open, readlink, xattrs...) for a stack of layer
directories, without mounting anything.  It is written to be obviously correct
rather than fast: the lookup below follows the kernel's ``fs/overlayfs/namei.c``
step by step (``ovl_lookup`` -> ``ovl_lookup_layer`` -> ``ovl_lookup_single``),
with the same names, so it can be read side by side with the kernel source.
It serves as the oracle in differential tests and as a benchmark baseline.

It uses the standard library only and imports nothing from the rest of the
package, so it can be loaded standalone::

    sys.path.insert(0, "src/overlayfs"); import _reference

Layers and indices
    Layer 0 is the upper (``None`` when there is none), 1..N are the lowers in
    the order given (top-most first, as in ``lowerdir=top:...:bottom``) and
    N+1.. are data-only layers.

Union paths
    ``/``-separated, relative to the union root; a leading ``/`` is ignored,
    ``..`` never climbs above the root and symlinks are followed inside the
    root (absolute targets restart at the union root), like
    ``openat2(RESOLVE_IN_ROOT)``, at most 40 of them per resolution (ELOOP).
    A trailing ``/`` requires a directory and follows a final symlink.

Lookup (per path component, in the parent's merge stack; kernel rules)
    * The upper first, then the lowers top to bottom.  A whiteout (char device
      0:0, or a zero-size regular file with ``<ns>.overlay.whiteout``) stops
      the search; a non-directory below a directory stops it too; a directory
      with ``<ns>.overlay.opaque`` = ``y`` is the last one merged.
    * Directory redirects (``<ns>.overlay.redirect``, one name or ``/a/b``)
      are followed; an invalid value gives EINVAL.  With
      ``redirect_follow=False`` a redirect that would be followed gives EPERM.
    * Metacopy files (``<ns>.overlay.metacopy``) need ``metacopy=True`` or
      data layers (EPERM otherwise); their data comes from the regular file
      found below (by name or redirect) or, through an absolute redirect, from
      a data-only layer; no data gives EIO (data layers: the error of the data
      lookup, at open).  ``st_blocks`` comes from the data file.
    * ``whiteouts="oci"`` honours only ``.wh.NAME`` and ``.wh..wh..opq``
      (AUFS/OCI on-disk forms, which hide names in *lower* layers), and the
      ``.wh.*`` names themselves are never visible; ``"kernel"`` (the
      default, as a kernel mount) honours only the kernel forms, where
      ``.wh.*`` files are ordinary files; ``"auto"`` honours both.
    * The root merges every layer and is never opaque.

Listing
    Names are merged by name, the top-most occurrence giving the type; the
    order is the bottom layer's readdir order followed by the names not seen
    yet, by first appearance from the top layer down.  Whited-out names are
    not listed (in plain directories too, unlike the kernel's raw listing),
    with one exception inherited from the kernel: an xattr whiteout is hidden
    only inside a directory marked ``<ns>.overlay.opaque`` = ``x`` in a lower,
    non-bottom layer; elsewhere it is listed and lstat gives ENOENT.  A name
    that exists but cannot be looked up (an invalid redirect, a metacopy file
    without data...) is listed, as the kernel lists it, and lstat raises the
    error (EINVAL, EIO, EPERM...).

Attributes and xattrs come from the top-most entry; a directory merged from
more than one layer reports ``st_nlink == 1``.  Private ``<ns>.overlay.*``
xattrs are hidden and escaped ``<ns>.overlay.overlay.X`` ones are shown as
``<ns>.overlay.X``.  Mount points inside a layer (found in
/proc/self/mountinfo when the stack is created) are not crossed when the
process may clone mounts (``open_tree(OPEN_TREE_CLONE)``, needs
CAP_SYS_ADMIN); otherwise layers are read through their paths and submounts
are seen.  Host paths longer than PATH_MAX are not supported.

Device nodes are not opened unless ``devices=True``: ``open`` and
``os_open`` of a char or block device raise EACCES, as on a nodev mount.
"""

from __future__ import annotations

import builtins
import collections
import errno
import os
import stat
import warnings

__all__ = ["CacheInfo", "ReferenceDirEntry", "ReferenceStack"]

#: Cache statistics, with the fields of ``overlayfs.CacheInfo``.  The reference
#: keeps no byte budget: ``bytes`` is 0, ``max_bytes`` is what was asked for
#: (0 for unbounded) and ``flushes`` stays 0.
CacheInfo = collections.namedtuple(
    "CacheInfo", ["hits", "misses", "entries", "dirs", "bytes", "max_bytes", "generation", "flushes"])

#: Linux MAXSYMLINKS: symlinks followed in one path resolution.
MAXSYMLINKS = 40
#: Linux PATH_MAX: getname() refuses a path of this many bytes or more, before any walk.
PATH_MAX = 4096

_WHITEOUT_MODES = ("kernel", "oci", "auto")
_XATTR_NAMESPACES = ("trusted", "user")
_OCI_PREFIX = b".wh."
_OCI_OPAQUE = b".wh..wh..opq"

#: Size limits of the ``metacopy`` xattr (struct ovl_metacopy without digest).
_METACOPY_MIN_SIZE = 4

# Extra (non-sequence) fields of os.stat_result that a rebuilt result must keep.
_STAT_EXTRA_FIELDS = tuple(
    name
    for name in (
        "st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
        "st_blksize", "st_blocks", "st_rdev", "st_flags", "st_gen", "st_birthtime",
    )
    if hasattr(os.stat_result, name)
)
_ST_INO = 1
_ST_NLINK = 3


def _oserror(err: int | None, path=None, strerror=None) -> OSError:
    err = err or errno.EIO  # an OSError without an errno cannot come from a syscall here
    msg = strerror or os.strerror(err)
    return OSError(err, msg, path) if path is not None else OSError(err, msg)


# Why a lookup fails when the layers are to blame, worded as the C core's
# error details (csrc/namei.c WHY_*, ovl_last_error).
_WHY_BAD_REDIRECT = "invalid redirect xattr, neither one name nor an absolute path without empty components"
_WHY_DOT_REDIRECT = 'redirect xattr with a "." or ".." component'
_WHY_NO_DATA = "metacopy file with no data in the layers below"
_WHY_BAD_METACOPY = "invalid metacopy xattr of 1 to 3 bytes"
_WHY_METACOPY_OFF = "metacopy file, not followed without metacopy=on"
_WHY_NOFOLLOW = "redirect, not followed with redirect_dir=nofollow"
_WHY_NO_DATA_LAYER = "metacopy file whose redirect leads to no regular file in the data-only layers"


def _stat_replace(st: os.stat_result, *, ino=None, nlink=None, blocks=None) -> os.stat_result:
    """A copy of *st* with st_ino, st_nlink and/or st_blocks replaced."""
    seq = list(st[:10])
    extra = {name: getattr(st, name) for name in _STAT_EXTRA_FIELDS}
    if ino is not None:
        seq[_ST_INO] = ino
    if nlink is not None:
        seq[_ST_NLINK] = nlink
    if blocks is not None:
        extra["st_blocks"] = blocks
    return os.stat_result(seq, extra)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _mount_points() -> list:
    """Mount points of this process's mount namespace (bytes), from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            # Octal escapes (\040 for a space...) as the kernel writes them.
            points.append(fields[4].decode("unicode_escape").encode("latin-1"))
    return points


def _open_tree_clone(path: bytes):
    """An O_PATH fd for a private, submount-free clone of the mount at *path*, or None.

    Lookups through the clone see what the kernel's overlay sees in a layer:
    directories that have something mounted on them are read as they are
    underneath.  Needs CAP_SYS_ADMIN; returns None when that is not possible.
    """
    try:
        import ctypes
    except ImportError:  # pragma: no cover - ctypes is part of every CPython build here
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):  # pragma: no cover
        return None
    syscall.restype = ctypes.c_long
    NR_OPEN_TREE = 428  # the same number on every architecture
    OPEN_TREE_CLONE = 1
    AT_FDCWD = -100
    fd = syscall(NR_OPEN_TREE, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(path),
                 ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC))
    return fd if fd >= 0 else None


class _Entry:
    """One real object in one layer: ``rel`` is its path inside the layer."""

    __slots__ = ("layer", "rel", "st", "metacopy", "xwhiteouts")

    def __init__(self, layer: int, rel: bytes, st: os.stat_result):
        self.layer = layer
        self.rel = rel
        self.st = st
        self.metacopy = False  # a regular file whose data lives below
        self.xwhiteouts = False  # a dir whose xattr whiteouts readdir hides


class _Node:
    """The result of looking up one union path (the kernel's ovl_entry + inode).

    ``entry`` is the top-most real object.  ``dirs`` is the merge stack of a
    directory (top first).  A metacopy file has ``data`` (the data file) or
    ``data_errno`` (the data lookup failed).  ``origin`` is the top-most lower
    object below an upper one, whose inode number the union reports.
    """

    __slots__ = ("key", "entry", "dirs", "data", "data_errno", "data_error", "origin")

    def __init__(self, key: tuple, entry: _Entry, dirs=(), data=None, data_errno=None, origin=None):
        self.key = key
        self.entry = entry
        self.dirs = tuple(dirs)
        self.data = data
        self.data_errno = data_errno
        self.data_error: str | None = None  # its message, naming the layer
        self.origin = origin

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.entry.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.entry.st.st_mode)


class _LookupData:
    """Per-lookup state, as the kernel's ``struct ovl_lookup_data``."""

    __slots__ = ("name", "is_dir", "opaque", "stop", "last", "redirect", "metacopy", "absolute_redirect",
                 "mc_at", "redirect_at")

    def __init__(self, name: bytes):
        self.name = name
        # For error messages: (layer, rel) of the last metacopy file found,
        # (layer, rel, value) of the last redirect.
        self.mc_at: tuple | None = None
        self.redirect_at: tuple | None = None
        self.is_dir = False
        self.opaque = False
        self.stop = False
        self.last = False
        self.redirect = None
        self.metacopy = False
        self.absolute_redirect = False


class _Listed:
    """One name of a merged directory listing."""

    __slots__ = ("name", "layer", "node", "entry", "errno")

    def __init__(self, name: bytes, layer: int, node, entry: _Entry, err: int | None = errno.ENOENT):
        self.name = name
        self.layer = layer
        self.node = node  # None when the name's lookup fails (see errno)
        self.entry = entry  # the top-most real object carrying the name
        self.errno = err  # why node is None: ENOENT for a listed xattr whiteout


class ReferenceDirEntry:
    """An entry yielded by :meth:`ReferenceStack.scandir`, modelled on ``os.DirEntry``.

    ``name`` and ``path`` have the type of the scandir argument; ``layer`` is
    the layer supplying the entry.  ``stat()`` results are cached per entry.
    """

    __slots__ = ("name", "path", "layer", "_stack", "_listed", "_lstat", "_stat")

    def __init__(self, stack: ReferenceStack, listed: _Listed, name, path):
        self._stack = stack
        self._listed = listed
        self.name = name
        self.path = path
        self.layer = listed.layer
        self._lstat: os.stat_result | None = None
        self._stat: os.stat_result | None = None

    def __repr__(self):
        return "<ReferenceDirEntry %r>" % (self.name,)

    def __fspath__(self):
        return self.path

    def _mode(self) -> int:
        return self._listed.entry.st.st_mode

    def is_symlink(self) -> bool:
        """True for a symlink; answered from the listing, no stat."""
        return stat.S_ISLNK(self._mode())

    def _test(self, fmt: int, follow_symlinks: bool) -> bool:
        if follow_symlinks and self.is_symlink():
            try:
                return stat.S_IFMT(self.stat().st_mode) == fmt
            except FileNotFoundError:  # as os.DirEntry: other errors (ELOOP...) raise
                return False
        return stat.S_IFMT(self._mode()) == fmt

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        """True for a directory (or a symlink to one when following).

        False if the target does not exist; other errors raise, as with os.DirEntry.
        """
        return self._test(stat.S_IFDIR, follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        """True for a regular file (or a symlink to one when following)."""
        return self._test(stat.S_IFREG, follow_symlinks)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """The union stat of the entry; cached per entry."""
        self._stack._check_open()
        if self._lstat is None:
            if self._listed.node is None:
                raise _oserror(self._listed.errno, self.path)
            self._lstat = self._stack._node_stat(self._listed.node, self.path)
        if not follow_symlinks or not self.is_symlink():
            return self._lstat
        if self._stat is None:
            self._stat = self._stack.stat(self.path)
        return self._stat

    def inode(self) -> int:
        """The entry's st_ino, as lstat reports it (the kernel's d_ino once the
        directory is impure); for a listed xattr whiteout, its real inode."""
        if self._listed.node is None:
            return self._listed.entry.st.st_ino
        return self.stat(follow_symlinks=False).st_ino


class _ScandirIterator:
    """Iterator over :class:`ReferenceDirEntry` objects; usable as a context manager."""

    def __init__(self, entries):
        self._it = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        self._it = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _absolute(path):
    """A layer path made absolute against the current directory (as Stack does:
    normalised unless it has a ".." component, which may follow a symlink)."""
    path = os.fspath(path)
    if os.path.isabs(path):
        return path
    joined = os.path.join(os.getcwdb() if isinstance(path, bytes) else os.getcwd(), path)
    return joined if os.path.pardir in os.fsdecode(path).split(os.sep) else os.path.normpath(joined)


class ReferenceStack:
    """The merged OverlayFS view of a stack of layer directories, in plain Python.

    ``lowers`` are top-most first.  See the module docstring for the rules.
    With ``cache=True`` lookups and listings are memoized until
    :meth:`invalidate`; attributes are always read fresh from the layers.
    """

    def __init__(self, lowers, upper=None, work=None, *, xattr_namespace="trusted", whiteouts="kernel",
                 cache=True, data_layers=(), metacopy=False, redirect_follow=True, cache_max_bytes=None,
                 devices=False):
        self._closed = True  # until the layers are open
        self._fds: list[int] = []
        if isinstance(lowers, (str, bytes, os.PathLike)):
            raise TypeError("lowers must be a sequence of layer paths (top-most first), not a single path")
        lowers = [_absolute(p) for p in lowers]
        data_layers = [_absolute(p) for p in data_layers]
        if not lowers:
            raise ValueError("at least one lower layer is needed")
        if whiteouts not in _WHITEOUT_MODES:
            raise ValueError("whiteouts must be one of %r, not %r" % (_WHITEOUT_MODES, whiteouts))
        if xattr_namespace not in _XATTR_NAMESPACES:
            raise ValueError("xattr_namespace must be one of %r, not %r" % (_XATTR_NAMESPACES, xattr_namespace))
        if work is not None and upper is None:
            raise ValueError("work needs an upper layer")
        if cache_max_bytes is not None and cache_max_bytes <= 0:
            raise ValueError("cache_max_bytes must be positive")
        self.xattr_namespace = xattr_namespace
        self.whiteouts = whiteouts
        self.metacopy = bool(metacopy)
        self.redirect_follow = bool(redirect_follow)
        self.devices = bool(devices)
        self.upper = None if upper is None else _absolute(upper)
        self.work = None if work is None else _absolute(work)
        self.lowers = tuple(lowers)
        self.data_layers = tuple(data_layers)
        self._max_bytes = cache_max_bytes or 0
        self._kernel_whiteouts = whiteouts in ("auto", "kernel")
        self._oci = whiteouts in ("auto", "oci")
        prefix = (xattr_namespace + ".overlay.").encode()
        self._private_prefix = prefix
        self._escaped_prefix = prefix + b"overlay."
        self._x_opaque = prefix + b"opaque"
        self._x_whiteout = prefix + b"whiteout"
        self._x_redirect = prefix + b"redirect"
        self._x_metacopy = prefix + b"metacopy"

        given = [self.upper] + lowers + data_layers
        #: Host paths by layer index, as given: 0 = upper (None without one), then lowers, then data layers.
        self.layers = tuple(given)
        self._nlower = len(lowers)
        self._bottom = len(lowers)  # index of the bottom non-data lower
        self._data_layer_ids = tuple(range(len(lowers) + 1, len(given)))
        self._public: list = [None] * len(given)  # layer path as bytes, for resolve()
        self._access: list = [None] * len(given)  # path prefix used for syscalls
        self._root_dev: list = [None] * len(given)
        mount_points = _mount_points()
        try:
            namemax = 0
            for i, p in enumerate(given):
                if p is None:
                    continue
                path = os.fsencode(p)
                try:
                    st = os.stat(path)
                except OSError as e:
                    raise _oserror(e.errno, p) from None
                if not stat.S_ISDIR(st.st_mode):
                    raise _oserror(errno.ENOTDIR, p)
                namemax = max(namemax, os.statvfs(path).f_namemax)
                self._public[i] = path.rstrip(b"/") or b"/"
                real = os.path.realpath(path)
                self._access[i] = real
                # Something mounted inside the layer: read the layer through a
                # clone of its mount without submounts, as the kernel does.
                prefix = real.rstrip(b"/") + b"/"
                if any(m.startswith(prefix) for m in mount_points):
                    fd = _open_tree_clone(path)
                    if fd is not None:
                        self._fds.append(fd)
                        self._access[i] = b"/proc/self/fd/%d" % fd
                self._root_dev[i] = st.st_dev
        except BaseException:
            self.close()
            raise
        self._namemax = namemax or 255

        self._cache_enabled = bool(cache)
        self._children: dict = {}  # (parent key, name) -> _Node or (errno, None, message)
        self._listings: dict = {}  # dir key -> [_Listed]
        self._hits = 0
        self._misses = 0
        self._generation = 0
        self._closed = False
        try:
            self._set_root()
        except BaseException:
            self.close()
            raise

    # -- lifetime ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def close(self) -> None:
        """Release the layer clones.  Safe to call twice."""
        self._closed = True
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if hasattr(self, "_children"):
            self._children.clear()
            self._listings.clear()

    def __del__(self):
        if not getattr(self, "_closed", True):
            warnings.warn("unclosed %r" % (self,), ResourceWarning, stacklevel=2, source=self)
        if getattr(self, "_fds", None):
            self.close()

    def __reduce__(self):
        raise TypeError("cannot pickle 'ReferenceStack' objects")

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<%sReferenceStack upper=%r lowers=%d data_layers=%d>" % (
            "closed " if self._closed else "", self.upper, len(self.lowers), len(self.data_layers))

    def _check_open(self):
        if self._closed:
            raise ValueError("I/O operation on a closed Stack")

    # -- real paths ----------------------------------------------------------

    def _apath(self, layer: int, rel: bytes) -> bytes:
        """Path used to reach *rel* of *layer* (through the clone when there is one)."""
        # "/." makes a layer root an actual directory even when the prefix is
        # the /proc/self/fd magic link of a clone.
        return self._access[layer] + b"/" + (rel or b".")

    def _ppath(self, entry: _Entry) -> bytes:
        """The host path of *entry*, as the caller knows the layer."""
        base = self._public[entry.layer]
        return base + b"/" + entry.rel if entry.rel else base

    def _getxattr(self, apath: bytes, name: bytes):
        """Raw xattr value of a real object, or None if it is absent or unsupported."""
        try:
            return os.getxattr(apath, name, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                return None
            if e.errno == errno.EACCES and self.xattr_namespace == "user":
                return None
            raise

    def _lexists(self, layer: int, rel: bytes) -> bool:
        try:
            os.lstat(self._apath(layer, rel))
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
                return False
            raise
        return True

    # -- whiteouts, opaque, redirects, metacopy (util.c) ------------------------

    def _is_whiteout(self, layer: int, rel: bytes, st: os.stat_result) -> bool:
        """Kernel whiteout forms: char device 0:0, or a zero-size file with X.whiteout."""
        if not self._kernel_whiteouts:
            return False
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return self._getxattr(self._apath(layer, rel), self._x_whiteout) is not None
        return False

    def _opaque_val(self, layer: int, rel: bytes):
        """The X.opaque byte of a directory: b"y", b"x", other, or None (ovl_get_dir_xattr_val)."""
        if not self._kernel_whiteouts:
            return None
        val = self._getxattr(self._apath(layer, rel), self._x_opaque)
        # The kernel reads into a one-byte buffer: longer values do not count.
        return val if val is not None and len(val) == 1 else None

    def _damaged(self, err: int, layer: int, rel: bytes | None, reason: str, value: bytes | None = None) -> OSError:
        """OSError(err) whose message says which layer holds what is wrong
        and why, in the C core's words: "<strerror> (layer N '<host path>',
        '<path in the layer>': <reason>[: '<value>'])"."""
        text = "layer %d" % layer
        if 0 <= layer < len(self._public) and self._public[layer] is not None:
            text += " %r" % os.fsdecode(self._public[layer])
        if rel:
            text += ", %r" % os.fsdecode(rel)
        text += ": " + reason
        if value:
            text += ": %r" % os.fsdecode(value.split(b"\0", 1)[0][:255])
        return _oserror(err, None, "%s (%s)" % (os.strerror(err), text))

    def _get_redirect(self, layer: int, rel: bytes):
        """The X.redirect value, validated like ovl_get_redirect_xattr; None if absent."""
        buf = self._getxattr(self._apath(layer, rel), self._x_redirect)
        if buf is None:
            return None
        if not buf:
            raise self._damaged(errno.EINVAL, layer, rel, "empty redirect xattr")
        raw = buf
        buf = buf.split(b"\0", 1)[0]  # the kernel treats the value as a C string
        if buf.startswith(b"/"):
            if any(part == b"" for part in buf[1:].split(b"/")):
                raise self._damaged(errno.EINVAL, layer, rel, _WHY_BAD_REDIRECT, raw)
        elif b"/" in buf:
            raise self._damaged(errno.EINVAL, layer, rel, _WHY_BAD_REDIRECT, raw)
        return buf

    def _check_metacopy(self, layer: int, rel: bytes, st: os.stat_result) -> bool:
        """Does this regular file carry X.metacopy?  A 1-3 byte value is EIO."""
        if not stat.S_ISREG(st.st_mode):
            return False
        val = self._getxattr(self._apath(layer, rel), self._x_metacopy)
        if val is None:
            return False
        if 0 < len(val) < _METACOPY_MIN_SIZE:
            raise self._damaged(errno.EIO, layer, rel, _WHY_BAD_METACOPY)
        return True

    def _follow_error(self, d: _LookupData) -> OSError:
        """EPERM, saying which of _check_follow_redirect's rules refused."""
        if d.metacopy and not self.metacopy:
            mlayer, mrel = d.mc_at or (0, None)
            return self._damaged(errno.EPERM, mlayer, mrel, _WHY_METACOPY_OFF)
        rlayer, rrel, rvalue = d.redirect_at or (0, None, None)
        return self._damaged(errno.EPERM, rlayer, rrel, _WHY_NOFOLLOW, rvalue)

    def _check_follow_redirect(self, d: _LookupData, upperredirect) -> bool:
        """May the lookup go on below (namei.c:ovl_check_follow_redirect)?"""
        if d.metacopy and not self.metacopy:
            return False
        if (d.redirect or upperredirect) and not self.redirect_follow:
            return False
        return True

    # -- lookup (namei.c) -----------------------------------------------------------

    def _lookup_single(self, layer: int, base_rel: bytes, name: bytes, d: _LookupData,
                       prelen: int, post: bytes):
        """Look *name* up in one directory of one layer (ovl_lookup_single).

        Returns the entry found, or None; updates *d*.  *post* is the rest of
        an absolute redirect path after this component.
        """
        last_element = not post
        is_upper = layer == 0
        if name in (b"", b".", b".."):
            # lookup_one() refuses these names; only a redirect has them
            rlayer, rrel, rvalue = d.redirect_at or (layer, None, d.name)
            raise self._damaged(errno.EACCES, rlayer, rrel, _WHY_DOT_REDIRECT, rvalue)
        rel = _join(base_rel, name)
        try:
            st = os.lstat(self._apath(layer, rel))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENAMETOOLONG):
                raise
            st = None
        # OCI/AUFS: .wh.NAME hides NAME in the layers below this one.
        oci_whiteout = self._oci and self._lexists(layer, _join(base_rel, _OCI_PREFIX + name))
        if st is None:
            if oci_whiteout:
                d.stop = d.opaque = True
            return None
        if self._is_whiteout(layer, rel, st):
            d.stop = d.opaque = True
            return None
        # Below a metacopy file only a regular file can supply the data.
        if last_element and d.metacopy and not stat.S_ISREG(st.st_mode):
            d.stop = True
            return None
        entry = _Entry(layer, rel, st)
        if not stat.S_ISDIR(st.st_mode):
            if d.is_dir or not last_element:
                d.stop = True
                return None
            entry.metacopy = d.metacopy = self._check_metacopy(layer, rel, st)
            if d.metacopy:
                d.mc_at = (layer, rel)
            d.stop = not d.metacopy or oci_whiteout
            if not d.metacopy or d.last:
                return entry
        else:
            if last_element:
                d.is_dir = True
            if d.last:
                return entry
            val = self._opaque_val(layer, rel)
            oci_opaque = self._oci and self._lexists(layer, _join(rel, _OCI_OPAQUE))
            if last_element and not is_upper and val == b"x":
                entry.xwhiteouts = True
            if val == b"y" or oci_opaque or oci_whiteout:
                d.stop = True
                if last_element:
                    d.opaque = True
                return entry
        self._check_redirect(layer, rel, d, prelen, post)
        return entry

    def _check_redirect(self, layer: int, rel: bytes, d: _LookupData, prelen: int, post: bytes) -> None:
        """Apply an X.redirect found on *rel* to the name searched below (ovl_check_redirect)."""
        d.absolute_redirect = False
        buf = self._get_redirect(layer, rel)
        if buf is None:
            return
        d.redirect_at = (layer, rel, buf)
        if buf.startswith(b"/"):
            d.absolute_redirect = True
            # An opaque ancestor in an absolute path walk may have set stop;
            # an absolute redirect further down restarts the lower search.
            d.stop = False
            name = buf + post
        else:
            name = d.name[:prelen] + buf + post
        d.redirect = d.name = name

    def _lookup_layer(self, base: _Entry, d: _LookupData):
        """Look ``d.name`` up in one layer below *base* (ovl_lookup_layer).

        An absolute name is walked component by component from *base* (then a
        layer root); a redirect met on the way rewrites the walked prefix.
        """
        if not d.name.startswith(b"/"):
            return self._lookup_single(base.layer, base.rel, d.name, d, 0, b"")
        rem = len(d.name) - 1  # counting from the end, since the prefix can change
        cur = base
        while True:
            start = len(d.name) - rem
            end = d.name.find(b"/", start)
            if end < 0:
                end = len(d.name)
            is_last = end == len(d.name)  # decided before a redirect rewrites d.name
            this = self._lookup_single(cur.layer, cur.rel, d.name[start:end], d, start, d.name[end:])
            if this is None or is_last:
                return this
            if not stat.S_ISDIR(this.st.st_mode):
                return None
            rem -= end - start + 1
            cur = this

    def _lookup(self, parent: _Node, name: bytes) -> _Node:
        """Look up *name* in the directory *parent* (namei.c:ovl_lookup).  Raises OSError."""
        if len(name) > self._namemax:
            raise _oserror(errno.ENAMETOOLONG)
        if self._oci and name.startswith(_OCI_PREFIX):
            raise _oserror(errno.ENOENT)  # whiteout markers are never visible
        d = _LookupData(name)
        check_redirect = self.redirect_follow or bool(self._data_layer_ids)
        root_lowers = self._root_lowers
        poe = root_lowers if parent is self._root else [e for e in parent.dirs if e.layer != 0]
        upperdir = parent.dirs[0] if parent.dirs and parent.dirs[0].layer == 0 else None
        d.last = False if check_redirect else not poe
        upper = None
        uppermetacopy = False
        upperredirect = None
        if upperdir is not None:
            upper = self._lookup_layer(upperdir, d)
            if upper is not None and not d.is_dir:
                uppermetacopy = d.metacopy
            if d.redirect:
                upperredirect = d.redirect
                if d.redirect.startswith(b"/"):
                    poe = root_lowers
        found: list[_Entry] = []
        i = 0
        while not d.stop and i < len(poe):
            lower = poe[i]
            if not self._check_follow_redirect(d, upperredirect):
                raise self._follow_error(d)
            if not check_redirect:
                d.last = i == len(poe) - 1
            elif d.is_dir or not self._data_layer_ids:
                d.last = lower.layer == self._bottom
            this = self._lookup_layer(lower, d)
            if this is not None:
                # Keep only the top-most lower metacopy and the data below it.
                if not (d.metacopy and found):
                    found.append(this)
                if d.stop:
                    break
                if d.redirect and d.redirect.startswith(b"/") and poe is not root_lowers:
                    poe = root_lowers
                    i = lower.layer - 1  # continue below this layer, from the roots
            i += 1
        data_redirect = None
        if d.metacopy and found and self._data_layer_ids and d.absolute_redirect:
            d.metacopy = False  # the data is looked up in the data-only layers
            data_redirect = d.redirect
        elif not self._check_follow_redirect(d, upperredirect):
            raise self._follow_error(d)
        if d.metacopy or (uppermetacopy and not found):
            # metacopy with no data found
            mlayer, mrel = d.mc_at or (0, None)
            raise self._damaged(errno.EIO, mlayer, mrel, _WHY_NO_DATA)
        if upper is None and not found:
            raise _oserror(errno.ENOENT)
        key = parent.key + (name,)
        top = upper if upper is not None else found[0]
        origin = found[0] if upper is not None and found else None
        if d.is_dir:
            return _Node(key, top, ([upper] if upper is not None else []) + found, origin=origin)
        node = _Node(key, top, origin=origin)
        if top.metacopy:
            if data_redirect is not None:
                try:
                    node.data = self._lookup_data_layers(data_redirect)
                except OSError as e:
                    node.data_errno = e.errno
                    node.data_error = self._damaged(e.errno or errno.EIO, top.layer, top.rel,
                                                    _WHY_NO_DATA_LAYER, data_redirect).strerror
            else:
                node.data = found[-1]
        return node

    def _lookup_data_layers(self, redirect: bytes) -> _Entry:
        """Find the data of a metacopy file in the data-only layers (ovl_lookup_data_layers).

        Each layer is tried in order with a contained walk: no symlinks (ELOOP),
        no climbing out (EXDEV), no mount crossing (EXDEV); the target must be
        a regular file (ENOENT).  Raises the last layer's error.
        """
        err: int | None = errno.ENOENT
        for layer in self._data_layer_ids:
            parts: list[bytes] = []
            try:
                for part in redirect.split(b"/"):
                    if part in (b"", b"."):
                        continue
                    if part == b"..":
                        if not parts:
                            raise _oserror(errno.EXDEV)
                        parts.pop()
                        continue
                    parts.append(part)
                rel = b""
                st = os.stat(self._apath(layer, b""))
                for part in parts:
                    if not stat.S_ISDIR(st.st_mode):
                        raise _oserror(errno.ENOTDIR)
                    rel = _join(rel, part)
                    st = os.lstat(self._apath(layer, rel))
                    if stat.S_ISLNK(st.st_mode):
                        raise _oserror(errno.ELOOP)
                    if st.st_dev != self._root_dev[layer]:
                        raise _oserror(errno.EXDEV)
                if not stat.S_ISREG(st.st_mode):
                    raise _oserror(errno.ENOENT)
                return _Entry(layer, rel, st)
            except OSError as e:
                err = e.errno
        raise _oserror(err)

    def _set_root(self) -> None:
        self._root = self._make_root()
        self._root_lowers = [e for e in self._root.dirs if e.layer != 0]

    def _make_root(self) -> _Node:
        """The root merges every layer; only lower roots above the bottom can mark xwhiteouts."""
        dirs = []
        for layer in range(0, self._nlower + 1):
            if self._public[layer] is None:
                continue
            entry = _Entry(layer, b"", os.stat(self._apath(layer, b"")))
            if 0 < layer < self._bottom and self._opaque_val(layer, b"") == b"x":
                entry.xwhiteouts = True
            dirs.append(entry)
        return _Node((), dirs[0], dirs)

    def _child(self, parent: _Node, name: bytes) -> _Node:
        """Cached lookup of one component.  Raises OSError without a filename."""
        key = (parent.key, name)
        cached = self._children.get(key)
        if cached is not None:
            self._hits += 1
            if isinstance(cached, tuple):
                raise _oserror(*cached)
            return cached
        self._misses += 1
        try:
            node = self._lookup(parent, name)
        except OSError as e:
            if self._cache_enabled:
                self._children[key] = (e.errno, None, e.strerror)
            raise _oserror(e.errno, None, e.strerror) from None
        if self._cache_enabled:
            self._children[key] = node
        return node

    # -- path resolution -------------------------------------------------------------

    @staticmethod
    def _components(path):
        """Split a union path into byte components; a trailing slash becomes '.'."""
        raw = os.fsencode(os.fspath(path))
        if b"\0" in raw:
            raise ValueError("embedded null byte")
        parts = [p for p in raw.split(b"/") if p]
        if parts and raw.endswith(b"/"):
            parts.append(b".")
        return parts

    def _resolve_node(self, path, follow: bool) -> _Node:
        """Resolve a union path to a node, following symlinks inside the union root.

        The final component is followed only if *follow*.  Raises OSError
        carrying *path* as the filename.
        """
        self._check_open()
        pending = self._components(path)
        if len(os.fsencode(os.fspath(path))) >= PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        dirs = [self._root]  # the directories walked so far; dirs[-1] is the current one
        hops = 0
        node = self._root
        try:
            while pending:
                name = pending.pop(0)
                if name == b".":
                    node = dirs[-1]
                    continue
                if name == b"..":
                    if len(dirs) > 1:
                        dirs.pop()
                    node = dirs[-1]
                    continue
                node = self._child(dirs[-1], name)
                if node.is_symlink and (pending or follow):
                    hops += 1
                    if hops > MAXSYMLINKS:
                        raise _oserror(errno.ELOOP)
                    target = os.readlink(self._apath(node.entry.layer, node.entry.rel))
                    if target.startswith(b"/"):
                        dirs = [self._root]
                    pending = self._components(target) + pending
                    node = dirs[-1]
                    continue
                if pending:
                    if not node.is_dir:
                        raise _oserror(errno.ENOTDIR)
                    dirs.append(node)
        except OSError as e:
            raise _oserror(e.errno, path, e.strerror) from None
        return node

    # -- attributes -------------------------------------------------------------------

    def _node_stat(self, node: _Node, path) -> os.stat_result:
        """Union stat of a node: the top-most object's, with overlay adjustments.

        * An upper object with a lower one below (a merged directory, or a
          metacopy file) reports the lower one's inode number, as the kernel
          does for a copy-up origin; a non-directory only if that has nlink 1.
        * A merged directory reports st_nlink 1.
        * A metacopy file reports the st_blocks of its data.
        """
        entry = node.entry
        ino = nlink = blocks = None
        try:
            st = os.lstat(self._apath(entry.layer, entry.rel))
            is_dir = stat.S_ISDIR(st.st_mode)
            if node.origin is not None:
                origin = os.lstat(self._apath(node.origin.layer, node.origin.rel))
                if is_dir or origin.st_nlink == 1:
                    ino = origin.st_ino
            if is_dir and len(node.dirs) > 1:
                nlink = 1
            if entry.metacopy:
                if node.data is not None:
                    blocks = os.lstat(self._apath(node.data.layer, node.data.rel)).st_blocks
                else:
                    # No data found: like the kernel before its lazy data lookup,
                    # guess from the size.
                    blocks = -(-st.st_size // st.st_blksize) * st.st_blksize >> 9
        except OSError as e:
            raise _oserror(e.errno, path) from None
        if ino is None and nlink is None and blocks is None:
            return st
        return _stat_replace(st, ino=ino, nlink=nlink, blocks=blocks)

    def lstat(self, path="") -> os.stat_result:
        """Stat a union path without following a final symlink."""
        return self._node_stat(self._resolve_node(path, follow=False), path)

    def stat(self, path="", *, follow_symlinks=True) -> os.stat_result:
        """Stat a union path, following a final symlink inside the union root (unless told not to)."""
        return self._node_stat(self._resolve_node(path, follow=follow_symlinks), path)

    def _test(self, path, follow: bool, fmt=None) -> bool:
        self._check_open()
        try:
            node = self._resolve_node(path, follow)
        except (OSError, ValueError):  # ValueError: an embedded NUL, as os.path.exists
            return False
        return fmt is None or stat.S_IFMT(node.entry.st.st_mode) == fmt

    def exists(self, path) -> bool:
        """True if the path resolves (following symlinks)."""
        return self._test(path, True)

    def lexists(self, path) -> bool:
        """True if the path resolves without following a final symlink."""
        return self._test(path, False)

    def isdir(self, path) -> bool:
        return self._test(path, True, stat.S_IFDIR)

    def isfile(self, path) -> bool:
        return self._test(path, True, stat.S_IFREG)

    def islink(self, path) -> bool:
        return self._test(path, False, stat.S_IFLNK)

    def readlink(self, path):
        """The target of a symlink (str for a str path, bytes for bytes)."""
        node = self._resolve_node(path, follow=False)
        if not node.is_symlink:
            raise _oserror(errno.EINVAL, path)
        try:
            target = os.readlink(self._apath(node.entry.layer, node.entry.rel))
        except OSError as e:
            raise _oserror(e.errno, path) from None
        return target if isinstance(os.fspath(path), bytes) else os.fsdecode(target)

    def resolve(self, path, *, follow_symlinks=False, data=False):
        """The host path of the entry that supplies *path*.

        The final component is not followed unless *follow_symlinks*; with
        *data* a metacopy file gives the file holding its data.  None if the
        path does not exist (ENOENT or ENOTDIR); other errors raise.  The
        result has the type of *path*.
        """
        try:
            node = self._resolve_node(path, follow=follow_symlinks)
        except (FileNotFoundError, NotADirectoryError):
            return None
        entry = node.entry
        if data and entry.metacopy:
            if node.data is None:
                raise _oserror(node.data_errno or errno.EIO, path, node.data_error)
            entry = node.data
        host = self._ppath(entry)
        return host if isinstance(os.fspath(path), bytes) else os.fsdecode(host)

    def layer_of(self, path) -> int:
        """Index of the layer supplying *path* (lstat semantics)."""
        return self._resolve_node(path, follow=False).entry.layer

    def _data_entry(self, node: _Node, path) -> _Entry:
        """The real object holding the content of a node (the data file of a metacopy file)."""
        if not node.entry.metacopy:
            return node.entry
        if node.data is None:
            raise _oserror(node.data_errno or errno.EIO, path, node.data_error)
        return node.data

    def _nodev(self, st: os.stat_result) -> bool:
        """May this object not be opened: a device, without ``devices=True`` (nodev)?"""
        return not self.devices and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode))

    def open(self, path, mode="rb", buffering=-1, encoding=None, errors=None, newline=None):
        """Open a union file read-only (following a final symlink), like io.open.

        A metacopy file reads its data from the file below.  Write modes
        raise OSError(EROFS); a device raises EACCES unless ``devices=True``.
        """
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "read-only stack: writing needs copy-up", path)
        node = self._resolve_node(path, follow=True)
        if node.is_dir:
            raise _oserror(errno.EISDIR, path)
        if self._nodev(node.entry.st):
            raise _oserror(errno.EACCES, path)
        target = self._data_entry(node, path)
        try:
            f = builtins.open(self._apath(target.layer, target.rel), mode, buffering, encoding, errors, newline)
        except OSError as e:
            raise _oserror(e.errno, path) from None
        if self._nodev(os.fstat(f.fileno())):  # it became a device since the lookup
            f.close()
            raise _oserror(errno.EACCES, path)
        return f

    def os_open(self, path, flags=os.O_RDONLY) -> int:
        """Open a union path like os.open, read-only flags only (else EROFS); returns the fd.
        A device gives EACCES unless ``devices=True``."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, "read-only stack: writing needs copy-up", path)
        node = self._resolve_node(path, follow=not flags & os.O_NOFOLLOW)
        if not flags & os.O_DIRECTORY and self._nodev(node.entry.st):
            raise _oserror(errno.EACCES, path)
        target = node.entry if node.is_dir else self._data_entry(node, path)
        try:
            fd = os.open(self._apath(target.layer, target.rel), flags | os.O_NOFOLLOW)
        except OSError as e:
            raise _oserror(e.errno, path) from None
        if self._nodev(os.fstat(fd)):  # it became a device since the lookup
            os.close(fd)
            raise _oserror(errno.EACCES, path)
        return fd

    # -- xattrs ---------------------------------------------------------------------------

    def _real_xattr_name(self, name) -> bytes:
        """Map an overlay xattr name to the stored one: private names are escaped."""
        raw = os.fsencode(name)
        if raw.startswith(self._private_prefix):
            if raw == self._private_prefix:
                raise _oserror(errno.EINVAL)  # an empty name after the handler prefix
            return self._escaped_prefix + raw[len(self._private_prefix):]
        return raw

    def getxattr(self, path, attribute, *, follow_symlinks=True) -> bytes:
        """An xattr as seen through the overlay (``<ns>.overlay.X`` reads the escaped form)."""
        node = self._resolve_node(path, follow=follow_symlinks)
        try:
            real = self._real_xattr_name(attribute)
            return os.getxattr(self._apath(node.entry.layer, node.entry.rel), real, follow_symlinks=False)
        except OSError as e:
            raise _oserror(e.errno, path) from None

    def listxattr(self, path="", *, follow_symlinks=True) -> list:
        """Xattr names as seen through the overlay: private ones hidden, escaped ones unescaped."""
        node = self._resolve_node(path, follow=follow_symlinks)
        try:
            names = os.listxattr(self._apath(node.entry.layer, node.entry.rel), follow_symlinks=False)
        except OSError as e:
            raise _oserror(e.errno, path) from None
        out = []
        private, escaped = os.fsdecode(self._private_prefix), os.fsdecode(self._escaped_prefix)
        for name in names:
            if name.startswith(escaped):
                out.append(private + name[len(escaped):])
            elif not name.startswith(private):
                out.append(name)
        return out

    # -- directories ---------------------------------------------------------------------------

    def _listing(self, node: _Node) -> list:
        """The merged listing of a directory node (readdir.c:ovl_dir_read_merged)."""
        cached = self._listings.get(node.key)
        if cached is not None:
            self._hits += 1
            return cached
        self._misses += 1
        per_layer = []  # [(entry of the dir, [names in readdir order])], top first
        for dentry in node.dirs:
            with os.scandir(self._apath(dentry.layer, dentry.rel)) as it:
                names = [e.name for e in it]
            if self._oci:
                names = [n for n in names if not n.startswith(_OCI_PREFIX)]
            per_layer.append((dentry, names))
        # Order: the bottom layer's names in its readdir order, then the rest
        # by first appearance from the top down.  Remember the top-most layer
        # that carries each name.
        order = list(per_layer[-1][1])
        seen = set(order)
        top_of: dict[bytes, _Entry] = {}
        for dentry, names in per_layer:
            for n in names:
                top_of.setdefault(n, dentry)
                if n not in seen:
                    seen.add(n)
                    order.append(n)
        listed = []
        for n in order:
            dentry = top_of[n]
            rel = _join(dentry.rel, n)
            err = None
            try:
                child = self._child(node, n)
            except OSError as e:
                child, err = None, e.errno
            if child is not None:
                listed.append(_Listed(n, child.entry.layer, child, child.entry))
                continue
            try:
                st = os.lstat(self._apath(dentry.layer, rel))
            except OSError:
                continue
            if err != errno.ENOENT:
                # It exists but its lookup fails (an invalid redirect, a
                # metacopy without data...): listed, like the kernel does,
                # so the damage shows; its stat raises.
                listed.append(_Listed(n, dentry.layer, None, _Entry(dentry.layer, rel, st), err))
                continue
            # The one name listed although it does not exist: an xattr
            # whiteout outside a directory marked opaque=x.
            if (not dentry.xwhiteouts and self._kernel_whiteouts and stat.S_ISREG(st.st_mode)
                    and self._is_whiteout(dentry.layer, rel, st)):
                listed.append(_Listed(n, dentry.layer, None, _Entry(dentry.layer, rel, st)))
        if self._cache_enabled:
            self._listings[node.key] = listed
        return listed

    def _dir_listing(self, path) -> list:
        node = self._resolve_node(path, follow=True)
        if not node.is_dir:
            raise _oserror(errno.ENOTDIR, path)
        try:
            return self._listing(node)
        except OSError as e:
            raise _oserror(e.errno, path) from None

    def listdir(self, path=""):
        """Merged names of a directory, in overlay readdir order (str or bytes like *path*)."""
        listed = self._dir_listing(path)
        if isinstance(os.fspath(path), bytes):
            return [item.name for item in listed]
        return [os.fsdecode(item.name) for item in listed]

    def scandir(self, path=""):
        """Iterator of :class:`ReferenceDirEntry` for a directory, in listdir order."""
        listed = self._dir_listing(path)
        path = os.fspath(path)
        entries = []
        for item in listed:
            name = item.name if isinstance(path, bytes) else os.fsdecode(item.name)
            entries.append(ReferenceDirEntry(self, item, name, os.path.join(path, name)))
        return _ScandirIterator(entries)

    def walk(self, top="", topdown=True, onerror=None, followlinks=False):
        """Like os.walk over union paths: yields (dirpath, dirnames, filenames)."""
        stack = [(os.fspath(top), False)]
        while stack:
            current, emit_only = stack.pop()
            if emit_only:
                yield current
                continue
            try:
                entries = list(self.scandir(current))
            except OSError as e:
                if onerror is not None:
                    onerror(e)
                continue
            dirs, nondirs, walk_into = [], [], []
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:  # like os.walk: then it is not a directory
                    is_dir = False
                if is_dir:
                    dirs.append(entry.name)
                    if not topdown and (followlinks or not entry.is_symlink()):
                        walk_into.append(entry.path)
                else:
                    nondirs.append(entry.name)
            if topdown:
                yield current, dirs, nondirs
                for name in reversed(dirs):
                    new_path = os.path.join(current, name)
                    if followlinks or not self.islink(new_path):
                        stack.append((new_path, False))
            else:
                stack.append(((current, dirs, nondirs), True))
                for new_path in reversed(walk_into):
                    stack.append((new_path, False))

    # -- cache ------------------------------------------------------------------------------------

    def invalidate(self, path=None) -> None:
        """Forget cached lookups and listings: everything, or *path* (taken lexically) and below.

        The parent's listing is dropped too, since the name may have come or gone.
        """
        self._check_open()
        self._generation += 1
        key: list[bytes] = []
        for part in self._components(path if path is not None else b""):
            if part == b"..":
                if key:
                    key.pop()
            elif part != b".":
                key.append(part)
        key_t = tuple(key)
        if not key_t:
            self._children.clear()
            self._listings.clear()
            self._set_root()  # the root's own markers may have changed too
            return
        n = len(key_t)
        parent = key_t[:-1]
        for k in [k for k in self._children if (k[0] + (k[1],))[:n] == key_t]:
            del self._children[k]
        for k in [k for k in self._listings if k[:n] == key_t or k == parent]:
            del self._listings[k]

    def cache_info(self) -> CacheInfo:
        """Cache statistics: lookups and listings served from the cache (hits) or
        computed (misses), cached lookups (entries) and listings (dirs), and the
        number of invalidate() calls (generation)."""
        self._check_open()
        return CacheInfo(self._hits, self._misses, len(self._children), len(self._listings), 0,
                         self._max_bytes, self._generation, 0)
