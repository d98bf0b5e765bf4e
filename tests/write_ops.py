"""Write-side parity harness: the same operations through a kernel overlay mount and through a Stack.

A *sequence* of operations (plain dicts, see :func:`make_ops`) is applied

(a) through a real kernel overlay mount: ``kernel.run_in_mount`` mounts the
    stack in a private mount namespace and runs :func:`_apply_in_mount`,
    chrooted into the mount point, which makes ``os.*`` calls on the mounted
    paths (:func:`apply_kernel`);
(b) through ``overlayfs.Stack`` on an IDENTICAL copy of the layers (``cp -a``)
    (:func:`apply_stack`).

Each side records every operation's outcome (``"ok"`` or the errno name).
:func:`compare_sides` then compares

1. the outcomes, one by one;
2. dumps of the two upper directories (:func:`dump_upper`, ``dumps.dump_tree``
   without the file-handle bookkeeping the kernel writes and the Stack does
   not, ``dumps.IGNORED_UPPER_XATTRS``: ``origin``, ``impure``, ``uuid``)
   under ``dumps.WRITE_RULES``: for every path its type (a char 0:0 is
   ``"whiteout"``), mode, uid/gid, content sha256, symlink target, rdev,
   link count (not of whiteouts) and hard-link group, xattrs, and for
   non-directories size and mtime; not atimes, directory mtimes and sizes,
   blocks, inode numbers, nor the data map of holes (see ``dumps.WRITE_RULES``);
3. the merged views of the resulting layers (``kernel.kernel_view`` of a fresh
   mount of side (a) against ``kernel.stack_view`` of side (b), both live
   Stack instance and a fresh one, plus a kernel mount of side (b) so the
   Stack's upper must also read back right through the kernel).

Timestamps: an mtime that falls inside the side's own operation window (the
object was created or modified "now") is normalized to ``"fresh"``; anything
else (times kept by copy-up, set explicitly by utime, or untouched) is
compared exactly.  Directory mtimes, atimes, ctimes, inode numbers, the nlink
of whiteouts (the kernel shares one whiteout inode) are not compared; nor are
``st_blocks`` in the views (the kernel's ``origin`` xattrs can take an ext4
xattr block) and, in the views, ``st_ino`` (the kernel reports the copy-up
origin's inode, found through the ``origin`` file handle the Stack does not
write).

The Stack side runs in a forked child (:func:`run_forked`), so a deadlock or a
crash in the C core fails one case, naming the operation, instead of hanging
the test run.  Operations are applied as the same Python calls on both sides
(``os.unlink(p)`` / ``st.unlink(p)``, same positional and keyword arguments),
so defaults must match too (e.g. ``link`` follows ``os.link``).  ``move`` is
taken to mean ``mv -T``: a rename, or on EXDEV a copy of the tree (type,
mode, owner, times, xattrs, hard links) followed by removal of the source.

The generator uses every operation in :data:`ALL_OPS` (each implemented on
both sides of the harness); the self-tests use them with the kernel on both
sides too.

This module is stdlib-only at import time (plus the sibling ``dumps``, ``kernel``
and ``stackgen`` modules), so the namespace child can load it by path.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time

# Needed here although conftest adds tests/ too: the namespace child loads this
# file by its path in a fresh interpreter (kernel.run_in_mount), with no conftest.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import dumps  # noqa: E402
import kernel  # noqa: E402
import stackgen  # noqa: E402

# ---------------------------------------------------------------------------
# Which operations exist
# ---------------------------------------------------------------------------

#: Every operation the harness knows, with its generator weight (the order
#: is part of what a seed generates: keep it).
OP_WEIGHTS = {
    "unlink": 10, "remove": 3, "rmdir": 8, "mkdir": 10, "makedirs": 3, "symlink": 5, "mkfifo": 3,
    "mknod": 3, "chmod": 7, "chown": 6, "utime": 6, "truncate": 6, "setxattr": 8, "removexattr": 6,
    "os_open": 14, "rename": 8, "link": 5, "move": 3,
}
ALL_OPS = list(OP_WEIGHTS)

#: View fields not compared after a sequence (see the module docstring).
VIEW_IGNORE = ("ino", "blocks")

def O(op, **kw):  # short: the tests write many operations by hand
    """An operation for apply_ops: ``O("rename", src=b"a", dst=b"b")``."""
    return {"op": op, **kw}


#: Every open gets O_NONBLOCK (a FIFO open must never block) and O_NOCTTY.
OPEN_ALWAYS = os.O_NONBLOCK | os.O_NOCTTY

_FLAG_NAMES = ["O_RDONLY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_NOFOLLOW",
               "O_DIRECTORY", "O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC"]


def missing_ops(stack_cls=None) -> list[str]:
    """Operations in ALL_OPS whose Stack method does not exist (a harness/API mismatch)."""
    if stack_cls is None:
        import overlayfs
        stack_cls = overlayfs.Stack
    return [op for op in ALL_OPS if not hasattr(stack_cls, op)]


def open_flags(names) -> int:
    flags = OPEN_ALWAYS
    for n in names:
        flags |= getattr(os, n)
    return flags


def format_op(op: dict) -> str:
    """A readable one-line form of an operation."""
    args = []
    for k, v in op.items():
        if k == "op":
            continue
        if k == "data" and isinstance(v, bytes) and len(v) > 24:
            v = b"%s...(%d bytes)" % (v[:12], len(v))
        if isinstance(v, (bytes, str)) and len(v) > 60:
            v = v[:20] + (b"..." if isinstance(v, bytes) else "...") + v[-8:]
        if k in ("mode", "device") and isinstance(v, int):
            v = oct(v)
        args.append("%s=%r" % (k, v))
    return "%s(%s)" % (op["op"], ", ".join(args))


# ---------------------------------------------------------------------------
# Applying operations
# ---------------------------------------------------------------------------

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_SYS_fchmodat2 = 452  # x86_64 and the generic table (6.6+)
_libc = None


def _fchmodat2_nofollow(path: bytes, mode: int) -> None:
    """chmod without following a symlink (fchmodat2; os.chmod cannot on Linux)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    rc = _libc.syscall(ctypes.c_long(_SYS_fchmodat2), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(path),
                       ctypes.c_uint(mode), ctypes.c_int(_AT_SYMLINK_NOFOLLOW))
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


