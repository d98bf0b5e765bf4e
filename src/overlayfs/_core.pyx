# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False, embedsignature=True, embedsignature.format=clinic
"""The compiled half of overlayfs: _Stack, the base of overlayfs.Stack.

This module owns conversion (str/bytes paths in, the same kind out), object
lifetime and raising; every rule of the overlay lives in the C core
(csrc/), and what is composed of _Stack's own calls (walk, makedirs, move,
diff, ...) in the plain Python subclass overlayfs.stack.Stack, as uvloop's
Loop subclasses its compiled base.  Nothing here imports the Python modules
above it.  Calls first try to answer from the lookup cache while holding
the GIL (no syscall, no lock wait); only when a layer must be read is the
GIL released around the C call.
"""
import io
import math
import os
import stat as _stat
import warnings
from collections import namedtuple

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.ref cimport PyObject, Py_INCREF
from libc.errno cimport EAGAIN, EINVAL, ELOOP, ENOENT, ENOTDIR, ERANGE, EROFS, ENAMETOOLONG, EXDEV
from libc.stdint cimport uint64_t, int64_t
from libc.string cimport strlen, memchr
from posix.stat cimport struct_stat
from posix.time cimport timespec


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_EncodeFSDefault(object o)
    object PyUnicode_DecodeFSDefaultAndSize(const char *s, Py_ssize_t size)
    ctypedef struct PyTypeObject
    object PyStructSequence_New(PyTypeObject *t)
    void PyStructSequence_SET_ITEM(object p, Py_ssize_t pos, object o)

cdef extern from "<dirent.h>":
    enum:
        DT_UNKNOWN
        DT_DIR
        DT_REG
        DT_LNK

cdef extern from "<fcntl.h>":
    enum:
        O_RDONLY
        O_WRONLY
        O_RDWR
        O_ACCMODE
        O_CREAT
        O_EXCL
        O_TRUNC
        O_APPEND
        O_CLOEXEC

cdef extern from "<sys/stat.h>":
    enum:
        UTIME_NOW

__all__ = ["_Stack", "Entry", "ScandirIterator", "CacheInfo", "CopyUp"]

CacheInfo = namedtuple(
    "CacheInfo", "hits misses entries dirs bytes max_bytes generation flushes",
    module="overlayfs")
CacheInfo.__doc__ = """Counters of a Stack's lookup cache.

hits: lookups answered without reading a layer; misses: lookups that read
one; entries: cached names; dirs: cached directories; bytes: memory held by
the C cache; max_bytes: the cap (past it the cache is emptied, counted in
flushes); generation: bumped by every invalidation."""

CopyUp = namedtuple("CopyUp", "path method", module="overlayfs")
CopyUp.__doc__ = """What Stack.copy_up() did.

path: the host path of the copy in the upper layer (str or bytes, as the
union path given); method: how this call moved the file's data, "clone"
(reflink), "copy_file_range", "sendfile", "read_write", or "none" (no data
to copy: not a regular file, empty, or up already with its data)."""
CopyUp.path.__doc__ = "Host path of the copy in the upper layer."
CopyUp.method.__doc__ = ('How the data moved: "clone", "copy_file_range", "sendfile", '
                         '"read_write" or "none".')

_WHITEOUTS = {"kernel": OVL_WHITEOUT_KERNEL, "oci": OVL_WHITEOUT_OCI,
              "auto": OVL_WHITEOUT_AUTO}
_XATTR_NS = {"trusted": OVL_XATTR_TRUSTED, "user": OVL_XATTR_USER}
_COPY_METHODS = {OVL_COPY_NONE: "none", OVL_COPY_CLONE: "clone", OVL_COPY_CFR: "copy_file_range",
                 OVL_COPY_SENDFILE: "sendfile", OVL_COPY_RW: "read_write"}

# os.stat_result is a struct sequence: on the CPythons we support it has 10
# visible and 19 total fields in a known order, so it is filled directly.
cdef object _StatResult = os.stat_result
cdef bint _fast_stat = (os.stat_result.n_sequence_fields == 10 and
                        os.stat_result.n_fields == 19)
cdef object _PyLong = int


cdef inline object _ns(int64_t sec, long nsec):
    if -9000000000 < sec < 9000000000:
        return <long long>sec * 1000000000 + nsec
    return _PyLong(sec) * 1000000000 + nsec


cdef object _make_stat(const struct_stat *st):
    """Build an os.stat_result from a struct stat, as os.stat does."""
    cdef object r
    cdef tuple vals = (
        st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
        st.st_size, st.st_atim.tv_sec, st.st_mtim.tv_sec, st.st_ctim.tv_sec,
        st.st_atim.tv_sec + st.st_atim.tv_nsec * 1e-9,
        st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9,
        st.st_ctim.tv_sec + st.st_ctim.tv_nsec * 1e-9,
        _ns(st.st_atim.tv_sec, st.st_atim.tv_nsec),
        _ns(st.st_mtim.tv_sec, st.st_mtim.tv_nsec),
        _ns(st.st_ctim.tv_sec, st.st_ctim.tv_nsec),
        st.st_blksize, st.st_blocks, st.st_rdev)
    cdef Py_ssize_t i
    if not _fast_stat:
        return _StatResult(vals)
    r = PyStructSequence_New(<PyTypeObject *>_StatResult)
    for i in range(19):
        v = vals[i]
        Py_INCREF(v)
        PyStructSequence_SET_ITEM(r, i, v)
    return r


def _to_timespec(t):
    """Seconds as (sec, nsec), rounded down like os.utime does with floats."""
    if isinstance(t, int):
        return t, 0
    frac, whole = math.modf(t)
    nsec = math.floor(frac * 1e9)
    if nsec >= 1000000000:
        whole, nsec = whole + 1, nsec - 1000000000
    elif nsec < 0:
        whole, nsec = whole - 1, nsec + 1000000000
    return int(whole), int(nsec)


# Which C call _Stack._path_op and _Stack._attr make.
cdef enum _PathOp:
    _UNLINK, _RMDIR, _MKDIR, _MKNOD
cdef enum _AttrOp:
    _CHMOD, _CHOWN, _UTIMENS, _TRUNCATE


cdef str _describe(str msg, const ovl_error_detail *d, tuple layers):
    """msg followed by what ovl_last_error recorded: the layer (index and
    host path), the object in it, the reason and the offending value."""
    text = f"layer {d.layer}"
    if 0 <= d.layer < len(layers) and layers[d.layer] is not None:
        text += f" {os.fsdecode(layers[d.layer])!r}"
    if d.path[0]:
        text += f", {os.fsdecode(<bytes>d.path)!r}"
    text += ": " + (<bytes>d.reason).decode("utf-8", "replace")
    if d.value[0]:
        text += f": {os.fsdecode(<bytes>d.value)!r}"
    return f"{msg} ({text})"


cdef class _CPath:
    """A union path as a C string, kept alive with its owner."""
    cdef const char *ptr
    cdef object owner
    cdef bint is_bytes


