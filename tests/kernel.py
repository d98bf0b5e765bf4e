"""Kernel parity harness: the view of a layer stack through a real overlay mount.

Three pieces:

* :func:`kernel_view` mounts the stack with the kernel's overlayfs in a private
  mount namespace (a child ``unshare -m --propagation private python3``),
  walks the mount and returns a JSON-able *view*.
* :func:`stack_view` collects the same view through a Stack-like object
  (``overlayfs.Stack`` or ``ReferenceStack``).
* :func:`compare_views` diffs two views and returns readable lines;
  :func:`assert_views_equal` raises with them.

A view is ``{"paths": {path: record}, "extra": {path: record}}``.  ``paths``
holds every union path reached by walking real directories from the root
(symlinks are recorded, not followed); ``extra`` holds caller-chosen paths
(missing names, paths through files, ``..`` components, trailing slashes...).
Paths are relative to the union root with no leading slash ("" is the root)
and are stored as ``os.fsdecode`` strings, so undecodable bytes survive the
JSON round trip as surrogate escapes.  A record holds:

``lstat`` / ``stat``
    ``{"type", "mode", "uid", "gid", "size", "nlink", "blocks", "mtime_ns"}``
    (plus ``rdev`` for devices), or ``{"errno": "ENOENT"}``.
``ino``
    which layer object's inode number lstat reports, as ``"<layer>:<path>"``
    (see :func:`layer_inodes`), so two identical builds can be compared.
``sha256``
    hex digest of the content for paths that ``stat`` says are regular files
    (read through a symlink-following open), or an errno name.
``readlink``
    the target of a symlink (fsdecoded) or an errno name.
``xattrs``
    ``{name: value-hex}`` of every xattr listed for the entry itself (not
    following symlinks); a value that cannot be read is an errno name.
``listing`` / ``listing_failed``
    the names of a directory in readdir order (the kernel's raw listing), and
    those of them whose lstat fails, with the errno (see :func:`compare_views`).

Inside the kernel child the walk runs in a ``chroot`` to the mount point, so
absolute symlinks and ``..`` resolve inside the union root exactly as the
Stack API promises (``openat2(RESOLVE_IN_ROOT)`` semantics).  Lookups change
the overlay's state (``origin``/``impure`` xattrs written into the upper,
lazily set per-layer xattr-whiteout flags, lazy data-layer lookups), so the
child walks twice and records the second, steady-state walk.

This module is stdlib-only at import time so that the child process can load
it by path; pytest is imported lazily by :func:`skip_unless_mountable`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback

__all__ = [
    "MountError",
    "assert_views_equal",
    "can_mount",
    "check_stack_api",
    "collect_view",
    "compare_views",
    "escape_layer",
    "kernel_redirect_follow",
    "kernel_view",
    "layer_inodes",
    "mount_data",
    "run_in_mount",
    "skip_unless_mountable",
    "stack_view",
    "stat_record",
]

#: The kernel copies at most one page of mount data and forces a NUL at the end.
MOUNT_DATA_MAX = 4095

#: Safety valve: a view never holds more records than this.
MAX_RECORDS = 200_000

_TYPE_NAMES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "reg",
    stat.S_IFLNK: "lnk",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}

_CHILD_CODE = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_ovl_kernel_child", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.exit(mod._child_main())
"""


class MountError(RuntimeError):
    """The kernel refused the overlay mount (or the namespace could not be set up)."""


# ---------------------------------------------------------------------------
# Records: one path's observable state
# ---------------------------------------------------------------------------


def errname(err: OSError) -> str:
    """The errno name of an OSError ("ENOENT"), as the views record errors."""
    return errno.errorcode.get(err.errno, str(err.errno))


def stat_record(st: os.stat_result) -> dict:
    """The compared fields of a stat result."""
    fmt = stat.S_IFMT(st.st_mode)
    rec = {
        "type": _TYPE_NAMES.get(fmt, oct(fmt)),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "nlink": st.st_nlink,
        "blocks": st.st_blocks,
        "mtime_ns": st.st_mtime_ns,
    }
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        rec["rdev"] = st.st_rdev
    return rec