class KernelFS:
    """The write API on a mounted overlay; paths are union paths, "/" is the union root (chroot)."""

    def __init__(self, root: bytes = b"/"):
        self.root = root

    def _p(self, p: bytes) -> bytes:
        return self.root + p

    def unlink(self, p):
        os.unlink(self._p(p))

    def remove(self, p):
        os.remove(self._p(p))

    def rmdir(self, p):
        os.rmdir(self._p(p))

    def mkdir(self, p, mode=0o777):
        os.mkdir(self._p(p), mode)

    def symlink(self, target, p):
        os.symlink(target, self._p(p))

    def mkfifo(self, p, mode=0o666):
        os.mkfifo(self._p(p), mode)

    def mknod(self, p, mode=0o600, device=0):
        os.mknod(self._p(p), mode, device)

    def chmod(self, p, mode, *, follow_symlinks=True):
        if follow_symlinks:
            os.chmod(self._p(p), mode)
        else:
            _fchmodat2_nofollow(self._p(p), mode)

    def chown(self, p, uid, gid, *, follow_symlinks=True):
        os.chown(self._p(p), uid, gid, follow_symlinks=follow_symlinks)

    def utime(self, p, times=None, *, ns=None, follow_symlinks=True):
        if ns is not None:
            os.utime(self._p(p), ns=ns, follow_symlinks=follow_symlinks)
        else:
            os.utime(self._p(p), times, follow_symlinks=follow_symlinks)

    def truncate(self, p, length):
        os.truncate(self._p(p), length)

    def setxattr(self, p, name, value, flags=0, *, follow_symlinks=True):
        os.setxattr(self._p(p), name, value, flags, follow_symlinks=follow_symlinks)

    def removexattr(self, p, name, *, follow_symlinks=True):
        os.removexattr(self._p(p), name, follow_symlinks=follow_symlinks)

    def os_open(self, p, flags, mode=0o777):
        return os.open(self._p(p), flags, mode)

    def rename(self, src, dst):
        os.replace(self._p(src), self._p(dst))

    def link(self, src, dst):
        os.link(self._p(src), self._p(dst))

    def makedirs(self, p, mode=0o777):
        os.makedirs(self._p(p), mode)

    def move(self, src, dst):
        _mv(self._p(src), self._p(dst))


def _mv(src: bytes, dst: bytes) -> None:
    """``mv -T src dst`` on the mount: rename, or on EXDEV copy the tree (keeping
    type, mode, owner, times, xattrs and hard links within it) and remove the source."""
    try:
        os.replace(src, dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    sst = os.lstat(src)
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        dst_st = None
    if dst_st is not None:
        if stat.S_ISDIR(dst_st.st_mode):
            if not stat.S_ISDIR(sst.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), dst)
            os.rmdir(dst)  # ENOTEMPTY like rename
        else:
            if stat.S_ISDIR(sst.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dst)
            os.unlink(dst)
    links: dict = {}
    dirs = []

    def meta(s, d, st):
        for name in os.listxattr(s, follow_symlinks=False):
            os.setxattr(d, name, os.getxattr(s, name, follow_symlinks=False), follow_symlinks=False)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy(s, d):
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            for name in os.listdir(s):
                copy(s + b"/" + name, d + b"/" + name)
            dirs.append((s, d, st))
            return
        if st.st_nlink > 1 and st.st_ino in links:
            os.link(links[st.st_ino], d)
            return
        if stat.S_ISREG(st.st_mode):
            with open(s, "rb") as fi, open(d, "wb") as fo:
                shutil.copyfileobj(fi, fo)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(d)
        else:
            os.mknod(d, st.st_mode, st.st_rdev)
        meta(s, d, st)
        links[st.st_ino] = d

    copy(src, dst)
    for s, d, st in dirs:
        meta(s, d, st)

    def remove(p):
        if stat.S_ISDIR(os.lstat(p).st_mode):
            for name in os.listdir(p):
                remove(p + b"/" + name)
            os.rmdir(p)
        else:
            os.unlink(p)

    remove(src)


class StackFS:
    """The write API of a Stack: calls its methods directly."""

    def __init__(self, stack):
        self.stack = stack

    def __getattr__(self, name):
        return getattr(self.stack, name)


def _call(fs, op: dict):
    kind = op["op"]
    follow = {} if "follow" not in op else {"follow_symlinks": op["follow"]}
    p = op.get("path")
    if kind in ("unlink", "remove", "rmdir"):
        return getattr(fs, kind)(p)
    if kind in ("mkdir", "makedirs"):
        return getattr(fs, kind)(p, op["mode"]) if "mode" in op else getattr(fs, kind)(p)
    if kind == "symlink":
        return fs.symlink(op["target"], p)
    if kind == "mkfifo":
        return fs.mkfifo(p, op["mode"])
    if kind == "mknod":
        return fs.mknod(p, op["mode"], op["device"])
    if kind == "chmod":
        return fs.chmod(p, op["mode"], **follow)
    if kind == "chown":
        return fs.chown(p, op["uid"], op["gid"], **follow)
    if kind == "utime":
        if "ns" in op:
            return fs.utime(p, ns=tuple(op["ns"]), **follow)
        if "times" in op:
            return fs.utime(p, tuple(op["times"]), **follow)
        return fs.utime(p, **follow)
    if kind == "truncate":
        return fs.truncate(p, op["length"])
    if kind == "setxattr":
        return fs.setxattr(p, op["name"], op["value"], op.get("flags", 0), **follow)
    if kind == "removexattr":
        return fs.removexattr(p, op["name"], **follow)
    if kind in ("rename", "link", "move"):
        return getattr(fs, kind)(op["src"], op["dst"])
    raise ValueError("unknown operation %r" % kind)


def apply_op(fs, op: dict) -> str:
    """Apply one operation through *fs* (KernelFS or StackFS); its outcome as a string.

    ``"ok"`` or the errno name; an open also reports what it could see
    through the fd (``"ok reg size=N sha=..."``), after writing ``data`` if
    the fd is writable and refers to a regular file (never to a device); an
    open with ``read=N`` of anything else readable reads N bytes from it
    (``"ok chr read=<hex>"``; only for harmless devices such as 1:5).
    Exceptions other than OSError become ``"EXC <type>: <message>"``.
    """
    try:
        if op["op"] != "os_open":
            _call(fs, op)
            return "ok"
        flags = open_flags(op["flags"])
        fd = fs.os_open(op["path"], flags, op["mode"]) if "mode" in op else fs.os_open(op["path"], flags)
        try:
            st = os.fstat(fd)
            kind = kernel._TYPE_NAMES.get(stat.S_IFMT(st.st_mode), "?")
            out = "ok " + kind
            if not stat.S_ISREG(st.st_mode):
                if op.get("read") and flags & os.O_ACCMODE != os.O_WRONLY:
                    out += " read=" + os.read(fd, op["read"]).hex()
                return out
            acc = flags & os.O_ACCMODE
            if op.get("data") and acc != os.O_RDONLY:
                try:
                    if "offset" in op and not flags & os.O_APPEND:
                        os.pwrite(fd, op["data"], op["offset"])
                    else:
                        os.write(fd, op["data"])
                except OSError as e:
                    out += " write=" + kernel.errname(e)
            st = os.fstat(fd)
            out += " size=%d mode=%o" % (st.st_size, stat.S_IMODE(st.st_mode))
            if acc != os.O_WRONLY:
                try:
                    data = os.pread(fd, min(st.st_size, 8 << 20), 0)
                    out += " sha=" + hashlib.sha256(data).hexdigest()[:16]
                except OSError as e:
                    out += " read=" + kernel.errname(e)
            return out
        finally:
            os.close(fd)
    except OSError as e:
        return kernel.errname(e)
    except Exception as e:  # a wrong exception type is a parity failure, not a crash
        return "EXC %s: %s" % (type(e).__name__, e)