cdef inline const char *_cpath(object path, _CPath holder) except NULL:
    """Convert a str/bytes/PathLike union path to a C string.

    ASCII str paths are used in place (no copy); others are encoded like
    os.fsencode.  Embedded NUL bytes raise ValueError.
    """
    cdef Py_ssize_t n
    cdef const char *p
    if type(path) is str:
        if PyUnicode_IS_ASCII(path):
            p = PyUnicode_AsUTF8AndSize(path, &n)
            holder.owner = path
        else:
            holder.owner = PyUnicode_EncodeFSDefault(path)
            p = PyBytes_AS_STRING(holder.owner)
            n = PyBytes_GET_SIZE(holder.owner)
        holder.is_bytes = False
    elif type(path) is bytes:
        p = PyBytes_AS_STRING(path)
        n = PyBytes_GET_SIZE(path)
        holder.owner = path
        holder.is_bytes = True
    else:
        path = os.fspath(path)
        return _cpath(path, holder)
    if memchr(p, 0, n) != NULL:
        raise ValueError("embedded null byte in path")
    holder.ptr = p
    return p


cdef inline object _out(const char *s, Py_ssize_t n, bint as_bytes):
    if as_bytes:
        return PyBytes_FromStringAndSize(s, n)
    return PyUnicode_DecodeFSDefaultAndSize(s, n)


cdef object _fspath_layer(object p):
    """A layer path as an absolute str or bytes path.  A relative one is
    joined to the current directory; "." components and repeated slashes
    go, ".." stays (after a symlink it does not mean the lexical parent)."""
    p = os.fspath(p)
    if not isinstance(p, (str, bytes)):
        raise TypeError(f"layer paths must be str, bytes or os.PathLike, not {type(p).__name__}")
    if os.path.isabs(p):
        return p
    sep, dotdot = (b"/", b"..") if isinstance(p, bytes) else ("/", "..")
    cwd = os.getcwdb() if isinstance(p, bytes) else os.getcwd()
    if dotdot in p.split(sep):
        return os.path.join(cwd, p)
    return os.path.normpath(os.path.join(cwd, p))


cdef object _layer_role(int idx, object upper, object work, tuple lowers, Py_ssize_t nlowers):
    """(what, path) of a layer index as ovl_open_error gives it."""
    if idx == 0:
        return "upperdir", upper
    if idx == OVL_LAYER_WORK:
        return "workdir", work
    if 0 < idx <= nlowers:
        return f"lowerdir #{idx}", lowers[idx - 1]
    if idx > nlowers:
        return f"data layer #{idx - nlowers}", lowers[idx - 1]
    return None, None


cdef int _raise_open_error(int rc, ovl_open_error bad, object upper, object work,
                           tuple lowers, Py_ssize_t nlowers) except -1:
    """Raise what ovl_stack_open's -errno means, naming the layers (the
    kernel's own words for the overlaps it refuses)."""
    cdef int err = -rc
    what, path = _layer_role(bad.layer, upper, work, lowers, nlowers)
    other, other_path = _layer_role(bad.other, upper, work, lowers, nlowers)
    if err == ENOTDIR:
        raise NotADirectoryError(err, f"{what} is not a directory", path)
    if err == EXDEV and bad.layer == OVL_LAYER_WORK:
        raise OSError(err, "workdir and upperdir must be on the same filesystem", path,
                      None, upper)
    if err == EINVAL and bad.layer == OVL_LAYER_WORK and other is not None:
        raise OSError(err, "workdir and upperdir must be separate subtrees (one is "
                      "the other or contains it)", path, None, other_path)
    if err == ELOOP and other is not None:
        if bad.inside:
            why = f"overlapping lowerdir path: {what} lies inside the {other}"
        else:
            why = f"conflicting lowerdir path: {what} is also the {other}"
        raise OSError(err, why, path, None, other_path)
    raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err), path)