class _OsAdapter:
    """Filesystem access for the kernel child: the union root is "/" (chroot)."""

    @staticmethod
    def _p(path: bytes) -> bytes:
        return b"/" + path

    def lstat(self, path):
        return os.lstat(self._p(path))

    def stat(self, path):
        return os.stat(self._p(path))

    def read(self, path):
        with open(self._p(path), "rb") as f:
            return f.read()

    def readlink(self, path):
        return os.readlink(self._p(path))

    def listxattr(self, path):
        return os.listxattr(self._p(path), follow_symlinks=False)

    def getxattr(self, path, name):
        return os.getxattr(self._p(path), name, follow_symlinks=False)

    def listdir(self, path):
        return os.listdir(self._p(path))


class _StackAdapter:
    """Filesystem access through the Stack API, with bytes union paths."""

    def __init__(self, stack):
        self.stack = stack

    def lstat(self, path):
        return self.stack.lstat(path)

    def stat(self, path):
        return self.stack.stat(path)

    def read(self, path):
        with self.stack.open(path, "rb") as f:
            return f.read()

    def readlink(self, path):
        return self.stack.readlink(path)

    def listxattr(self, path):
        return self.stack.listxattr(path, follow_symlinks=False)

    def getxattr(self, path, name):
        return self.stack.getxattr(path, name, follow_symlinks=False)

    def listdir(self, path):
        return self.stack.listdir(path)


def layer_inodes(layers) -> dict:
    """Map every inode number found in the layer trees to a build-independent label.

    The label is ``"<layer index>:<path in the layer>"`` of the first object
    (by layer index, then path) with that inode, so views of two identical
    builds can compare which real object a union path reports the inode of.
    ``layers`` is indexed like ``Stack.layers`` (None entries are skipped).
    """
    labels: dict = {}
    for index, layer in enumerate(layers):
        if layer is None:
            continue
        root = os.fsencode(layer)
        todo = [b""]
        while todo:
            rel = todo.pop()
            path = root + b"/" + rel if rel else root
            try:
                st = os.lstat(path)
            except OSError:
                continue
            label = "%d:%s" % (index, os.fsdecode(rel))
            if st.st_ino not in labels or labels[st.st_ino] > label:
                labels[st.st_ino] = label
            if stat.S_ISDIR(st.st_mode):
                try:
                    names = os.listdir(path)
                except OSError:
                    continue
                todo.extend(rel + b"/" + n if rel else n for n in names)
    return labels


def _record(fs, path: bytes, inodes=None) -> dict:
    """Everything observable about one union path."""
    rec: dict = {}
    try:
        lst = fs.lstat(path)
    except OSError as e:
        rec["lstat"] = {"errno": errname(e)}
    else:
        rec["lstat"] = stat_record(lst)
        if inodes is not None:
            rec["ino"] = inodes.get(lst.st_ino, "unknown inode")
    try:
        st = fs.stat(path)
    except OSError as e:
        rec["stat"] = {"errno": errname(e)}
        st = None
    else:
        rec["stat"] = stat_record(st)
    if "errno" in rec["lstat"]:
        return rec
    if st is not None and stat.S_ISREG(st.st_mode):
        try:
            rec["sha256"] = hashlib.sha256(fs.read(path)).hexdigest()
        except OSError as e:
            rec["sha256"] = errname(e)
        # The kernel looks up the data of a metacopy file in a data-only layer
        # lazily, at the first data access, and until then guesses st_blocks
        # from st_size.  Record the state after the read.
        for key, func in (("lstat", fs.lstat), ("stat", fs.stat)):
            try:
                rec[key] = stat_record(func(path))
            except OSError as e:
                rec[key] = {"errno": errname(e)}
    if stat.S_ISLNK(lst.st_mode):
        try:
            rec["readlink"] = os.fsdecode(fs.readlink(path))
        except OSError as e:
            rec["readlink"] = errname(e)
    try:
        xattrs = {}
        for name in sorted(fs.listxattr(path)):
            try:
                xattrs[name] = fs.getxattr(path, name).hex()
            except OSError as e:
                xattrs[name] = errname(e)
        rec["xattrs"] = xattrs
    except OSError as e:
        rec["xattrs"] = errname(e)
    if stat.S_ISDIR(lst.st_mode):
        try:
            names = fs.listdir(path)
        except OSError as e:
            rec["listing"] = errname(e)
        else:
            rec["listing"] = [os.fsdecode(n) for n in names]
            # Listed names that cannot be looked up (see compare_views).
            failed = {}
            for name in names:
                try:
                    fs.lstat(_join(path, name))
                except OSError as e:
                    failed[os.fsdecode(name)] = errname(e)
            rec["listing_failed"] = failed
    return rec


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def collect_view(fs, paths_extra=(), inodes=None) -> dict:
    """Walk the union from its root through *fs* (an adapter) and record every path.

    Every listed name gets a record; only real directories (by lstat) are
    listed, so the walk never follows symlinks.  With *inodes* (from
    :func:`layer_inodes`) records name the layer object whose inode lstat reports.
    """
    paths: dict = {}
    todo = [b""]
    while todo:
        path = todo.pop()
        rec = _record(fs, path, inodes)
        paths[os.fsdecode(path)] = rec
        if len(paths) > MAX_RECORDS:
            raise RuntimeError("view too large (%d records)" % len(paths))
        listing = rec.get("listing")
        if isinstance(listing, list):
            # Push in reverse so the walk is depth-first in listing order.
            for name in reversed(listing):
                todo.append(_join(path, os.fsencode(name)))
    extra = {}
    for p in paths_extra:
        p = os.fsencode(p)
        extra[os.fsdecode(p)] = _record(fs, p, inodes)
    return {"paths": paths, "extra": extra}