def apply_ops(fs, ops) -> list[str]:
    return [apply_op(fs, op) for op in ops]


# ---------------------------------------------------------------------------
# Side (a): the kernel
# ---------------------------------------------------------------------------

def become(caller, keep_saved=False) -> None:
    """Switch this (single-threaded) process to ``caller = (uid, gid, groups)``.

    With *keep_saved* the saved ids stay 0, so the process can switch back
    (``become((0, 0, []))``) - and a Stack opened before can regain its
    opener's rights for the work, as it must.
    """
    uid, gid, groups = caller
    saved_uid, saved_gid = (0, 0) if keep_saved else (uid, gid)
    os.setresuid(0, 0, 0)
    os.setgroups(list(groups))
    os.setresgid(gid, gid, saved_gid)
    os.setresuid(uid, uid, saved_uid)


def apply_kernel(lowers, upper, work, ops, *, umask=0o022, options=(), caller=None, data_layers=()) -> dict:
    """Mount the stack in a private namespace and apply *ops* on the mount,
    as *caller* ``(uid, gid, groups)`` if given (the mount stays root's), with
    *data_layers* appended to ``lowerdir`` as ``::`` data-only layers.

    Returns ``{"outcomes": [...], "window": [t0, t1]}``; the mount is gone
    when this returns.  Raises ``kernel.MountError`` if the mount fails.
    """
    return kernel.run_in_mount(_apply_in_mount, {"ops": list(ops), "umask": umask, "caller": caller}, lowers,
                               upper, work, options=options, data_layers=data_layers, timeout=300,
                               what="kernel ops")


def _apply_in_mount(root: bytes, job: dict) -> dict:
    """Worker of :func:`apply_kernel`, chrooted into the mount (run by ``kernel.run_in_mount``)."""
    os.umask(job["umask"])
    if job.get("caller"):
        become(job["caller"])
    fs = KernelFS(root)
    t0 = time.time_ns()
    outcomes = apply_ops(fs, job["ops"])
    t1 = time.time_ns()
    return {"outcomes": outcomes, "window": [t0, t1]}


# ---------------------------------------------------------------------------
# Side (b): the Stack
# ---------------------------------------------------------------------------


#: Seconds the Stack side may take for a whole sequence before it is killed.
STACK_TIMEOUT = 60


def run_forked(body, timeout=STACK_TIMEOUT):
    """Run ``body(send)`` in a forked child; ``send(kind, value)`` streams JSON messages back.

    Returns ``(messages, error)``: the ``[kind, value]`` pairs received, and
    None or how the child failed (an exception, a crash, or a hang past
    *timeout* seconds, after which it is killed).  Used for everything the
    Stack does, so that a deadlock or a crash in it fails one test instead of
    stopping the run.
    """
    import select

    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        status = 1
        try:
            os.close(rfd)

            def send(kind, value):
                kernel._write_all(wfd, json.dumps([kind, value]).encode() + b"\n")

            body(send)
            status = 0
        except BaseException as e:
            try:
                kernel._write_all(wfd, json.dumps(["error", "%s: %s" % (type(e).__name__, e)]).encode() + b"\n")
            except BaseException:
                pass
        finally:
            os._exit(status)
    os.close(wfd)
    buf = b""
    deadline = time.monotonic() + timeout
    error = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                error = "TIMEOUT after %ds (killed)" % timeout
                os.kill(pid, 9)
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if ready:
                chunk = os.read(rfd, 1 << 20)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    messages = []
    for line in buf.split(b"\n"):
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            break  # a partial line from a killed child
        if msg[0] == "error":
            error = msg[1]
        else:
            messages.append(msg)
    code = os.waitstatus_to_exitcode(status)
    if error is None and code != 0:
        error = "child died (%s)" % ("signal %d" % -code if code < 0 else "exit %d" % code)
    return messages, error


def apply_stack(stack_cls, lowers, upper, work, ops, *, umask=0o022, stack_kwargs=None, paths_extra=(),
                timeout=None, caller=None):
    """Open a Stack on the layers and apply *ops* with the umask set to *umask*,
    as *caller* ``(uid, gid, groups)`` if given (the Stack is opened as root).

    Runs in a forked child (see :func:`run_forked`), so a hang or a crash in
    the Stack names the operation instead of stopping the test run.  Returns
    ``{"outcomes", "window", "live_view", "error"}``: the view is collected
    through the same (live) Stack instance after the last operation, to catch
    stale caches; ``error`` is None or what went wrong (outcomes then stop early).
    """

    def body(send):
        os.umask(umask)
        with stack_cls(lowers, upper, work, **(stack_kwargs or {})) as st:
            fs = StackFS(st)
            if caller:
                become(caller, keep_saved=True)
            send("t0", time.time_ns())
            for op in ops:
                send("outcome", apply_op(fs, op))
            send("t1", time.time_ns())
            if caller:
                become((0, 0, []))
            send("view", kernel.stack_view(st, paths_extra))

    messages, error = run_forked(body, STACK_TIMEOUT if timeout is None else timeout)
    res = {"outcomes": [], "window": [0, 0], "live_view": None, "error": error}
    for kind, value in messages:
        if kind == "t0":
            res["window"] = [value, value]
        elif kind == "t1":
            res["window"][1] = value
        elif kind == "outcome":
            res["outcomes"].append(value)
        elif kind == "view":
            res["live_view"] = value
    if error is not None:
        i = len(res["outcomes"])
        res["error"] += (" during op %d %s" % (i, format_op(ops[i])) if i < len(ops)
                         else " while collecting the live view")
        if res["window"][0]:
            res["window"][1] = time.time_ns()
    return res


def fresh_stack_view(stack_cls, layout, paths_extra=(), stack_kwargs=None, timeout=None):
    """The view through a new Stack on *layout* and its API cross-check (in a forked child).

    Returns ``(view or None, problems)``.
    """

    def body(send):
        with stack_cls(layout.lowers, layout.upper, layout.work, **(stack_kwargs or {})) as st:
            view = kernel.stack_view(st, paths_extra)
            send("view", view)
            send("problems", kernel.check_stack_api(st, view))

    messages, error = run_forked(body, STACK_TIMEOUT if timeout is None else timeout)
    got = dict((k, v) for k, v in messages)
    problems = list(got.get("problems", []))
    if error is not None:
        problems.append("fresh Stack failed: %s" % error)
    return got.get("view"), problems