cdef class _Stack:
    """The compiled base of overlayfs.Stack: opens the C stack, converts
    paths and results, holds the layer fds and raises.  Use overlayfs.Stack
    (its subclass, which adds the calls composed of these, such as walk,
    makedirs, move and diff); its docstring describes the arguments.
    """
    cdef ovl_stack *_s
    cdef readonly tuple layers
    cdef readonly object upper, work
    cdef readonly tuple lowers, data_layers
    cdef readonly str whiteouts, xattr_namespace
    cdef int _busy
    cdef bint _closing
    cdef bint _cache
    cdef dict _listings
    cdef uint64_t _listings_gen

    def __cinit__(self):
        self._s = NULL

    def __init__(self, lowers, upper=None, work=None, *, xattr_namespace="trusted",
                 whiteouts="kernel", cache=True, data_layers=(), metacopy=False,
                 redirect_follow=True, redirect_dir=False, cache_max_bytes=None, devices=False,
                 **options):
        cdef ovl_config cfg
        cdef const char **arr = NULL
        cdef ovl_open_error bad
        cdef int rc
        cdef Py_ssize_t i, n
        cdef ovl_stack *s = NULL
        if self.lowers is not None:
            raise TypeError("Stack.__init__() called on an initialized Stack: a Stack "
                            "cannot be re-initialized; make a new one")
        # "volatile" is a C keyword, so Cython cannot name a parameter so.
        no_fsync = options.pop("volatile", False)
        if options:
            raise TypeError(f"Stack() got an unexpected keyword argument {next(iter(options))!r}")
        if isinstance(lowers, (str, bytes, os.PathLike)):
            raise TypeError("lowers must be a sequence of layer paths (top-most first), "
                            "not a single path")
        lowers = tuple(_fspath_layer(p) for p in lowers)
        data_layers = tuple(_fspath_layer(p) for p in data_layers)
        if not lowers:
            raise ValueError("lowers must name at least one lower layer")
        if upper is not None:
            upper = _fspath_layer(upper)
            if work is None:
                raise ValueError("an upper layer needs a work dir (work=...) on the same filesystem")
            work = _fspath_layer(work)
        elif work is not None:
            raise ValueError("work is only meaningful with an upper layer")
        if whiteouts not in _WHITEOUTS:
            raise ValueError(f"whiteouts must be one of 'kernel', 'oci', 'auto', not {whiteouts!r}")
        if xattr_namespace not in _XATTR_NS:
            raise ValueError(f"xattr_namespace must be 'trusted' or 'user', not {xattr_namespace!r}")
        if cache_max_bytes is not None and cache_max_bytes <= 0:
            raise ValueError("cache_max_bytes must be positive")
        if redirect_dir:
            if not redirect_follow:
                raise ValueError("redirect_dir=True writes redirects that redirect_follow=False "
                                 "refuses to follow")
            if whiteouts == "oci":
                raise ValueError("redirect_dir=True needs kernel whiteouts: the OCI format "
                                 "has no directory redirects")
            if xattr_namespace == "user":
                raise ValueError("redirect_dir=True with xattr_namespace='user': the kernel "
                                 "refuses redirect_dir=on with userxattr")
        allpaths = [os.fsencode(p) for p in lowers + data_layers]
        for p in allpaths:
            if b"\0" in p:
                raise ValueError("embedded null byte in a layer path")
        bupper = os.fsencode(upper) if upper is not None else None
        bwork = os.fsencode(work) if work is not None else None
        n = len(allpaths)
        arr = <const char **>PyMem_Malloc(n * sizeof(char *))
        if arr == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                arr[i] = PyBytes_AS_STRING(allpaths[i])
            cfg.lowers = arr
            cfg.nlowers = len(lowers)
            cfg.data_layers = arr + len(lowers)
            cfg.ndata = len(data_layers)
            cfg.upper = PyBytes_AS_STRING(bupper) if bupper is not None else NULL
            cfg.work = PyBytes_AS_STRING(bwork) if bwork is not None else NULL
            cfg.xattr_ns = _XATTR_NS[xattr_namespace]
            cfg.whiteouts = _WHITEOUTS[whiteouts]
            cfg.flags = 0
            if not cache:
                cfg.flags |= OVL_CFG_NO_CACHE
            if metacopy:
                cfg.flags |= OVL_CFG_METACOPY
            if not redirect_follow:
                cfg.flags |= OVL_CFG_REDIRECT_NOFOLLOW
            if no_fsync:
                cfg.flags |= OVL_CFG_VOLATILE
            if redirect_dir:
                cfg.flags |= OVL_CFG_REDIRECT_DIR
            if devices:
                cfg.flags |= OVL_CFG_DEVICES
            cfg.cache_max_bytes = cache_max_bytes or 0
            with nogil:
                rc = ovl_stack_open(&cfg, &s, &bad)
        finally:
            PyMem_Free(arr)
        if rc < 0:
            _raise_open_error(rc, bad, upper, work, lowers + data_layers, len(lowers))
        self._s = s
        self.lowers = lowers
        self.data_layers = data_layers
        self.upper = upper
        self.work = work
        self.layers = (upper,) + lowers + data_layers
        self.whiteouts = whiteouts
        self.xattr_namespace = xattr_namespace
        self._cache = bool(cache)
        self._listings = {}
        self._listings_gen = 0

    # -- lifetime -------------------------------------------------------

    cdef inline ovl_stack *_get(self) except NULL:
        if self._s == NULL or self._closing:
            if self.lowers is None:
                raise ValueError("Stack.__init__() was not called")
            raise ValueError("I/O operation on a closed Stack")
        return self._s

    cdef inline void _enter(self):
        self._busy += 1

    cdef inline void _leave(self):
        self._busy -= 1
        if self._closing and self._busy == 0 and self._s != NULL:
            ovl_stack_close(self._s)
            self._s = NULL

    def _check_open(self):
        """Raise ValueError if the Stack is closed or __init__() was not
        called (for the Python calls above that reach no C call first)."""
        self._get()

    def close(self):
        """Release the layer fds and the cache.  Safe to call twice; calls
        still running in other threads finish first."""
        if self._s == NULL or self._closing:
            return
        self._closing = True
        self._listings = {}
        if self._busy == 0:
            ovl_stack_close(self._s)
            self._s = NULL

    @property
    def closed(self):
        """True once close() was called."""
        return self._s == NULL or self._closing

    def __enter__(self):
        self._get()
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if self._s != NULL and not self._closing:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
            self.close()

    def __dealloc__(self):
        if self._s != NULL:
            ovl_stack_close(self._s)
            self._s = NULL

    def __reduce__(self):
        raise TypeError("cannot pickle 'Stack' objects")

    def __repr__(self):
        if self.lowers is None:
            return "<uninitialized overlayfs.Stack>"
        state = "closed " if self.closed else ""
        return (f"<{state}overlayfs.Stack upper={self.upper!r} "
                f"lowers={len(self.lowers)} data_layers={len(self.data_layers)}>")

    cdef object _error(self, long rc, object path, object path2=None):
        """OSError(errno, message, path[, None, path2]) for a C call of this
        stack that returned rc (a -errno), as os.stat raises it; when the
        call recorded why (a damaged stack: ovl_last_error), the message
        names the layer, the object in it and the reason."""
        cdef int err = <int>-rc
        cdef ovl_error_detail d
        msg = os.strerror(err)
        if self._s != NULL and ovl_last_error(self._s, <int>rc, &d) == 0:
            msg = _describe(msg, &d, self.layers)
        if path2 is not None:
            return OSError(err, msg, path, None, path2)
        return OSError(err, msg, path)

    # -- lookup ---------------------------------------------------------

    cdef int _lookup(self, object path, unsigned flags, ovl_info *info) except -1:
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef int rc = ovl_lookup(s, p, flags | OVL_LOOKUP_CACHED, info)
        if rc == -EAGAIN:
            self._enter()
            with nogil:
                rc = ovl_lookup(s, p, flags, info)
            self._leave()
        if rc < 0:
            raise self._error(rc, path)
        return 0

    cdef int _try_lookup(self, object path, unsigned flags, ovl_info *info) except? -65536:
        """Like _lookup, but 0 for success and -errno for any OSError."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p
        cdef ovl_stack *s = self._get()
        try:
            p = _cpath(path, h)
        except ValueError:
            return -ENOENT
        cdef int rc = ovl_lookup(s, p, flags | OVL_LOOKUP_CACHED, info)
        if rc == -EAGAIN:
            self._enter()
            with nogil:
                rc = ovl_lookup(s, p, flags, info)
            self._leave()
        return rc

    def lstat(self, path):
        """Return os.stat_result of path, not following a final symlink.

        Metadata comes from the layer that supplies path; a merged directory
        reports st_nlink 1 and (on one filesystem) the inode of its top-most
        lower, as the kernel does; st_dev is the supplying layer's.  Cost:
        warm, a hash lookup per component and no syscall.
        """
        cdef ovl_info info
        self._lookup(path, 0, &info)
        return _make_stat(&info.st)

    def stat(self, path, *, follow_symlinks=True):
        """Return os.stat_result of path, following symlinks inside the
        union root (with follow_symlinks=False, like lstat)."""
        cdef ovl_info info
        self._lookup(path, OVL_LOOKUP_FOLLOW if follow_symlinks else 0, &info)
        return _make_stat(&info.st)

    def lexists(self, path):
        """True if path exists (a broken symlink counts).  Never raises OSError."""
        cdef ovl_info info
        return self._try_lookup(path, 0, &info) == 0

    def exists(self, path):
        """True if path exists after following symlinks.  Never raises OSError."""
        cdef ovl_info info
        return self._try_lookup(path, OVL_LOOKUP_FOLLOW, &info) == 0

    def isdir(self, path):
        """True if path is a directory (symlinks followed)."""
        cdef ovl_info info
        return (self._try_lookup(path, OVL_LOOKUP_FOLLOW, &info) == 0 and
                _stat.S_ISDIR(info.st.st_mode))

    def isfile(self, path):
        """True if path is a regular file (symlinks followed)."""
        cdef ovl_info info
        return (self._try_lookup(path, OVL_LOOKUP_FOLLOW, &info) == 0 and
                _stat.S_ISREG(info.st.st_mode))

    def islink(self, path):
        """True if path is a symlink."""
        cdef ovl_info info
        return (self._try_lookup(path, 0, &info) == 0 and
                _stat.S_ISLNK(info.st.st_mode))

    def layer_of(self, path):
        """Index of the layer that supplies path (0 = upper, 1..N lowers,
        N+1.. data layers); a final symlink is not followed."""
        cdef ovl_info info
        self._lookup(path, 0, &info)
        return info.layer

    def resolve(self, path, *, follow_symlinks=False, data=False):
        """Host path of the entry that wins for path, or None if path does
        not exist.  The last component is not followed unless
        follow_symlinks; with data=True a metacopy file gives the file that
        holds its data.  Cost: warm, no syscall and one string."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef char buf[8192]
        cdef char *big
        cdef long n
        cdef unsigned flags = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef int want = 1 if data else 0
        n = ovl_realpath(s, p, flags | OVL_LOOKUP_CACHED, want, buf, sizeof(buf), NULL)
        if n == -EAGAIN:
            self._enter()
            with nogil:
                n = ovl_realpath(s, p, flags, want, buf, sizeof(buf), NULL)
            self._leave()
        if n == -ERANGE:
            big = <char *>PyMem_Malloc(65536)
            if big == NULL:
                raise MemoryError()
            try:
                with nogil:
                    n = ovl_realpath(s, p, flags, want, big, 65536, NULL)
                if n >= 0:
                    return _out(big, n, h.is_bytes)
            finally:
                PyMem_Free(big)
        if n >= 0:
            return _out(buf, n, h.is_bytes)
        if n == -ENOENT or n == -ENOTDIR:
            return None
        raise self._error(n, path)

    def readlink(self, path):
        """Target of the symlink at path, as stored in its layer."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef char buf[4096]
        cdef long n
        self._enter()
        with nogil:
            n = ovl_readlink(s, p, buf, sizeof(buf))
        self._leave()
        if n < 0:
            raise self._error(n, path)
        return _out(buf, n, h.is_bytes)

    def open(self, path, mode="rb", buffering=-1, encoding=None, errors=None,
             newline=None):
        """Open the file that wins for path, like io.open.

        Reading needs no copy-up (the data of a metacopy file is read from
        the layer holding it).  A write mode ("w", "a", "x", "+") copies the
        file up first, or creates it in the upper layer; without an upper
        layer it raises OSError(EROFS).  The file object's .name is path (the
        union path, str or bytes as given).  Cost: the lookup, then one
        contained open in the layer (plus the copy-up for writing)."""
        cdef int flags
        plus = "+" in mode
        if "w" in mode:
            flags = (O_RDWR if plus else O_WRONLY) | O_CREAT | O_TRUNC
        elif "a" in mode:
            flags = (O_RDWR if plus else O_WRONLY) | O_CREAT | O_APPEND
        elif "x" in mode:
            flags = (O_RDWR if plus else O_WRONLY) | O_CREAT | O_EXCL
        else:
            flags = O_RDWR if plus else O_RDONLY
        fd = self.os_open(path, flags | O_CLOEXEC, 0o666)
        try:
            f = io.open(fd, mode, buffering, encoding, errors, newline, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        # .name is the union path, as open(path).name is the path (not the fd).
        if "b" not in mode:
            raw = f.buffer.raw
        elif buffering == 0:
            raw = f
        else:
            raw = f.raw
        raw.name = os.fspath(path)
        return f

    def os_open(self, path, int flags=O_RDONLY, int mode=0o777):
        """Open path like os.open and return the fd.

        Read-only flags open the winning file where it is.  Write access,
        O_TRUNC or O_CREAT copy a regular file up (or create it in the upper
        layer, the process umask applying to mode) and open it there; a fifo
        or device (devices=True) is opened where it is, as the kernel does.
        OSError(EROFS) for writing without an upper layer."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef int fd
        cdef bint write = (flags & O_ACCMODE) != O_RDONLY or (flags & (O_TRUNC | O_CREAT))
        if write and self.upper is None:
            raise OSError(EROFS, "read-only stack: no upper layer to write to", path)
        self._enter()
        with nogil:
            if write:
                fd = ovl_open_write(s, p, flags, <mode_t>mode)
            else:
                fd = ovl_open(s, p, flags)
        self._leave()
        if write:
            self._listings = {}
        if fd < 0:
            raise self._error(fd, path)
        return fd

    # -- changes -------------------------------------------------------------

    cdef inline int _changed(self, int rc, object path) except -1:
        self._listings = {}
        if rc < 0:
            raise self._error(rc, path)
        return 0

    cdef inline ovl_stack *_writable(self, object path) except NULL:
        cdef ovl_stack *s = self._get()
        if self.upper is None:
            raise OSError(EROFS, "read-only stack: no upper layer to write to", path)
        return s

    cdef int _path_op(self, object path, _PathOp op, mode_t mode, dev_t dev) except -1:
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._writable(path)
        cdef int rc
        self._enter()
        with nogil:
            if op == _UNLINK:
                rc = ovl_unlink(s, p)
            elif op == _RMDIR:
                rc = ovl_rmdir(s, p)
            elif op == _MKDIR:
                rc = ovl_mkdir(s, p, mode)
            else:
                rc = ovl_mknod(s, p, mode, dev)
        self._leave()
        return self._changed(rc, path)

    def unlink(self, path):
        """Remove a non-directory, like os.unlink: a name that exists below
        is hidden by a whiteout in the upper layer, an upper-only one is just
        removed.  The parent chain is copied up first."""
        self._path_op(path, _UNLINK, 0, 0)

    def remove(self, path):
        """Same as unlink()."""
        self._path_op(path, _UNLINK, 0, 0)

    def rmdir(self, path):
        """Remove an empty directory, like os.rmdir; emptiness is judged on
        the merged view (whiteouts in the upper are cleaned up)."""
        self._path_op(path, _RMDIR, 0, 0)

    def mkdir(self, path, mode=0o777):
        """Create a directory in the upper layer, like os.mkdir (the
        process umask applies).  Made over a whiteout it is opaque."""
        self._path_op(path, _MKDIR, mode, 0)

    def symlink(self, src, dst):
        """Create a symlink dst pointing to src, like os.symlink."""
        cdef _CPath ht = _CPath.__new__(_CPath)
        cdef _CPath hp = _CPath.__new__(_CPath)
        cdef const char *t = _cpath(src, ht)
        cdef const char *p = _cpath(dst, hp)
        cdef ovl_stack *s = self._writable(dst)
        cdef int rc
        self._enter()
        with nogil:
            rc = ovl_symlink(s, t, p)
        self._leave()
        self._changed(rc, dst)

    def mknod(self, path, mode=0o600, device=0):
        """Create a file system node, like os.mknod (a char device 0:0 is
        the overlay's whiteout: EPERM, as through a mount)."""
        self._path_op(path, _MKNOD, mode, device)

    cdef int _attr(self, object path, _AttrOp op, bint follow, long a, long b,
                   const timespec *ts) except -1:
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._writable(path)
        cdef unsigned flags = OVL_LOOKUP_FOLLOW if follow else 0
        cdef int rc
        self._enter()
        with nogil:
            if op == _CHMOD:
                rc = ovl_chmod(s, p, flags, <mode_t>a)
            elif op == _CHOWN:
                rc = ovl_chown(s, p, flags, <uid_t>a, <gid_t>b)
            elif op == _UTIMENS:
                rc = ovl_utimens(s, p, flags, ts)
            else:
                rc = ovl_truncate(s, p, <off_t>a)
        self._leave()
        return self._changed(rc, path)

    cdef int _two(self, object src, object dst, bint link) except -1:
        cdef _CPath ha = _CPath.__new__(_CPath)
        cdef _CPath hb = _CPath.__new__(_CPath)
        cdef const char *a = _cpath(src, ha)
        cdef const char *b = _cpath(dst, hb)
        cdef ovl_stack *s = self._writable(src)
        cdef int rc
        self._enter()
        with nogil:
            rc = ovl_link(s, a, b) if link else ovl_rename(s, a, b)
        self._leave()
        self._listings = {}
        if rc < 0:
            raise self._error(rc, src, dst)
        return 0

    def rename(self, src, dst):
        """Rename src to dst, replacing dst, like os.replace.  A directory
        that is merged or only in a lower layer gives OSError(EXDEV), as the
        kernel's overlay does without redirect_dir: use move().  With
        Stack(..., redirect_dir=True) it is copied up alone and gets a
        redirect, as with redirect_dir=on; EXDEV then only when its absolute
        redirect would be longer than 256 bytes (the kernel's redirect_max)."""
        self._two(src, dst, False)

    def replace(self, src, dst):
        """Same as rename()."""
        self._two(src, dst, False)

    def link(self, src, dst):
        """Make dst a hard link to src (copied up first), like os.link."""
        self._two(src, dst, True)

    def chmod(self, path, mode, *, follow_symlinks=True):
        """Change the mode, like os.chmod; copies up first."""
        self._attr(path, _CHMOD, follow_symlinks, mode, 0, NULL)

    def chown(self, path, uid, gid, *, follow_symlinks=True):
        """Change the owner, like os.chown (-1 keeps a value); copies up first."""
        self._attr(path, _CHOWN, follow_symlinks, uid, gid, NULL)

    def utime(self, path, times=None, *, ns=None, follow_symlinks=True):
        """Set access and modification times, like os.utime: times=(atime,
        mtime) in seconds, ns=(atime_ns, mtime_ns), or neither for "now".
        Copies up first."""
        cdef timespec ts[2]
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if ns is not None:
            a, m = ns
            ts[0].tv_sec, ts[0].tv_nsec = divmod(int(a), 1000000000)
            ts[1].tv_sec, ts[1].tv_nsec = divmod(int(m), 1000000000)
        elif times is not None:
            a, m = times
            ts[0].tv_sec, ts[0].tv_nsec = _to_timespec(a)
            ts[1].tv_sec, ts[1].tv_nsec = _to_timespec(m)
        else:
            ts[0].tv_sec = ts[1].tv_sec = 0
            ts[0].tv_nsec = ts[1].tv_nsec = UTIME_NOW
        self._attr(path, _UTIMENS, follow_symlinks, 0, 0, ts)

    def truncate(self, path, length):
        """Truncate (or extend) a file to length bytes, like os.truncate;
        copies up first."""
        if length < 0:
            raise OSError(EINVAL, os.strerror(EINVAL), path)
        self._attr(path, _TRUNCATE, True, length, 0, NULL)

    def setxattr(self, path, attribute, value, flags=0, *, follow_symlinks=True):
        """Set an xattr through the overlay, like os.setxattr (a
        "<ns>.overlay.X" name is stored escaped); copies up first."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef _CPath ha = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef const char *a = _cpath(attribute, ha)
        cdef ovl_stack *s = self._writable(path)
        cdef bytes v = bytes(value)
        cdef const char *vp = v
        cdef size_t vlen = len(v)
        cdef int xf = flags
        cdef unsigned fl = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef int rc
        self._enter()
        with nogil:
            rc = ovl_setxattr(s, p, fl, a, vp, vlen, xf)
        self._leave()
        self._changed(rc, path)

    def removexattr(self, path, attribute, *, follow_symlinks=True):
        """Remove an xattr through the overlay, like os.removexattr (ENODATA
        for a missing one, before any copy-up)."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef _CPath ha = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef const char *a = _cpath(attribute, ha)
        cdef ovl_stack *s = self._writable(path)
        cdef unsigned fl = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef int rc
        self._enter()
        with nogil:
            rc = ovl_removexattr(s, p, fl, a)
        self._leave()
        self._changed(rc, path)

    # -- listings ---------------------------------------------------------

    cdef ovl_dirlist *_listdir(self, object path, _CPath h) except NULL:
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef ovl_dirlist *l = NULL
        cdef int rc = ovl_listdir(s, p, OVL_LOOKUP_CACHED, &l)
        if rc == -EAGAIN:
            self._enter()
            with nogil:
                rc = ovl_listdir(s, p, 0, &l)
            self._leave()
        if rc < 0:
            raise self._error(rc, path)
        return l

    def listdir(self, path=""):
        """Merged names in path (symlinks followed), in the kernel's readdir
        order, without '.' and '..' and without whiteouts.

        Cost: warm, a copy of a cached list (the names are kept as Python
        objects until the cache generation changes)."""
        cdef _CPath h
        cdef ovl_dirlist *l
        cdef Py_ssize_t i
        cdef list names
        cdef uint64_t gen
        cdef ovl_stack *s = self._get()
        gen = ovl_cache_generation(s)
        if self._listings_gen != gen:
            self._listings = {}
            self._listings_gen = gen
        elif self._cache:
            cached = self._listings.get(path)
            if cached is not None and type(path) in (str, bytes):
                return list(<tuple>cached)
        h = _CPath.__new__(_CPath)
        l = self._listdir(path, h)
        try:
            names = [_out(l.ents[i].name, l.ents[i].namelen, h.is_bytes)
                     for i in range(<Py_ssize_t>l.n)]
            gen = l.generation
        finally:
            ovl_dirlist_free(l)
        if self._cache and type(path) in (str, bytes) and gen == self._listings_gen:
            if len(self._listings) >= 4096:
                self._listings.pop(next(iter(self._listings)))
            self._listings[path] = tuple(names)
        return names

    def scandir(self, path=""):
        """Iterator of Entry objects for the merged directory path, like
        os.scandir.  Entries carry the type, inode and layer the listing
        found; stat() is read lazily and cached per entry."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef ovl_dirlist *l = self._listdir(path, h)
        cdef Py_ssize_t i
        cdef Entry e
        cdef list entries = []
        dirpath = os.fspath(path)
        try:
            for i in range(<Py_ssize_t>l.n):
                e = Entry.__new__(Entry)
                e._stack = self
                e.name = _out(l.ents[i].name, l.ents[i].namelen, h.is_bytes)
                e._dir = dirpath
                e._d_type = l.ents[i].d_type
                e._ino = l.ents[i].ino
                e.layer = l.ents[i].layer
                entries.append(e)
        finally:
            ovl_dirlist_free(l)
        it = ScandirIterator.__new__(ScandirIterator)
        (<ScandirIterator>it)._entries = entries
        return it

    def _walk_dir(self, path):
        """(dirs, nondirs, links) of the merged directory path, for walk():
        names in listing order; dirs holds directories and symlinks that
        lead to one inside the root (links: the set of those), anything
        else, a symlink whose target is missing or fails included, is in
        nondirs, as os.walk sorts them.  One listing, a stat per symlink."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef ovl_dirlist *l = self._listdir(path, h)
        cdef Py_ssize_t i
        cdef list dirs = [], nondirs = []
        cdef set links = set()
        dirpath = os.fspath(path)
        sep = b"/" if h.is_bytes else "/"
        if dirpath and not dirpath.endswith(sep):
            dirpath += sep
        try:
            for i in range(<Py_ssize_t>l.n):
                name = _out(l.ents[i].name, l.ents[i].namelen, h.is_bytes)
                if l.ents[i].d_type == DT_DIR:
                    dirs.append(name)
                elif l.ents[i].d_type == DT_LNK and self._leads_to_dir(dirpath + name):
                    dirs.append(name)
                    links.add(name)
                else:
                    nondirs.append(name)
        finally:
            ovl_dirlist_free(l)
        return dirs, nondirs, links

    def _leads_to_dir(self, path):
        try:
            return _stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    # -- copy-up -----------------------------------------------------------

    def copy_up(self, path, *, follow_symlinks=False):
        """Copy path up to the upper layer, its ancestors first, the way the
        kernel does before a change, and return CopyUp(path, method): the
        host path of the upper copy and how this call moved the data:
        "clone" (reflink), "copy_file_range", "sendfile", "read_write", or
        "none" (no data to copy, or up already with its data).  A no-op for
        what is already in the upper layer, but for an upper metacopy file
        (metacopy=True), whose data is copied into it from below, as before
        a write.

        The copy is built in the work dir and installed with a no-replace
        link or rename: a crash leaves no partial file, and of concurrent
        copiers (threads or processes) one wins.  Data moves by reflink
        where the filesystem shares extents, else copy_file_range over the
        data extents (holes stay holes), else sendfile, else read/write; it
        is fsynced unless the Stack is volatile or the data was cloned (as
        the kernel does).  xattrs (but the stack's private ones), owner,
        mode and times are kept.  Cost: one directory per missing ancestor,
        then the data.  OSError(EROFS) without an upper layer."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef unsigned flags = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef int rc
        if self.upper is None:
            raise OSError(EROFS, "no upper layer to copy up to", path)
        self._enter()
        with nogil:
            rc = ovl_copy_up(s, p, flags)
        self._leave()
        if rc < 0:
            raise self._error(rc, path)
        self._listings = {}
        # tuple.__new__: the namedtuple's own __new__ is a Python call.
        return tuple.__new__(CopyUp, (self.resolve(path, follow_symlinks=follow_symlinks),
                                      _COPY_METHODS[rc]))

    # -- xattrs ----------------------------------------------------------

    def getxattr(self, path, attribute, *, follow_symlinks=True):
        """Value of an xattr as the overlay shows it (the stack's private
        <ns>.overlay.* names are not visible; escaped ones are)."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef _CPath ha = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef const char *a = _cpath(attribute, ha)
        cdef ovl_stack *s = self._get()
        cdef unsigned flags = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef long n
        cdef char *buf
        cdef size_t size
        self._enter()
        try:
            with nogil:
                n = ovl_getxattr(s, p, flags, a, NULL, 0)
            if n < 0:
                raise self._error(n, path)
            size = <size_t>n + 1
            buf = <char *>PyMem_Malloc(size)
            if buf == NULL:
                raise MemoryError()
            try:
                with nogil:
                    n = ovl_getxattr(s, p, flags, a, buf, size)
                if n < 0:
                    raise self._error(n, path)
                return PyBytes_FromStringAndSize(buf, n)
            finally:
                PyMem_Free(buf)
        finally:
            self._leave()

    def listxattr(self, path="", *, follow_symlinks=True):
        """Names of the xattrs the overlay shows for path (str)."""
        cdef _CPath h = _CPath.__new__(_CPath)
        cdef const char *p = _cpath(path, h)
        cdef ovl_stack *s = self._get()
        cdef unsigned flags = OVL_LOOKUP_FOLLOW if follow_symlinks else 0
        cdef long n
        cdef char *buf
        self._enter()
        try:
            with nogil:
                n = ovl_listxattr(s, p, flags, NULL, 0)
            if n < 0:
                raise self._error(n, path)
            buf = <char *>PyMem_Malloc(<size_t>n + 1)
            if buf == NULL:
                raise MemoryError()
            try:
                with nogil:
                    n = ovl_listxattr(s, p, flags, buf, <size_t>n + 1)
                if n < 0:
                    raise self._error(n, path)
                raw = PyBytes_FromStringAndSize(buf, n)
            finally:
                PyMem_Free(buf)
        finally:
            self._leave()
        return [os.fsdecode(x) for x in raw.split(b"\0") if x]

    # -- cache -------------------------------------------------------------

    def invalidate(self, path=None):
        """Forget what the cache holds about path (the directory holding it
        and everything below), or everything with path=None.  Call it after
        changing layers behind the Stack's back."""
        cdef _CPath h
        cdef const char *p = NULL
        cdef ovl_stack *s = self._get()
        if path is not None:
            h = _CPath.__new__(_CPath)
            p = _cpath(path, h)
        self._enter()
        with nogil:
            ovl_invalidate(s, p)
        self._leave()
        self._listings = {}

    def cache_info(self):
        """CacheInfo(hits, misses, entries, dirs, bytes, max_bytes,
        generation, flushes) of the C lookup cache."""
        cdef ovl_cstats st
        ovl_cache_stats(self._get(), &st)
        return CacheInfo(st.hits, st.misses, st.entries, st.dirs, st.bytes,
                         st.max_bytes, st.generation, st.flushes)