# ---------------------------------------------------------------------------
# The kernel side
# ---------------------------------------------------------------------------


def escape_layer(path) -> bytes:
    """Escape a layer path for the legacy ``lowerdir=``/``upperdir=`` syntax."""
    path = os.fsencode(path)
    out = bytearray()
    for byte in path:
        if byte in b"\\:,":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def mount_data(lowers, upper=None, work=None, *, data_layers=(), options=(), base=None) -> bytes:
    """Build the overlay mount data string, with paths relative to *base* if given.

    ``lowers`` are top-most first; data-only layers are appended with ``::``.
    """

    def rel(p):
        p = os.fsencode(os.path.abspath(os.fsencode(p)))
        return os.path.relpath(p, os.fsencode(base)) if base is not None else p

    lower = b":".join(escape_layer(rel(p)) for p in lowers)
    for d in data_layers:
        lower += b"::" + escape_layer(rel(d))
    parts = [b"lowerdir=" + lower]
    if upper is not None:
        parts.append(b"upperdir=" + escape_layer(rel(upper)))
        parts.append(b"workdir=" + escape_layer(rel(work)))
    parts.extend(os.fsencode(o) for o in options)
    return b",".join(parts)


def kernel_view(lowers, upper=None, work=None, *, options=(), paths_extra=(), data_layers=()) -> dict:
    """Mount the stack with the kernel and return its view (see the module docstring).

    The mount lives in a private mount namespace of a child process and is
    unmounted before the child exits (see :func:`run_in_mount`).  With an
    upper, *work* defaults to a fresh directory next to it.  Raises
    :class:`MountError` if the kernel refuses the mount.

    Note: a mount with an upper writes ``origin``/``impure`` xattrs into the
    upper at lookup time, so collect Stack views of the same directories first.
    """
    made_work = None
    if upper is not None and work is None:
        upper = os.path.abspath(os.fsencode(upper))
        made_work = work = os.fsencode(tempfile.mkdtemp(prefix=".work-", dir=os.path.dirname(upper)))
    # Indexed like Stack.layers: upper (or None), lowers, data layers.
    layers = [upper] + list(lowers) + list(data_layers)
    inodes = layer_inodes([None if p is None else os.fsencode(p) for p in layers])
    args = {"paths_extra": [os.fsencode(p) for p in paths_extra], "inodes": {str(k): v for k, v in inodes.items()}}
    try:
        return run_in_mount(_walk_mount, args, lowers, upper, work, options=options, data_layers=data_layers,
                            what="kernel view")
    finally:
        if made_work is not None:
            shutil.rmtree(made_work, ignore_errors=True)