# ---------------------------------------------------------------------------
# Upper-layer dumps
# ---------------------------------------------------------------------------


def dump_upper(upper, window=None) -> dict:
    """``dumps.dump_tree`` of an upper dir without the kernel-only bookkeeping xattrs
    (``dumps.IGNORED_UPPER_XATTRS``), compared under ``dumps.WRITE_RULES``."""
    return dumps.dump_tree(upper, window, ignored_xattrs=dumps.IGNORED_UPPER_XATTRS)


# ---------------------------------------------------------------------------
# Views after a sequence
# ---------------------------------------------------------------------------


def normalize_view(view: dict, window) -> dict:
    """Drop directory mtimes and turn in-window non-directory mtimes into "fresh" (in place)."""
    for section in ("paths", "extra"):
        for rec in view[section].values():
            for key in ("lstat", "stat"):
                s = rec.get(key)
                if not s or "errno" in s or "mtime_ns" not in s:
                    continue
                if s.get("type") == "dir":
                    del s["mtime_ns"]
                elif dumps.is_fresh(s["mtime_ns"], window):
                    s["mtime_ns"] = "fresh"
    return view


def op_paths(ops) -> list[bytes]:
    """Every path an operation names, as extra paths for the views."""
    out = []
    for op in ops:
        for k in ("path", "src", "dst"):
            if k in op:
                out.append(op[k])
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------
# Generating operations
# ---------------------------------------------------------------------------

#: Fresh names: plain, tricky for parsers, non-UTF-8, maximal and too long.
FRESH_NAMES = [b"new", b"n1", b"n2", b"fresh", b"x y", b"co:lon", b"com,ma", b"back\\slash", b"new\nline",
               b"\xff\xfe", b"caf\xc3\xa9", b".hid", b"..x", b"c" * 255]
TOO_LONG = b"z" * 256
USER_XATTRS = [b"user.k1", b"user.k2", b"user.k5", b"user.new", b"user.w"]
OTHER_XATTRS = [b"trusted.t1", b"trusted.overlay.opaque", b"trusted.overlay.whiteout", b"trusted.overlay.x",
                b"trusted.overlay.overlay.esc0"]
UTIME_SECONDS = [(1_500_000_000, 1_500_000_123), (0, 0), (1_234_567_890.5, 1_234_567_890.25)]
UTIME_NS = [(1_400_000_000_123_456_789, 1_400_000_001_987_654_321), (5, 7)]
CHMOD_MODES = [0o644, 0o600, 0o755, 0o000, 0o4755, 0o2770, 0o1777, 0o7777, 0o444]
CREATE_MODES = [0o777, 0o755, 0o700, 0o644, 0o600, 0o000, 0o1777, 0o2755, 0o4755]
OWNERS = [(1000, 1000), (0, 0), (-1, 4242), (12345, -1), (65534, 65534), (-1, -1)]
MKNOD_KINDS = [
    (stat.S_IFCHR | 0o644, os.makedev(1, 3)),
    (stat.S_IFCHR | 0o600, os.makedev(1, 5)),
    (stat.S_IFCHR | 0o600, 0),  # a whiteout: EPERM through the overlay
    (stat.S_IFIFO | 0o640, 0),
    (stat.S_IFREG | 0o640, 0),
    (stat.S_IFSOCK | 0o755, 0),
    (stat.S_IFBLK | 0o600, 0),  # block 0:0: nothing behind it
]
OPEN_FLAG_SETS = [
    ["O_WRONLY"], ["O_RDWR"], ["O_WRONLY", "O_TRUNC"], ["O_RDWR", "O_APPEND"], ["O_WRONLY", "O_APPEND"],
    ["O_RDONLY"], ["O_RDONLY", "O_TRUNC"], ["O_RDWR", "O_TRUNC"], ["O_WRONLY", "O_NOFOLLOW"],
    ["O_RDONLY", "O_DIRECTORY"],
]
CREATE_FLAG_SETS = [
    ["O_WRONLY", "O_CREAT"], ["O_RDWR", "O_CREAT"], ["O_WRONLY", "O_CREAT", "O_EXCL"],
    ["O_WRONLY", "O_CREAT", "O_TRUNC"], ["O_RDWR", "O_CREAT", "O_APPEND"], ["O_RDONLY", "O_CREAT"],
    ["O_RDWR", "O_CREAT", "O_EXCL"],
]


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] if b"/" in path else b""


class _Model:
    """A rough prediction of the merged namespace, to aim operations at names that exist."""

    def __init__(self, view: dict, layers=None):
        self.kind: dict = {}  # path -> lstat type
        self.xattrs: dict = {}
        self.hidden: set = set()
        for p, rec in view["paths"].items():
            st = rec.get("lstat", {})
            if "errno" in st:
                continue
            bp = os.fsencode(p)
            self.kind[bp] = st["type"]
            if isinstance(rec.get("xattrs"), dict):
                self.xattrs[bp] = sorted(os.fsencode(n) for n in rec["xattrs"])
            for name, err in (rec.get("listing_failed") or {}).items():
                if err == "ENOENT":
                    self.hidden.add(_join(bp, os.fsencode(name)))
        for layer in layers or ():
            if layer is None:
                continue
            root = os.fsencode(layer)
            for dirpath, dirnames, filenames in os.walk(root):
                rel = os.path.relpath(dirpath, root)
                rel = b"" if rel == b"." else rel
                for name in dirnames + filenames:
                    p = _join(rel, name)
                    if p not in self.kind and self.kind.get(rel) == "dir":
                        self.hidden.add(p)

    def paths(self, kinds=None, root=False):
        return sorted(p for p, k in self.kind.items() if (p or root) and (kinds is None or k in kinds))

    def dirs(self):
        return self.paths(["dir"], root=True)

    def children(self, path):
        pre = path + b"/" if path else b""
        return [p for p in self.kind if p and p.startswith(pre) and p != path]

    def remove(self, path):
        for p in [path] + self.children(path):
            self.kind.pop(p, None)
        self.hidden.add(path)

    def add(self, path, kind):
        if self.kind.get(_parent(path)) == "dir" and path not in self.kind:
            self.kind[path] = kind
            self.hidden.discard(path)