cdef class ScandirIterator:
    """Iterator returned by Stack.scandir; a context manager, like os.scandir's."""
    cdef list _entries
    cdef Py_ssize_t _pos

    def __init__(self, *args, **kwargs):
        raise TypeError("cannot create 'overlayfs.ScandirIterator' instances: use Stack.scandir()")

    def __iter__(self):
        return self

    def __next__(self):
        if self._entries is None or self._pos >= len(self._entries):
            self._entries = None
            raise StopIteration
        e = self._entries[self._pos]
        self._pos += 1
        return e

    def close(self):
        """Stop the iteration.  Safe to call twice."""
        self._entries = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        raise TypeError("cannot pickle 'ScandirIterator' objects")


cdef class Entry:
    """One entry of a merged directory, modelled on os.DirEntry.

    name, path (the union path) and layer (the index of the layer that
    supplies it) are attributes; is_dir/is_file/is_symlink use the type the
    listing found and need no syscall unless a symlink must be followed;
    stat() is read on first use and cached per entry.
    """
    cdef _Stack _stack
    cdef readonly object name
    cdef readonly int layer
    cdef object _dir
    cdef object _path
    cdef int _d_type
    cdef uint64_t _ino
    cdef object _stat
    cdef object _lstat

    def __init__(self, *args, **kwargs):
        raise TypeError("cannot create 'overlayfs.Entry' instances: use Stack.scandir()")

    @property
    def path(self):
        """The union path of the entry: the scandir path joined with name."""
        if self._path is None:
            d = self._dir
            if not d:
                self._path = self.name
            elif isinstance(d, bytes):
                self._path = d + self.name if d.endswith(b"/") else d + b"/" + self.name
            else:
                self._path = d + self.name if d.endswith("/") else d + "/" + self.name
        return self._path

    def inode(self):
        """Inode number the listing reported (d_ino of the supplying layer)."""
        return self._ino

    def is_symlink(self):
        """True for a symlink; cached per entry, no syscall."""
        return self._d_type == DT_LNK

    def is_dir(self, *, follow_symlinks=True):
        """True for a directory (or a symlink to one when following).  No
        syscall unless a symlink is followed; False if that target is gone."""
        if self._d_type == DT_LNK and follow_symlinks:
            try:
                return _stat.S_ISDIR(self.stat().st_mode)
            except FileNotFoundError:
                return False
        return self._d_type == DT_DIR

    def is_file(self, *, follow_symlinks=True):
        """True for a regular file (or a symlink to one when following)."""
        if self._d_type == DT_LNK and follow_symlinks:
            try:
                return _stat.S_ISREG(self.stat().st_mode)
            except FileNotFoundError:
                return False
        return self._d_type == DT_REG

    def stat(self, *, follow_symlinks=True):
        """os.stat_result of the entry through the stack; cached per entry."""
        if self._stack is None:
            raise ValueError("uninitialized Entry: entries come from Stack.scandir()")
        if follow_symlinks and self._d_type == DT_LNK:
            if self._stat is None:
                self._stat = self._stack.stat(self.path)
            return self._stat
        if self._lstat is None:
            self._lstat = self._stack.lstat(self.path)
        return self._lstat

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return f"<overlayfs.Entry {self.name!r} layer={self.layer}>"

    def __reduce__(self):
        raise TypeError("cannot pickle 'Entry' objects")