def _walk_mount(root: bytes, args: dict) -> dict:
    """Worker of :func:`kernel_view` (chrooted into the mount): the view of the union."""
    extra = args["paths_extra"]
    inodes = {int(k): v for k, v in args["inodes"].items()}
    # Lookups change the overlay's state (origin/impure xattrs on the upper,
    # per-layer xwhiteout flags, lazy data lookups), so walk once to reach
    # the steady state and record the second walk.
    collect_view(_OsAdapter(), extra)
    return collect_view(_OsAdapter(), extra, inodes)


def mount_here(data: bytes, mnt: bytes, cwd=None) -> str | None:
    """mount(8) an overlay with option string *data* at *mnt*, in this process's
    (private) mount namespace.  None, or why it failed."""
    res = subprocess.run([b"mount", b"-n", b"-t", b"overlay", b"overlay", b"-o", data, mnt],
                         cwd=cwd, capture_output=True)
    return None if res.returncode == 0 else res.stderr.decode(errors="replace").strip()


# ---------------------------------------------------------------------------
# The mount-and-run child
# ---------------------------------------------------------------------------


def encode_json(obj):
    """*obj* with every bytes value replaced by ``{"__b": hex}`` (see :func:`decode_json`)."""
    if isinstance(obj, bytes):
        return {"__b": obj.hex()}
    if isinstance(obj, dict):
        return {k: encode_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_json(v) for v in obj]
    return obj


def decode_json(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__b"}:
            return bytes.fromhex(obj["__b"])
        return {k: decode_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_json(v) for v in obj]
    return obj


def run_in_mount(worker, args, lowers, upper=None, work=None, *, options=(), data_layers=(), chroot=True,
                 timeout=600, what=None):
    """Mount the stack with the kernel in a private mount namespace and return
    ``worker(root, args)`` computed on the mount.

    A child ``unshare -m --propagation private python3`` mounts the stack
    (paths in the mount data are relative to the common parent of all layers,
    the child's cwd, which keeps 500 layers well under the one-page limit),
    forks a worker - chrooted into the mount point if *chroot* (*root* is
    then ``b"/"``), else with *root* the mount point's absolute path - and
    unmounts when the worker is done.  *worker* must be a module-level
    function of a stdlib-only module (the child loads its file by path);
    *args* (bytes allowed, see :func:`encode_json`) and the result cross a
    JSON pipe.  *lowers* are top-most first; *data_layers* are appended with
    ``::``.  Raises :class:`MountError` if the mount (or the worker) fails.
    """
    lowers = [os.path.abspath(os.fsencode(p)) for p in lowers]
    data_layers = [os.path.abspath(os.fsencode(p)) for p in data_layers]
    if upper is not None:
        upper = os.path.abspath(os.fsencode(upper))
        work = os.path.abspath(os.fsencode(work))
    everything = lowers + data_layers + ([upper, work] if upper is not None else [])
    base = os.path.commonpath(everything)
    if base in everything:
        base = os.path.dirname(base)
    data = mount_data(lowers, upper, work, data_layers=data_layers, options=options, base=base)
    if len(data) > MOUNT_DATA_MAX:
        raise MountError("mount data is %d bytes, over the %d-byte page limit" % (len(data), MOUNT_DATA_MAX))
    mnt = tempfile.mkdtemp(prefix="ovl-mnt-")
    job = {"base": os.fsdecode(base), "mnt": mnt, "data": os.fsdecode(data), "chroot": chroot,
           "module": os.path.abspath(worker.__code__.co_filename), "worker": worker.__name__,
           "args": encode_json(args)}
    try:
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-c", _CHILD_CODE, os.path.abspath(__file__)],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=timeout,
        )
    finally:
        try:
            os.rmdir(mnt)
        except OSError:
            pass
    if proc.returncode != 0:
        raise MountError("%s failed (rc=%d): %s" % (what or worker.__name__, proc.returncode,
                                                    proc.stderr.decode(errors="replace").strip()))
    return json.loads(proc.stdout)