class _Gen:
    def __init__(self, seed, view, layers, ops):
        self.rng = random.Random("write-ops:%s" % (seed,))
        self.m = _Model(view, layers)
        self.ops = list(ops)
        self.weights = [OP_WEIGHTS[o] for o in self.ops]

    # -- paths -------------------------------------------------------------

    def existing(self, kinds=None, root=False):
        """An existing path; *kinds* (types, repeated to weigh them) picks a type first."""
        if kinds is not None:
            present = [k for k in kinds if self.m.paths([k])]
            if not present:
                return None
            kinds = [self.rng.choice(present)]
        pool = self.m.paths(kinds, root)
        return self.rng.choice(pool) if pool else None

    def fresh(self):
        rng = self.rng
        dirs = self.m.dirs()
        parent = rng.choice(dirs) if dirs else b""
        for _ in range(10):
            name = rng.choice(FRESH_NAMES) if rng.random() < 0.6 else b"f%d" % rng.randrange(100)
            if _join(parent, name) not in self.m.kind:
                return _join(parent, name)
        return _join(parent, b"f%d" % rng.randrange(10**6))

    def hidden(self):
        pool = sorted(self.m.hidden)
        return self.rng.choice(pool) if pool else None

    def odd(self, want_dir=False):
        """A path that must fail (or be special): through a file, missing parent, too long, trailing slash."""
        rng = self.rng
        r = rng.randrange(6)
        if r == 0:
            f = self.existing(["reg", "fifo", "chr", "lnk"])
            if f is not None:
                return f + b"/" + rng.choice([b"x", b"", b"."])
        if r == 1:
            return b"nodir%d/x" % rng.randrange(10)
        if r == 2:
            return _join(rng.choice(self.m.dirs() or [b""]), TOO_LONG)
        if r == 3:
            f = self.existing(["reg", "lnk", "fifo"])
            if f is not None:
                return f + b"/"
        if r == 4:
            d = self.existing(["dir"])
            if d is not None:
                return d + b"/"
        h = self.hidden()
        if h is not None:
            return h + b"/" + rng.choice([b"x", b""]) if rng.random() < 0.3 else h
        return self.fresh() + b"/"

    def pick(self, dist):
        """dist: [(weight, callable)]; retried until one gives a path."""
        total = sum(w for w, _ in dist)
        for _ in range(20):
            r = self.rng.random() * total
            for w, fn in dist:
                r -= w
                if r < 0:
                    p = fn()
                    if p is not None:
                        return p
                    break
        return self.fresh()

    def target_new(self):
        def dir_slash():
            d = self.existing(["dir"])
            return None if d is None else d + b"/"

        return self.pick([(50, self.fresh), (22, self.hidden), (14, self.existing), (10, self.odd),
                          (4, dir_slash)])

    def target_existing(self, kinds=None):
        return self.pick([(80, lambda: self.existing(kinds)), (6, lambda: self.existing(root=True)),
                          (8, self.hidden), (6, self.odd), (3, self.fresh), (2, lambda: b"")])

    # -- operations --------------------------------------------------------

    def make(self, n):
        out = []
        if not self.ops:
            return out
        for _ in range(n):
            kind = self.rng.choices(self.ops, self.weights)[0]
            op = getattr(self, "op_" + kind)()
            op = {"op": kind, **op}
            self.predict(op)
            out.append(op)
        return out

    def maybe_follow(self, op, p, prob=0.5):
        if self.m.kind.get(p) == "lnk" and self.rng.random() < prob:
            op["follow"] = False
        elif self.rng.random() < 0.05:
            op["follow"] = self.rng.random() < 0.5
        return op

    def op_unlink(self):
        p = self.pick([(65, lambda: self.existing(["reg", "lnk", "fifo", "chr", "blk", "sock"])),
                       (12, lambda: self.existing(["dir"])), (10, self.hidden), (10, self.odd), (3, self.fresh)])
        return {"path": p}

    op_remove = op_unlink

    def op_rmdir(self):
        rng = self.rng
        dirs = self.m.paths(["dir"])
        empty = [d for d in dirs if not self.m.children(d)]

        def a_dir():
            if empty and rng.random() < 0.5:
                return rng.choice(empty)
            return rng.choice(dirs) if dirs else None

        p = self.pick([(70, a_dir), (10, lambda: self.existing(["reg", "lnk", "fifo"])), (8, self.hidden),
                       (6, self.odd), (3, self.fresh), (3, lambda: b"")])
        return {"path": p}

    def op_mkdir(self):
        op = {"path": self.target_new()}
        if self.rng.random() < 0.7:
            op["mode"] = self.rng.choice(CREATE_MODES)
        return op

    def op_makedirs(self):
        rng = self.rng
        base = self.pick([(60, self.fresh), (25, self.hidden), (15, lambda: self.existing(["reg"]))])
        p = base + b"/" + rng.choice(FRESH_NAMES[:4]) if rng.random() < 0.8 else base
        op = {"path": p}
        if rng.random() < 0.5:
            op["mode"] = rng.choice(CREATE_MODES)
        return op

    def op_symlink(self):
        rng = self.rng
        targets = [b"a", b"../x", b"/abs/t", b"dangling", b".", b"x" * 300] + self.m.paths()[:10]
        return {"target": rng.choice(targets), "path": self.target_new()}

    def op_mkfifo(self):
        return {"path": self.target_new(), "mode": self.rng.choice([0o666, 0o600, 0o644, 0o1777])}

    def op_mknod(self):
        mode, dev = self.rng.choice(MKNOD_KINDS)
        return {"path": self.target_new(), "mode": mode, "device": dev}

    def op_chmod(self):
        p = self.target_existing()
        op = {"path": p, "mode": self.rng.choice(CHMOD_MODES)}
        if self.m.kind.get(p) == "lnk" and self.rng.random() < 0.2:
            op["follow"] = False  # EOPNOTSUPP, after or before a copy-up?
        return op

    def op_chown(self):
        p = self.target_existing()
        uid, gid = self.rng.choice(OWNERS)
        return self.maybe_follow({"path": p, "uid": uid, "gid": gid}, p)

    def op_utime(self):
        rng = self.rng
        p = self.target_existing()
        op = {"path": p}
        r = rng.random()
        if r < 0.4:
            op["times"] = list(rng.choice(UTIME_SECONDS))
        elif r < 0.8:
            op["ns"] = list(rng.choice(UTIME_NS))
        return self.maybe_follow(op, p)

    def op_truncate(self):
        return {"path": self.target_existing(["reg", "reg", "reg", "lnk", "dir", "fifo"]),
                "length": self.rng.choice([0, 1, 5, 4096, 100_000, 1 << 20, -1])}

    def op_setxattr(self):
        rng = self.rng
        p = self.target_existing()
        have = self.m.xattrs.get(p, [])
        name = rng.choice(have) if have and rng.random() < 0.3 else rng.choice(USER_XATTRS + OTHER_XATTRS)
        op = {"path": p, "name": name, "value": bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 8, 40])))}
        r = rng.random()
        if r < 0.15:
            op["flags"] = os.XATTR_CREATE
        elif r < 0.3:
            op["flags"] = os.XATTR_REPLACE
        return self.maybe_follow(op, p, 0.3)

    def op_removexattr(self):
        rng = self.rng
        have = [p for p, names in self.m.xattrs.items() if names and p in self.m.kind]
        if have and rng.random() < 0.55:
            p = rng.choice(sorted(have))
            name = rng.choice(self.m.xattrs[p])
        else:
            p = self.target_existing()
            name = rng.choice(USER_XATTRS + OTHER_XATTRS)
        return self.maybe_follow({"path": p, "name": name}, p, 0.3)

    def op_os_open(self):
        rng = self.rng
        if rng.random() < 0.55:
            p = self.target_existing(["reg", "reg", "reg", "lnk", "fifo", "dir", "chr"])
            flags = list(rng.choice(OPEN_FLAG_SETS))
        else:
            p = self.target_new()
            flags = list(rng.choice(CREATE_FLAG_SETS))
        op = {"path": p, "flags": flags}
        if "O_CREAT" in flags:
            op["mode"] = rng.choice(CREATE_MODES[:6])
        if rng.random() < 0.8:
            op["data"] = rng.choice([b"hello\n", b"", b"W" * 5000, bytes(range(256))])
            if rng.random() < 0.2:
                op["offset"] = rng.choice([3, 10000])
        return op

    def _src(self):
        return self.pick([(80, lambda: self.existing()), (8, self.hidden), (6, self.odd), (6, self.fresh)])

    def _dst(self, src):
        rng = self.rng
        r = rng.random()
        if r < 0.08 and src:
            return src + b"/inside"  # EINVAL for a dir (into itself), ENOTDIR for a file
        if r < 0.12:
            return src
        return self.target_new()

    def op_rename(self):
        src = self._src()
        return {"src": src, "dst": self._dst(src)}

    op_move = op_rename

    def op_link(self):
        src = self.pick([(75, lambda: self.existing(["reg", "lnk", "fifo", "chr"])),
                         (10, lambda: self.existing(["dir"])), (8, self.hidden), (7, self.odd)])
        return {"src": src, "dst": self._dst(src)}

    # -- prediction --------------------------------------------------------

    def predict(self, op):
        """Update the model as if the operation succeeded where it plausibly does."""
        m, kind = self.m, op["op"]
        p = op.get("path")
        if kind in ("unlink", "remove"):
            if m.kind.get(p) not in (None, "dir"):
                m.remove(p)
        elif kind == "rmdir":
            if p and m.kind.get(p) == "dir" and not m.children(p):
                m.remove(p)
        elif kind in ("mkdir", "makedirs"):
            q = p.rstrip(b"/")
            if kind == "makedirs":
                parts = q.split(b"/")
                for i in range(1, len(parts)):
                    m.add(b"/".join(parts[:i]), "dir")
            m.add(q, "dir")
        elif kind in ("symlink", "mkfifo", "mknod") and not p.endswith(b"/"):
            k = {"symlink": "lnk", "mkfifo": "fifo"}.get(kind)
            if k is None:
                k = {stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock",
                     stat.S_IFREG: "reg"}[stat.S_IFMT(op["mode"])]
                if k == "chr" and op["device"] == 0:
                    return
            m.add(p, k)
        elif kind == "os_open" and "O_CREAT" in op["flags"] and not p.endswith(b"/"):
            m.add(p, "reg")
        elif kind == "setxattr" and p in m.kind:
            names = m.xattrs.setdefault(p, [])
            if op["name"] not in names and op["name"].startswith(b"user."):
                names.append(op["name"])
        elif kind == "removexattr" and op["name"] in m.xattrs.get(p, []):
            m.xattrs[p].remove(op["name"])
        elif kind in ("rename", "move"):
            src, dst = op["src"], op["dst"]
            k = m.kind.get(src)
            if k is None or not src or dst.startswith(src + b"/") or src == dst:
                return
            if k == "dir" and kind == "rename":
                return  # most likely EXDEV (merged or lower dir) by default
            if m.kind.get(_parent(dst)) != "dir" or (dst in m.kind and m.kind[dst] == "dir" and m.children(dst)):
                return
            moved = {src: k, **{c: m.kind[c] for c in m.children(src)}}
            m.remove(dst) if dst in m.kind else None
            m.remove(src)
            for c, ck in moved.items():
                m.kind[dst + c[len(src):]] = ck
            m.hidden.discard(dst)
        elif kind == "link":
            k = m.kind.get(op["src"])
            if k not in (None, "dir"):
                m.add(op["dst"], k)