# --- Applying a layer tar (csrc/apply.c) -----------------------------------

from . import errors as _errors

APPLY_SAME_OWNER = OVL_APPLY_SAME_OWNER
APPLY_DEVICES = OVL_APPLY_DEVICES
APPLY_NO_SYNC = OVL_APPLY_NO_SYNC
APPLY_XATTR_WHITEOUTS = OVL_APPLY_XATTR_WHITEOUTS
APPLY_TAR_SPLIT = OVL_APPLY_TAR_SPLIT

_APPLY_STATS = ("bytes", "entries", "files", "dirs", "symlinks", "hardlinks", "devices",
                "fifos", "whiteouts", "opaques", "skipped", "copied_up", "data_bytes")


cdef class _Applier:
    """One apply of a tar stream into a layer dir or a rootfs (ovl_apply_*).

    feed() takes any bytes-like chunk and releases the GIL while the C core
    parses it and makes the entries; end() finishes and publishes.  Errors
    are raised as the classes of overlayfs.errors with .entry, or OSError.
    Not for use by two threads at once.
    """
    cdef ovl_apply *_a
    cdef object _dest

    def __cinit__(self, dest, lowers, bint rootfs, bint user_xattr, unsigned flags,
                  uint64_t max_size):
        cdef ovl_apply_config cfg
        cdef _CPath dholder = _CPath()
        cdef list holders = []
        cdef const char **lp = NULL
        cdef Py_ssize_t i, n = len(lowers)
        cdef int rc
        self._dest = dest
        cfg.dest = _cpath(dest, dholder)
        if n:
            lp = <const char **>PyMem_Malloc(n * sizeof(char *))
            if lp == NULL:
                raise MemoryError()
        try:
            for i in range(n):
                holders.append(_CPath())
                lp[i] = _cpath(lowers[i], <_CPath>holders[i])
            cfg.lowers = lp
            cfg.nlowers = <size_t>n
            cfg.mode = OVL_APPLY_ROOTFS if rootfs else OVL_APPLY_LAYER
            cfg.xattr_ns = OVL_XATTR_USER if user_xattr else OVL_XATTR_TRUSTED
            cfg.flags = flags
            cfg.max_size = max_size
            with nogil:
                rc = ovl_apply_begin(&cfg, &self._a)
        finally:
            PyMem_Free(lp)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), dest)

    cdef int _raise(self, int rc) except -1:
        cdef const char *name = NULL
        cdef size_t nlen = 0
        cdef int err = 0
        cdef int cls = ovl_apply_error(self._a, &name, &nlen, &err)
        entry = None if name == NULL else PyBytes_FromStringAndSize(name, <Py_ssize_t>nlen)
        if cls == OVL_APPLY_E_NONE or cls == OVL_APPLY_E_IO or cls == OVL_APPLY_E_CONFLICT:
            if err == 0:
                err = -rc
            if err < 0:
                err = -err
            raise OSError(err, os.strerror(err),
                          os.fsdecode(entry) if entry is not None else self._dest)
        raise _errors._from_class(cls, -err if err < 0 else err, entry)

    def feed(self, const unsigned char[::1] buf not None):
        """Apply the next len(buf) bytes of the tar stream."""
        cdef int rc
        cdef size_t n = <size_t>buf.shape[0]
        if self._a == NULL:
            raise ValueError("applier is closed")
        if n == 0:
            return
        with nogil:
            rc = ovl_apply_feed(self._a, &buf[0], n)
        if rc < 0:
            self._raise(rc)

    def end(self):
        """The stream ended: finish and publish.  Return the stats as a dict."""
        cdef ovl_apply_stats st
        cdef int rc
        if self._a == NULL:
            raise ValueError("applier is closed")
        with nogil:
            rc = ovl_apply_end(self._a, &st)
        if rc < 0:
            self._raise(rc)
        return {"bytes": st.bytes, "entries": st.entries, "files": st.files,
                "dirs": st.dirs, "symlinks": st.symlinks, "hardlinks": st.hardlinks,
                "devices": st.devices, "fifos": st.fifos, "whiteouts": st.whiteouts,
                "opaques": st.opaques, "skipped": st.skipped, "copied_up": st.copied_up,
                "data_bytes": st.data_bytes}

    def split(self):
        """The tar-split bytes recorded since the last call (docs/tar-split.md)."""
        cdef const void *p = NULL
        cdef size_t n
        if self._a == NULL:
            return b""
        n = ovl_apply_split(self._a, &p)
        return PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>n) if n else b""

    def close(self):
        """Free the applier; an unpublished layer's temp dir is removed."""
        cdef ovl_apply *a = self._a
        self._a = NULL
        if a != NULL:
            with nogil:
                ovl_apply_free(a)

    def __dealloc__(self):
        if self._a != NULL:
            ovl_apply_free(self._a)
            self._a = NULL

    def __reduce__(self):
        raise TypeError("cannot pickle '_Applier' objects")