def _load_worker(module_path: str, name: str):
    """The function *name* of the module file *module_path* (this module's own, or loaded by path)."""
    if os.path.abspath(module_path) == os.path.abspath(__file__):
        return globals()[name]
    here = os.path.dirname(module_path)
    if here not in sys.path:  # its sibling imports (kernel, stackgen, dumps)
        sys.path.insert(0, here)
    stem = os.path.splitext(os.path.basename(module_path))[0]
    spec = importlib.util.spec_from_file_location("_ovl_worker_" + stem, module_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _child_main() -> int:
    """Entry point of the namespace child: mount, fork the (chrooted) worker, unmount."""
    job = json.loads(sys.stdin.buffer.read())
    worker = _load_worker(job["module"], job["worker"])
    args = decode_json(job["args"])
    os.chdir(os.fsencode(job["base"]))
    mnt = os.fsencode(job["mnt"])
    failed = mount_here(os.fsencode(job["data"]), mnt)
    if failed is not None:
        sys.stderr.write("mount failed: %s\n" % failed)
        return 2
    try:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the worker: confined to the union root if chrooted
            status = 1
            try:
                if job["chroot"]:
                    os.chroot(mnt)
                    os.chdir("/")
                    root = b"/"
                else:
                    root = mnt
                _write_all(1, json.dumps(worker(root, args)).encode())
                status = 0
            except BaseException:  # report anything, never return into the parent's code
                os.write(2, ("worker %s failed: %s" % (job["worker"], traceback.format_exc())).encode())
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        res = subprocess.run([b"umount", b"-n", mnt], capture_output=True)
        if res.returncode != 0:  # never leave a mount behind (the namespace dies with us anyway)
            subprocess.run([b"umount", b"-n", b"-l", mnt], check=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@functools.cache
def can_mount() -> tuple[bool, str]:
    """Can this process mount overlays in a private namespace?  Returns (ok, reason)."""
    if sys.platform != "linux":
        return False, "overlay mounts need Linux"
    if os.geteuid() != 0:
        return False, "overlay parity tests need root (CAP_SYS_ADMIN) to mount"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False, "the unshare and mount commands (util-linux) are needed"
    with tempfile.TemporaryDirectory(prefix="ovl-probe-") as tmp:
        l1 = os.path.join(tmp, "l1")
        l2 = os.path.join(tmp, "l2")
        os.mkdir(l1)
        os.mkdir(l2)
        with open(os.path.join(l2, "probe"), "w") as f:
            f.write("ok")
        try:
            view = kernel_view([l1, l2])
        except (MountError, OSError, subprocess.SubprocessError) as e:
            return False, "cannot mount overlay in a private namespace: %s" % e
        if view["paths"].get("probe", {}).get("lstat", {}).get("type") != "reg":
            return False, "overlay probe mount did not show the lower file"
    return True, ""


def skip_or_fail(reason: str) -> None:
    """Skip the calling test for *reason*, or fail it under
    ``OVERLAYFS_REQUIRE_KERNEL=1``, so CI cannot silently lose coverage."""
    import pytest

    if os.environ.get("OVERLAYFS_REQUIRE_KERNEL") == "1":
        pytest.fail("OVERLAYFS_REQUIRE_KERNEL=1 but " + reason, pytrace=False)
    pytest.skip(reason)


def skip_unless_mountable() -> None:
    """Skip the calling test if overlays cannot be mounted here (see skip_or_fail)."""
    ok, reason = can_mount()
    if not ok:
        skip_or_fail(reason)


def kernel_redirect_follow() -> bool:
    """Does this kernel follow directory redirects by default (``redirect_always_follow``)?"""
    try:
        with open("/sys/module/overlay/parameters/redirect_always_follow") as f:
            return f.read().strip() == "Y"
    except OSError:
        return True


# ---------------------------------------------------------------------------
# The Stack side
# ---------------------------------------------------------------------------


def stack_view(stack, paths_extra=()) -> dict:
    """The view of *stack* (any object with the Stack API), collected with bytes paths."""
    return collect_view(_StackAdapter(stack), [os.fsencode(p) for p in paths_extra], layer_inodes(stack.layers))


def _outcome(func, *args, **kwargs):
    """The result of a call, or the errno name of the OSError it raised."""
    try:
        return func(*args, **kwargs)
    except OSError as e:
        return errname(e)


def _entry_test(stat_rec: dict, want_type: str):
    """What os.DirEntry.is_dir()/is_file() give for a target with this stat record."""
    err = stat_rec.get("errno")
    if err == "ENOENT":
        return False  # a dangling symlink: False, as os.DirEntry does
    if err is not None:
        return err  # any other error is raised
    return stat_rec["type"] == want_type


def check_stack_api(stack, view) -> list[str]:
    """Cross-check the rest of the Stack API against *view* (from :func:`stack_view`).

    Checks ``walk``, ``scandir`` entries, ``exists``/``lexists``/``isdir``/
    ``isfile``/``islink``, ``resolve``, ``layer_of`` and str-typed ``listdir``
    for every path of the view.  Errors raised by the Stack are reported, not
    propagated.  Returns a list of problems (empty if none).
    """
    problems: list[str] = []
    paths = view["paths"]

    def broken(rec) -> bool:
        """The name exists but its lookup fails (EINVAL, EIO, EPERM...)."""
        return rec["lstat"].get("errno") not in (None, "ENOENT", "ENOTDIR", "ELOOP")

    def ok(rec, key="lstat"):
        return "errno" not in rec[key]

    def stat_outcome(func, *args, **kwargs):
        got = _outcome(func, *args, **kwargs)
        return got if isinstance(got, str) else stat_record(got)

    # walk(): same directories, same names, dirnames = entries that are dirs (following symlinks).
    seen_dirs = set()
    try:
        walked = list(stack.walk(b""))
    except OSError as e:
        walked = []
        problems.append("walk raised %r" % (e,))
    for dirpath, dirnames, filenames in walked:
        key = os.fsdecode(dirpath)
        seen_dirs.add(key)
        rec = paths.get(key)
        if rec is None or not isinstance(rec.get("listing"), list):
            problems.append("walk: unexpected directory %r" % key)
            continue
        names = [os.fsdecode(n) for n in dirnames + filenames]
        if sorted(names) != sorted(rec["listing"]):
            problems.append("walk %r: names %r != listing %r" % (key, sorted(names), sorted(rec["listing"])))
        for n in dirnames:
            child = paths.get(os.fsdecode(_join(dirpath, n)))
            # A broken directory (its lookup fails with an error other than
            # ENOENT) is listed like the kernel does, and walk reports it by
            # its type in the listing.
            if child is not None and child["stat"].get("type") != "dir" and not broken(child):
                problems.append("walk %r: %r in dirnames but stat is %r" % (key, n, child["stat"]))
    want_dirs = {p for p, r in paths.items() if r["lstat"].get("type") == "dir"}
    if walked and seen_dirs != want_dirs:
        problems.append("walk: visited %r but not %r" % (sorted(seen_dirs - want_dirs), sorted(want_dirs - seen_dirs)))

    for key, rec in paths.items():
        bpath = os.fsencode(key)
        lexists = ok(rec)
        exists = ok(rec, "stat")
        checks = {
            "lexists": (stack.lexists, lexists),
            "exists": (stack.exists, exists),
            "isdir": (stack.isdir, exists and rec["stat"]["type"] == "dir"),
            "isfile": (stack.isfile, exists and rec["stat"]["type"] == "reg"),
            "islink": (stack.islink, lexists and rec["lstat"]["type"] == "lnk"),
        }
        for name, (func, want) in checks.items():
            got = _outcome(func, bpath)
            if got != want:
                problems.append("%s(%r) = %r, expected %r" % (name, key, got, want))
        resolved = _outcome(stack.resolve, bpath)
        if lexists:
            layer = _outcome(stack.layer_of, bpath)
            if resolved is None or isinstance(resolved, str) or isinstance(layer, str):
                problems.append("resolve(%r) = %r, layer_of = %r but lstat succeeds" % (key, resolved, layer))
            else:
                host = stack.layers[layer]
                if host is None or not os.fsencode(resolved).startswith(os.fsencode(host)):
                    problems.append("resolve(%r) = %r is not in layer %d (%r)" % (key, resolved, layer, host))
                else:
                    real = stat_outcome(os.lstat, resolved)
                    if isinstance(real, str) or real["type"] != rec["lstat"]["type"]:
                        problems.append("resolve(%r) = %r: the host object is %r" % (key, resolved, real))
        else:
            err = rec["lstat"]["errno"]
            want = None if err in ("ENOENT", "ENOTDIR") else err
            if resolved != want:
                problems.append("resolve(%r) = %r but lstat fails with %s" % (key, resolved, err))

        listing = rec.get("listing")
        if not isinstance(listing, list):
            continue
        # listdir with a str path gives str names, same order.
        str_names = _outcome(stack.listdir, key)
        if str_names != listing:
            problems.append("listdir(str %r) = %r != %r" % (key, str_names, listing))
        # scandir: names in listing order, entry methods agree with the records.
        try:
            entries = list(stack.scandir(bpath))
        except OSError as e:
            problems.append("scandir(%r) raised %r" % (key, e))
            continue
        if [os.fsdecode(e.name) for e in entries] != listing:
            problems.append("scandir(%r) names differ from listdir" % key)
        for e in entries:
            child_key = os.fsdecode(_join(bpath, e.name))
            child = paths.get(child_key)
            if child is None:
                continue
            want_path = os.path.join(bpath, e.name)
            if e.path != want_path:
                problems.append("scandir entry %r: path %r != %r" % (child_key, e.path, want_path))
            if not ok(child):
                if not broken(child) and (_outcome(e.is_dir) is True or e.is_symlink()):
                    problems.append("scandir entry %r: a name that does not exist reports dir/symlink" % child_key)
                continue
            ltype = child["lstat"]["type"]
            got = (e.is_symlink(), _outcome(e.is_dir), _outcome(e.is_file), _outcome(e.is_dir, follow_symlinks=False))
            want = (ltype == "lnk", _entry_test(child["stat"], "dir"), _entry_test(child["stat"], "reg"),
                    ltype == "dir")
            if got != want:
                problems.append("scandir entry %r: (is_symlink, is_dir, is_file, is_dir(nofollow)) %r != %r"
                                % (child_key, got, want))
            if stat_outcome(e.stat, follow_symlinks=False) != child["lstat"]:
                problems.append("scandir entry %r: stat(follow_symlinks=False) differs from lstat" % child_key)
            layer = _outcome(stack.layer_of, _join(bpath, e.name))
            if e.layer != layer:
                problems.append("scandir entry %r: layer %r != layer_of %r" % (child_key, e.layer, layer))
            # inode() is the listing's d_ino, like the kernel's readdir: the
            # supplying layer's inode, or the overlay's st_ino.
            child_path = _join(bpath, e.name)
            ino = _outcome(lambda p=child_path: stack.lstat(p).st_ino)
            host = _outcome(stack.resolve, child_path)
            native = _outcome(lambda h=host: os.lstat(h).st_ino) if isinstance(host, bytes) else None
            if _outcome(e.inode) not in (ino, native):
                problems.append("scandir entry %r: inode() is neither lstat().st_ino nor the layer's" % child_key)
    return problems


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

#: Fields that can be dropped from the comparison with ``ignore=``.
IGNORABLE = {"dir_size", "dir_blocks", "mtime_ns", "blocks", "nlink", "listing_order", "ino"}


def _norm_stat(rec: dict, ignore) -> dict:
    if "errno" in rec:
        return rec
    rec = dict(rec)
    for field in ("mtime_ns", "blocks", "nlink"):
        if field in ignore:
            rec.pop(field, None)
    if rec["type"] == "dir":
        if "dir_size" in ignore:
            rec.pop("size", None)
        if "dir_blocks" in ignore:
            rec.pop("blocks", None)
    return rec


def _shortpath(path: str) -> str:
    """A path for messages: components over 40 characters are abbreviated."""
    parts = [c if len(c) <= 40 else "%s...(%d chars)" % (c[:12], len(c)) for c in path.split("/")]
    return repr("/".join(parts))


def _short(value, limit=200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compare_records(where, path, krec, srec, ignore, out):
    for key in ("lstat", "stat"):
        k, s = _norm_stat(krec[key], ignore), _norm_stat(srec[key], ignore)
        if k != s:
            fields = sorted(set(k) | set(s))
            delta = {f: (k.get(f), s.get(f)) for f in fields if k.get(f) != s.get(f)}
            out.append("%s %s: %s differs {field: (kernel, stack)}: %s"
                       % (where, _shortpath(path), key, _short(delta, 400)))
    for key in ("sha256", "readlink", "xattrs", "ino"):
        if key in ignore:
            continue
        if krec.get(key) != srec.get(key):
            out.append("%s %s: %s kernel=%s stack=%s" % (where, _shortpath(path), key, _short(krec.get(key)),
                                                         _short(srec.get(key))))
    klist, slist = krec.get("listing"), srec.get("listing")
    if not isinstance(klist, list) or not isinstance(slist, list):
        if klist != slist:
            out.append("%s %s: listing kernel=%s stack=%s" % (where, _shortpath(path), _short(klist), _short(slist)))
        return
    # The kernel lists names whose lookup fails.  Those that fail with ENOENT
    # are whiteouts (in plain dirs, unmarked xattr whiteouts): the Stack may
    # leave them out.  Those that fail with another error exist but are
    # broken (an invalid redirect, a metacopy without data...): the Stack
    # lists them too, as the kernel does, so the damage is not hidden.
    # Everything else must match, in order.
    kfailed = krec.get("listing_failed", {})
    sset = set(slist)
    expected = [n for n in klist if n in sset or kfailed.get(n, "ENOENT") != "ENOENT" or n not in kfailed]
    if "listing_order" in ignore:
        expected, slist = sorted(expected), sorted(slist)
    if expected != slist:
        eset = set(expected)
        only_k = [n for n in expected if n not in sset]
        only_s = [n for n in slist if n not in eset]
        if only_k or only_s:
            out.append("%s %s: listing kernel-only %s stack-only %s" % (where, _shortpath(path), _short(only_k),
                                                                       _short(only_s)))
        else:
            out.append("%s %s: listing order kernel=%s stack=%s" % (where, _shortpath(path), _short(expected),
                                                                   _short(slist)))
    # The Stack lists a name it cannot lstat only where the kernel lists it
    # too and fails the same way.
    sfailed = srec.get("listing_failed", {})
    for name, err in sfailed.items():
        if kfailed.get(name) != err:
            out.append("%s %s: stack lists %s whose lstat fails with %s (kernel: %s)"
                       % (where, _shortpath(path), _shortpath(name), err, kfailed.get(name, "success")))
    for name, err in kfailed.items():
        if name in sset and name not in sfailed:
            out.append("%s %s: both list %s; kernel lstat gives %s, stack success"
                       % (where, _shortpath(path), _shortpath(name), err))


def compare_views(kernel: dict, stack: dict, *, ignore=()) -> list[str]:
    """Differences between a kernel view and a Stack view, as readable lines.

    Listings: the kernel listing minus names whose kernel lstat fails with
    ENOENT (whiteouts) must equal the Stack listing, in order; the Stack may
    keep such a name, and keeps names that fail with other errors (broken
    redirects, metacopy trouble) with the kernel's errno.  Paths that only the
    kernel reached are ignored when the kernel cannot lstat them either.
    *ignore* drops fields from the comparison (see :data:`IGNORABLE`).
    """
    ignore = set(ignore)
    bad = ignore - IGNORABLE
    if bad:
        raise ValueError("unknown ignore fields: %r" % sorted(bad))
    out: list[str] = []
    for section in ("paths", "extra"):
        kpaths, spaths = kernel[section], stack[section]
        for path in sorted(set(kpaths) | set(spaths)):
            krec, srec = kpaths.get(path), spaths.get(path)
            if srec is None:
                if section == "extra" or "errno" not in krec["lstat"]:
                    out.append("%s %s: only in the kernel view: %s" % (section, _shortpath(path), _short(krec)))
                continue
            if krec is None:
                out.append("%s %s: only in the stack view: %s" % (section, _shortpath(path), _short(srec)))
                continue
            _compare_records(section, path, krec, srec, ignore, out)
    return out


def assert_views_equal(kernel: dict, stack: dict, *, ignore=(), limit=40, context="") -> None:
    """Raise AssertionError with a readable diff if the views differ."""
    diffs = compare_views(kernel, stack, ignore=set(ignore))
    if diffs:
        where = " (%s)" % context if context else ""
        head = "%d difference(s) between kernel and stack views%s:" % (len(diffs), where)
        lines = diffs[:limit]
        if len(diffs) > limit:
            lines.append("... and %d more" % (len(diffs) - limit))
        raise AssertionError("\n".join([head] + ["  " + line for line in lines]))