def make_ops(seed, view, n, *, ops=None, layers=None) -> list[dict]:
    """A seeded random sequence of *n* write operations aimed at *view*.

    *view* is a merged view (``kernel.kernel_view`` / ``kernel.stack_view``)
    of the stack before the operations; *layers* (optional) adds names that
    exist in some layer but are hidden (whited out, under an opaque dir, cut
    off), which the merged view cannot show.  Targets are existing names of
    every type, fresh names (tricky bytes, 255 bytes), hidden names, and
    paths that must fail: through a file (ENOTDIR), with a trailing slash,
    with a missing parent, 256-byte names, the root, non-empty dirs...
    *ops* restricts the operation kinds; it defaults to :data:`ALL_OPS`
    (an empty list gives an empty sequence).
    """
    ops = ALL_OPS if ops is None else ops
    unknown = set(ops) - set(ALL_OPS)
    if unknown:
        raise ValueError("unknown operations %r" % sorted(unknown))
    return _Gen(seed, view, layers, ops).make(n)


# ---------------------------------------------------------------------------
# Running and comparing sequences
# ---------------------------------------------------------------------------


def copy_tree(src, dst) -> None:
    """``cp -a``: types, modes, owners, times, xattrs, hard links, sparse files."""
    subprocess.run(["cp", "-a", "--sparse=always", os.fsencode(src), os.fsencode(dst)], check=True)


class Layout:
    """One copy of a stack: lowers (top first), upper, work under a root."""

    def __init__(self, root, lowers, upper, work):
        self.root = os.fsencode(root)
        self.lowers = [os.fsencode(p) for p in lowers]
        self.upper = os.fsencode(upper)
        self.work = os.fsencode(work)

    @property
    def layers(self):
        return [self.upper] + self.lowers

    def clone(self, dst_root) -> Layout:
        """An identical copy under *dst_root* (which must not exist)."""
        dst_root = os.fsencode(dst_root)
        copy_tree(self.root, dst_root)

        def move(p):
            return dst_root + p[len(self.root):]

        return Layout(dst_root, [move(p) for p in self.lowers], move(self.upper), move(self.work))