# -- layer tar streams (csrc/tar_write.c, csrc/export.c) ---------------------

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE


cdef inline object _export_oserror(long rc, object path):
    cdef int err = <int>-rc
    return OSError(err, os.strerror(err), path)


def _tar_header(name, typeflag, mode, uid, gid, size, mtime, linkname=b"",
                devmajor=0, devminor=0, xattrs=()):
    """The header bytes (PAX and ustar blocks) of one tar entry, as
    ovl_tar_header encodes them.  name, linkname: bytes; xattrs: (name,
    value) pairs in the order to write."""
    cdef ovl_tar_entry e
    cdef ovl_tar_xattr *xs = NULL
    cdef Py_ssize_t i, nx = len(xattrs)
    cdef long n
    cdef bytearray out
    keep = [(os.fsencode(k), bytes(v)) for k, v in xattrs]
    bname = bytes(name)
    blink = bytes(linkname)
    e.name = PyBytes_AS_STRING(bname)
    e.namelen = PyBytes_GET_SIZE(bname)
    e.linkname = PyBytes_AS_STRING(blink)
    e.linklen = PyBytes_GET_SIZE(blink)
    e.type = ord(typeflag)
    e.mode = mode
    e.uid = uid
    e.gid = gid
    e.size = size
    e.mtime = mtime
    e.devmajor = devmajor
    e.devminor = devminor
    e.nxattrs = nx
    e.xattrs = NULL
    if nx:
        xs = <ovl_tar_xattr *>PyMem_Malloc(nx * sizeof(ovl_tar_xattr))
        if xs == NULL:
            raise MemoryError()
    try:
        for i in range(nx):
            xs[i].name = PyBytes_AS_STRING(keep[i][0])
            xs[i].value = PyBytes_AS_STRING(keep[i][1])
            xs[i].size = PyBytes_GET_SIZE(keep[i][1])
        e.xattrs = xs
        n = ovl_tar_header(&e, NULL, 0)
        if n < 0:
            raise _export_oserror(n, os.fsdecode(bname))
        out = bytearray(n)
        n = ovl_tar_header(&e, <char *>out, n)
        return bytes(out)
    finally:
        PyMem_Free(xs)