def random_case(seed: int) -> dict:
    """Parameters of random write sequence *seed*: small stacks, short sequences."""
    rng = random.Random("write-case:%d" % seed)
    return {"nlayers": rng.randint(1, 3), "budget": rng.randint(40, 80), "n_ops": rng.randint(8, 15),
            "umask": rng.choice([0o022, 0o022, 0o077, 0o002, 0o000, 0o027]), "cache": rng.random() < 0.8}


def build_random(root, seed: int) -> Layout:
    """The random stack of *seed* (stackgen, with an upper) under root/orig."""
    case = random_case(seed)
    orig = os.path.join(os.fsdecode(root), "orig")
    lowers, upper, work = stackgen.make_stack(orig, seed, case["nlayers"], upper=True, budget=case["budget"])
    return Layout(orig, lowers, upper, work)


class SideResult:
    def __init__(self, label, outcomes, window, upper_dump, views):
        self.label = label
        self.outcomes = outcomes
        self.window = window
        self.upper_dump = upper_dump
        self.views = views  # name -> normalized view


def run_kernel_side(layout: Layout, ops, *, umask=0o022, options=(), label="kernel", mutate=None,
                    views=("kernel",), caller=None) -> SideResult:
    """Apply *ops* through a kernel mount, dump the upper, then collect a fresh kernel view.

    *mutate*, if given, is called as ``mutate(layout, ops, outcomes, before)``
    after the operations (``before``: the upper dump before them); it may
    change the upper or the *outcomes* list in place, and returns how many
    things it changed (a deliberately wrong applier, for the harness
    self-tests), kept as ``result.mutations``.
    """
    before = dump_upper(layout.upper) if mutate is not None else None
    res = apply_kernel(layout.lowers, layout.upper, layout.work, ops, umask=umask, options=options,
                       caller=caller)
    outcomes, window = res["outcomes"], res["window"]
    mutations = 0
    if mutate is not None:
        outcomes = list(outcomes)
        mutations = mutate(layout, ops, outcomes, before)
    dump = dump_upper(layout.upper, window)
    got = {}
    if "kernel" in views:
        got["kernel"] = normalize_view(
            kernel.kernel_view(layout.lowers, layout.upper, layout.work, options=options,
                               paths_extra=op_paths(ops)), window)
    result = SideResult(label, outcomes, window, dump, got)
    result.mutations = mutations
    return result


def run_stack_side(layout: Layout, ops, stack_cls, *, umask=0o022, stack_kwargs=None, label="stack",
                   kernel_readback=True, options=(), caller=None) -> SideResult:
    """Apply *ops* through a Stack; dump the upper; views from the live Stack, a fresh
    Stack and (with *kernel_readback*) a kernel mount of the resulting layers, mounted
    with the mount *options* of the kernel side."""
    extra = op_paths(ops)
    res = apply_stack(stack_cls, layout.lowers, layout.upper, layout.work, ops, umask=umask,
                      stack_kwargs=stack_kwargs, paths_extra=extra, caller=caller)
    window = res["window"]
    dump = dump_upper(layout.upper, window)
    views = {}
    if res["live_view"] is not None:
        views["live stack"] = normalize_view(res["live_view"], window)
    fresh, problems = fresh_stack_view(stack_cls, layout, extra, stack_kwargs)
    if fresh is not None:
        views["fresh stack"] = normalize_view(fresh, window)
    if kernel_readback:
        views["kernel on stack layers"] = normalize_view(
            kernel.kernel_view(layout.lowers, layout.upper, layout.work, options=options, paths_extra=extra),
            window)
    result = SideResult(label, res["outcomes"], window, dump, views)
    result.api_problems = problems
    result.error = res["error"]
    return result


def compare_sides(a: SideResult, b: SideResult, ops, *, view_ignore=VIEW_IGNORE) -> list[str]:
    """Every difference between two sides: outcomes, upper dumps, then each view of b against a's."""
    out = []
    for side in (a, b):
        if getattr(side, "error", None):
            out.append("%s side failed: %s" % (side.label, side.error))
    for i, (op, oa, ob) in enumerate(zip(ops, a.outcomes, b.outcomes)):
        if oa != ob:
            out.append("op %d %s: %s=%s %s=%s" % (i, format_op(op), a.label, oa, b.label, ob))
    if len(a.outcomes) != len(b.outcomes):
        out.append("outcome counts differ: %d vs %d" % (len(a.outcomes), len(b.outcomes)))
    out += ["upper [%s] %s" % d for d in dumps.compare_dumps(a.upper_dump, b.upper_dump, dumps.WRITE_RULES,
                                                              labels=(a.label, b.label))]
    ref = a.views.get("kernel")
    # The same difference seen in several views is reported once, naming them all.
    by_line: dict = {}
    for name, view in b.views.items():
        if ref is None:
            break
        for line in kernel.compare_views(ref, view, ignore=view_ignore):
            by_line.setdefault(line, []).append(name)
    for line, names in by_line.items():
        out.append("view[%s] %s" % (", ".join(names), line))
    for p in getattr(b, "api_problems", ()):
        out.append("stack API: %s" % p)
    return out


class Report:
    """The result of one sequence: the operations, both sides, and the differences."""

    def __init__(self, seed, ops, a, b, diffs):
        self.seed, self.ops, self.a, self.b, self.diffs = seed, ops, a, b, diffs

    def format(self, limit=40) -> str:
        what = "hand-written case" if self.seed is None else "seed %r" % (self.seed,)
        lines = ["%s: %d difference(s) after %d operation(s):" % (what, len(self.diffs), len(self.ops))]
        lines += ["  " + d for d in self.diffs[:limit]]
        if len(self.diffs) > limit:
            lines.append("  ... and %d more" % (len(self.diffs) - limit))
        lines.append("operations (%s | %s):" % (self.a.label, self.b.label))
        for i, op in enumerate(self.ops):
            lines.append("  %2d %s -> %s | %s" % (i, format_op(op), self.a.outcomes[i],
                                                   self.b.outcomes[i] if i < len(self.b.outcomes) else "-"))
        return "\n".join(lines)