cdef class _Export:
    """A tar stream of a layer dir or of a Stack's merged view, read with
    readinto() (the GIL released while the C producer walks and reads).
    Use overlayfs.export; this is its engine."""
    cdef ovl_export *_e
    cdef _Stack _stack
    cdef readonly object source
    cdef int _busy

    def __cinit__(self):
        self._e = NULL
        self._stack = None

    def __init__(self, layer=None, _Stack stack=None, *, xattr_namespace="trusted",
                 all_xattrs=False, source_date_epoch=None):
        cdef ovl_export_opts o
        cdef ovl_export *e = NULL
        cdef int rc
        cdef bytes blayer = None
        if (layer is None) == (stack is None):
            raise ValueError("give a layer dir or a stack")
        if xattr_namespace not in _XATTR_NS:
            raise ValueError(f"xattr_namespace must be 'trusted' or 'user', not {xattr_namespace!r}")
        o.layer = NULL
        o.stack = NULL
        o.xattr_ns = _XATTR_NS[xattr_namespace]
        o.flags = OVL_EXPORT_ALL_XATTRS if all_xattrs else 0
        o.source_date_epoch = 0
        if source_date_epoch is not None:
            o.flags |= OVL_EXPORT_CLAMP_MTIME
            o.source_date_epoch = int(source_date_epoch)
        if layer is not None:
            self.source = _fspath_layer(layer)
            blayer = os.fsencode(self.source)
            if b"\0" in blayer:
                raise ValueError("embedded null byte in a layer path")
            o.layer = blayer
            with nogil:
                rc = ovl_export_open(&o, &e)
        else:
            o.stack = stack._get()
            self.source = stack
            stack._enter()
            try:
                with nogil:
                    rc = ovl_export_open(&o, &e)
            except BaseException:
                stack._leave()
                raise
            if rc < 0:
                stack._leave()
            else:
                self._stack = stack
        if rc < 0:
            raise _export_oserror(rc, self.source if layer is not None else "")
        self._e = e

    def readinto(self, buf):
        """Fill buf (a writable buffer) with the next bytes of the archive;
        return how many (0 at the end).  Raises OSError naming the path, or
        UnsupportedLayerError."""
        cdef Py_buffer view
        cdef long n
        cdef const char *reason = NULL
        cdef const char *where
        if self._e == NULL:
            raise ValueError("I/O operation on a closed export")
        if self._busy:
            raise RuntimeError("export read from two threads at once")
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
        self._busy = 1
        try:
            with nogil:
                n = ovl_export_read(self._e, view.buf, <size_t>view.len)
        finally:
            self._busy = 0
            PyBuffer_Release(&view)
        if n >= 0:
            return n
        where = ovl_export_error(self._e, &reason)
        path = os.fsdecode(where) if where != NULL else ""
        if reason != NULL:
            raise _errors.UnsupportedLayerError(path, reason.decode())
        raise _export_oserror(n, path)

    def stats(self):
        """(entries, bytes) produced so far."""
        cdef uint64_t entries = 0, nbytes = 0
        if self._e != NULL:
            ovl_export_stats(self._e, &entries, &nbytes)
        return entries, nbytes

    cdef void _release(self):
        if self._e != NULL:
            ovl_export_close(self._e)
            self._e = NULL
        if self._stack is not None:
            self._stack._leave()
            self._stack = None

    def close(self):
        """Release the producer (and the Stack's hold).  Safe to call twice."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        self._release()

    def __reduce__(self):
        raise TypeError("cannot pickle '_Export' objects")