def run_case(tmp, layout: Layout, ops, *, stack_cls=None, umask=0o022, stack_kwargs=None, options=(),
             both_kernel=False, mutate=None, seed=None, caller=None) -> Report:
    """Apply *ops* to two identical copies of *layout* and compare.

    Side (a) is always the kernel.  Side (b) is *stack_cls* (default
    ``overlayfs.Stack``), or with *both_kernel* the kernel again (harness
    self-test), optionally with *mutate* corrupting its result.  A Stack
    opens no device nodes unless ``stack_kwargs`` has ``devices=True``, like
    a nodev mount: the kernel side is mounted ``nodev`` then.
    """
    if not (stack_kwargs or {}).get("devices"):
        options = tuple(options) + ("nodev",)
    tmp = os.fsencode(tmp)
    a = layout.clone(tmp + b"/A")
    b = layout.clone(tmp + b"/B")
    ka = run_kernel_side(a, ops, umask=umask, options=options, label="kernel", caller=caller)
    if both_kernel:
        kb = run_kernel_side(b, ops, umask=umask, options=options, label="kernel2", mutate=mutate,
                             caller=caller)
        kb.views = {"kernel2": kb.views["kernel"]}
    else:
        if stack_cls is None:
            import overlayfs
            stack_cls = overlayfs.Stack
        kb = run_stack_side(b, ops, stack_cls, umask=umask, stack_kwargs=stack_kwargs, options=options,
                            caller=caller)
    return Report(seed, ops, ka, kb, compare_sides(ka, kb, ops))


def initial_view(tmp, layout: Layout) -> dict:
    """The merged view the generator aims at, without writing to *layout*.

    A read-only ``overlayfs.Stack`` view (the read side is kernel-checked by
    test_kernel_parity), collected in a forked child; without the compiled
    package, or if that fails, a kernel mount of a throwaway copy (a mount
    writes origin/impure xattrs into the upper, hence the copy).
    """
    try:
        import overlayfs
    except ImportError:
        overlayfs = None
    if overlayfs is not None:
        def body(send):
            with overlayfs.Stack(layout.lowers, layout.upper, layout.work, cache=False) as st:
                send("view", kernel.stack_view(st))

        messages, error = run_forked(body)
        if error is None and messages:
            return messages[0][1]
    probe = layout.clone(os.path.join(os.fsencode(tmp), b"probe"))
    try:
        return kernel.kernel_view(probe.lowers, probe.upper, probe.work)
    finally:
        shutil.rmtree(probe.root)


#: Unprivileged callers ``(uid, gid, groups)`` for permission sequences: ids
#: that own files in the random stacks (stackgen.OWNERS) and ids that own none.
CALLERS = [(1000, 1000, [1000]), (1000, 1000, []), (12345, 0, [0]), (65534, 65534, [4242]),
           (2000, 4242, [1000, 4242]), (1000, 2000, []), (2000, 2000, [0, 65534])]


def random_caller(seed: int):
    return random.Random("write-caller:%d" % seed).choice(CALLERS)


def run_random(tmp, seed: int, *, ops=None, stack_cls=None, both_kernel=False, mutate=None,
               n_ops=None, options=(), stack_kwargs=None, caller=None) -> Report:
    """Build the random stack of *seed*, generate its sequence and run it (see run_case):
    the kernel side mounted with *options*, the Stack given *stack_kwargs* besides the
    case's ``cache``, both as *caller* ``(uid, gid, groups)`` if given."""
    case = random_case(seed)
    layout = build_random(tmp, seed)
    view = initial_view(tmp, layout)
    seq = make_ops(seed, view, n_ops or case["n_ops"], ops=ops, layers=layout.layers)
    return run_case(tmp, layout, seq, stack_cls=stack_cls, umask=case["umask"], options=options,
                    stack_kwargs={"cache": case["cache"], **(stack_kwargs or {})}, both_kernel=both_kernel,
                    mutate=mutate, seed=seed, caller=caller)


# ---------------------------------------------------------------------------
# Deliberately wrong appliers (harness self-tests)
# ---------------------------------------------------------------------------


def _upper_paths(layout):
    for dirpath, dirnames, filenames in os.walk(layout.upper):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            yield p, os.fsdecode(os.path.relpath(p, layout.upper))


def mutate_drop_new_whiteouts(layout, ops, outcomes, before):
    """An applier that forgets whiteouts: remove every whiteout the sequence created."""
    n = 0
    for p, rel in list(_upper_paths(layout)):
        st = os.lstat(p)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and before.get(rel, {}).get("type") != "whiteout":
            os.unlink(p)
            n += 1
    return n


def mutate_drop_opaque(layout, ops, outcomes, before):
    """An applier that never marks directories opaque (mkdir over a whiteout)."""
    n = 0
    for p, rel in list(_upper_paths(layout)):
        if "trusted.overlay.opaque" in before.get(rel, {}).get("xattrs", {}):
            continue
        try:
            os.removexattr(p, b"trusted.overlay.opaque", follow_symlinks=False)
            n += 1
        except OSError:
            pass
    return n


def mutate_copyup_mtime(layout, ops, outcomes, before):
    """An applier whose copy-up does not keep mtimes: touch every regular file new in
    the upper whose mtime is not already "now"."""
    n = 0
    now = time.time_ns()
    for p, rel in list(_upper_paths(layout)):
        st = os.lstat(p)
        if rel not in before and stat.S_ISREG(st.st_mode) and st.st_mtime_ns < now - 600 * 10**9:
            os.utime(p, follow_symlinks=False)
            n += 1
    return n


def mutate_errno(layout, ops, outcomes, before):
    """An applier that reports the wrong errno for the first failing operation."""
    for i, o in enumerate(outcomes):
        if not o.startswith("ok"):
            outcomes[i] = "EIO" if o != "EIO" else "EPERM"
            return 1
    return 0


MUTATORS = {
    "drop_new_whiteouts": mutate_drop_new_whiteouts,
    "drop_opaque": mutate_drop_opaque,
    "copyup_mtime": mutate_copyup_mtime,
    "errno": mutate_errno,
}


# ---------------------------------------------------------------------------
# Hand-written stacks
# ---------------------------------------------------------------------------


def make_layout(root, spec: dict, *, nlowers=None) -> Layout:
    """Hand-written layers under root/orig: *spec* maps ``"upper"``, ``"l1"``
    (top lower), ``"l2"``... to ``stackgen.populate`` entries.  Missing layers
    are created empty; *nlowers* defaults to the highest ``lN`` in *spec* (at least 1).
    """
    orig = os.path.join(os.fsdecode(root), "orig")
    if nlowers is None:
        nlowers = max([int(k[1:]) for k in spec if k.startswith("l")] + [1])
    full = {"upper": [], **{"l%d" % i: [] for i in range(1, nlowers + 1)}}
    for k, v in spec.items():
        full[k] = list(v)
    stackgen.populate(orig, full)
    # Deterministic, old timestamps (never "fresh"), children before parents.
    paths = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(orig)):
        paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
        paths.append(dirpath)
    for k, p in enumerate(sorted(set(paths), key=lambda p: (-p.count(b"/"), p))):
        t = stackgen.MTIME_BASE + k * stackgen.MTIME_STEP
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.mkdir(os.path.join(orig, "work"))
    return Layout(orig, [os.path.join(orig, "l%d" % i) for i in range(1, nlowers + 1)],
                  os.path.join(orig, "upper"), os.path.join(orig, "work"))
