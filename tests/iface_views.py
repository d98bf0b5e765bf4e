"""Views of a union through fsspec and pathlib-style APIs, for kernel parity.

The same functions collect a JSON-able view through ``LocalFileSystem`` /
``pathlib.Path`` inside a kernel overlay mount (run by ``kernel.run_in_mount``
as chrooted workers, where the union root is "/") and through
``overlayfs.fsspec.OverlayFileSystem`` / ``overlayfs.path.StackPath`` over a
Stack of the same layers, so the two views must be equal.

Loaded by path in the mount child: imports only the stdlib and fsspec, all at
module level (nothing can be imported after the chroot).
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import time

from fsspec.implementations.local import LocalFileSystem

#: fsspec glob patterns (absolute: both filesystems name paths from "/").
FS_GLOBS = ["/*", "/*/*", "/**", "/**/*", "/**/a*", "/*/[a-d]*", "/**/.*", "/?"]
#: pathlib glob patterns (relative to the root), rglob patterns.
PATH_GLOBS = ["*", "*/*", "**", "**/*", "**/a*", "*/[a-d]*", "**/.*", "?", "*/", "**/", "a/**/*",
              "d/*", "x y/*"]
PATH_RGLOBS = ["*", "a*", "*.?", "[!a]*"]
#: cat_file ranges.
RANGES = [(0, 5), (3, None), (-3, None), (2, -1), (None, 10), (100, 4100)]


def errname(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "RecursionError"
    if isinstance(e, RuntimeError):  # pathlib 3.11: "Symlink loop from ..."
        return "ELOOP"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def diff_views(kview, sview, limit=20) -> list[str]:
    """Readable differences between two nested views.  A "hidden" list
    (names listed but not found) of the Stack side may be a subset of the
    kernel's."""
    out: list[str] = []

    def walk(where, a, b):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a:
                    out.append(f"{where}/{k!r}: only overlay: {str(b[k])[:300]}")
                elif k not in b:
                    out.append(f"{where}/{k!r}: only kernel: {str(a[k])[:300]}")
                elif k == "hidden" and isinstance(a[k], list) and isinstance(b[k], list):
                    if not set(b[k]) <= set(a[k]):
                        out.append(f"{where}/hidden: overlay hides more: {sorted(set(b[k]) - set(a[k]))}")
                else:
                    walk(f"{where}/{k!r}", a[k], b[k])
        elif a != b:
            out.append(f"{where}: kernel {str(a)[:300]} != overlay {str(b)[:300]}")

    walk("", kview, sview)
    return out


def outcome(func, *args, **kwargs):
    try:
        return {"ok": func(*args, **kwargs)}
    except (OSError, RuntimeError, ValueError) as e:
        return {"err": errname(e)}


def _info(fs, path):
    return dict(fs.info(path))


def _cat_hash(fs, path):
    return hashlib.sha256(fs.cat_file(path)).hexdigest()


def _cat_range(fs, path, start, end):
    return fs.cat_file(path, start, end).hex()[:64]


def _fs_glob(fs, pattern):
    return sorted(fs.glob(pattern))


def _glob(top, pattern):
    return _split(top.glob(pattern))


def _rglob(top, pattern):
    return _split(top.rglob(pattern))


def _stat_of(p, follow):
    return _stat_rec(p.stat() if follow else p.lstat())


def _resolve(p, strict):
    return str(p.resolve(strict=strict))


def _lexists(p) -> bool:
    try:
        p.lstat()
    except OSError:
        return False
    return True


def _split(paths) -> dict:
    """Sorted str paths that lstat finds ("ok"), and the others ("hidden"):
    the kernel lists char 0:0 whiteouts of a one-layer directory, which a
    Stack hides (README), and pathlib yields what readdir lists."""
    out: dict = {"ok": [], "hidden": []}
    for c in paths:
        out["ok" if _lexists(c) else "hidden"].append(str(c))
    out["ok"].sort()
    out["hidden"].sort()
    return out


def _iterdir(p):
    return _split(p.iterdir())


def _read_bytes(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _read_text(p):
    # utf-8 (loaded at startup: no codec can be imported after the chroot)
    text = p.read_text(encoding="utf-8", errors="surrogateescape")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def fsspec_view(fs, extra) -> dict:
    """What fsspec calls show of the whole union: find, ls (names and
    details) of every directory, info/exists/isdir/isfile/islink/lexists of
    every path and of *extra* paths, cat_file (whole and ranges) of files,
    walk, glob and du."""
    view: dict = {}
    found = fs.find("/", withdirs=True, detail=True)
    view["find"] = sorted(found)
    view["find_detail"] = {k: found[k] for k in sorted(found)}
    view["find_files"] = fs.find("/")
    view["walk"] = [[p, sorted(d), sorted(f)] for p, d, f in fs.walk("/")]
    view["ls"] = {}
    view["ls_detail"] = {}
    paths = sorted(found) + [p for p in extra if p not in found]
    view["ls_hidden"] = {}
    for p in sorted(found):
        if found[p]["type"] == "directory":
            names = outcome(fs.ls, p, detail=False)
            if "ok" in names:
                # The kernel lists char 0:0 whiteouts of a one-layer directory
                # (lookup: ENOENT), which a Stack hides (README): kept apart.
                view["ls_hidden"][p] = [n for n in names["ok"] if not fs.lexists(n)]
                names["ok"] = [n for n in names["ok"] if fs.lexists(n)]
            view["ls"][p] = names
            view["ls_detail"][p] = outcome(fs.ls, p, detail=True)
    view["info"] = {p: outcome(_info, fs, p) for p in paths}
    # LocalFileSystem.lexists does not strip a trailing "/" as its other calls do.
    view["tests"] = {p: [fs.exists(p), fs.isdir(p), fs.isfile(p), fs.islink(p),
                         fs.lexists(fs._strip_protocol(p))] for p in paths}
    view["cat"] = {}
    for p in paths:
        info = view["info"][p].get("ok")
        if info is None or info["type"] != "file":
            continue
        rec = {"all": outcome(_cat_hash, fs, p)}
        for start, end in RANGES:
            # An empty range is b"" for overlay://, a ValueError (or the
            # whole file) for LocalFileSystem: compared where not empty.
            lo, hi, _ = slice(start, end).indices(info["size"])
            if hi > lo:
                rec["%s:%s" % (start, end)] = outcome(_cat_range, fs, p, start, end)
        with fs.open(p, "rb") as f:
            rec["open"] = hashlib.sha256(f.read()).hexdigest()
        view["cat"][p] = rec
    view["glob"] = {g: outcome(_fs_glob, fs, g) for g in FS_GLOBS}
    view["du"] = outcome(fs.du, "/", total=False)
    return view


def _stat_rec(st: os.stat_result) -> dict:
    return {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
            "nlink": st.st_nlink, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "rdev": st.st_rdev}


def _test(method) -> bool:
    try:
        return bool(method())
    except OSError:
        return False


def _readlink(p) -> str:
    # pathlib.Path.readlink gives the target text; StackPath.readlink the
    # path it names from the link's directory (the union is its only root).
    if isinstance(p, pathlib.Path):
        return str(p.parent / os.readlink(p))
    return str(p.readlink())


def path_view(root, paths) -> dict:
    """What pathlib-style calls show for *paths* (relative strings) under
    *root* (pathlib.Path("/") in the mount, Stack.path() outside)."""
    view: dict = {}
    for rel in paths:
        p = root / rel if rel else root
        rec: dict = {
            "str": str(p), "name": p.name, "suffix": p.suffix, "parent": str(p.parent),
            # pathlib 3.11 raises for errors but ENOENT, ENOTDIR, EBADF and
            # ELOOP (ENAMETOOLONG...); StackPath answers False, as os.path
            # does (and pathlib from 3.14): an error counts as False.
            "tests": [_test(p.exists), _test(p.is_dir), _test(p.is_file), _test(p.is_symlink)],
            "lstat": outcome(_stat_of, p, False),
            "stat": outcome(_stat_of, p, True),
            "resolve": outcome(_resolve, p, False),
            "resolve_strict": outcome(_resolve, p, True),
        }
        if rec["tests"][3]:
            rec["readlink"] = outcome(_readlink, p)
        if rec["tests"][1]:
            rec["iterdir"] = outcome(_iterdir, p)
        elif rec["tests"][2]:
            rec["read_bytes"] = outcome(_read_bytes, p)
            rec["read_text"] = outcome(_read_text, p)
        view[rel] = rec
    view["//glob"] = {g: outcome(_glob, root, g) for g in PATH_GLOBS}
    view["//rglob"] = {g: outcome(_rglob, root, g) for g in PATH_RGLOBS}
    return view


# -- kernel workers (kernel.run_in_mount, chrooted: root is b"/") -----------------------


def kernel_fsspec_worker(root: bytes, args: dict) -> dict:
    return fsspec_view(LocalFileSystem(), args["extra"])


def kernel_path_worker(root: bytes, args: dict) -> dict:
    return path_view(pathlib.Path("/"), args["paths"])


def kernel_fsspec_ops_worker(root: bytes, args: dict) -> dict:
    return apply_fs_ops(LocalFileSystem(), args["ops"])


# -- fsspec write operations -------------------------------------------------------------


def apply_fs_op(fs, op) -> str:
    """Apply one operation [method, args, kwargs] through fsspec; "ok", the
    errno name, or the exception's class name (FileExistsError: the
    LocalFileSystem raises it without an errno)."""
    name, args, kwargs = op
    try:
        if name == "append":
            with fs.open(args[0], "ab") as f:
                f.write(args[1].encode())
        elif name == "pipe_file":
            fs.pipe_file(args[0], args[1].encode(), **kwargs)
        else:
            getattr(fs, name)(*args, **kwargs)
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, FileExistsError):
            return errname(e)
        return type(e).__name__
    return "ok"


def apply_fs_ops(fs, ops) -> dict:
    t0 = time.time_ns()
    outcomes = [apply_fs_op(fs, op) for op in ops]
    return {"outcomes": outcomes, "window": [t0, time.time_ns()]}


def normalize_after_writes(view):
    """Drop what two copies of the layers cannot share (inode numbers) and
    what the operations set to "now" (mtime, ctime), and directory sizes
    (ext4 grows a directory as names come and go), in place."""
    if isinstance(view, dict):
        for key in ("mtime", "created", "ino"):
            view.pop(key, None)
        if view.get("type") == "directory":
            view.pop("size", None)
        for v in view.values():
            normalize_after_writes(v)
    elif isinstance(view, list):
        for v in view:
            normalize_after_writes(v)
    return view


# -- process pool workers (imported by name in spawned children) ------------------------

_worker_stack = None


def read_union_file(st, path: str) -> tuple[str, bytes]:
    """Read a file of a Stack sent (pickled) with the task."""
    with st.open(path) as f:
        return f.name, f.read()


def init_worker_stack(st) -> None:
    """Pool initializer: keep the Stack (unpickled once per worker)."""
    global _worker_stack
    _worker_stack = st


def read_with_worker_stack(path: str) -> tuple[int, bytes]:
    with _worker_stack.open(path) as f:  # type: ignore[union-attr]
        return os.getpid(), f.read()


def read_stack_path(p) -> str:
    return p.read_text()


def cat_overlay(fs, path: str) -> bytes:
    return fs.cat_file(path)
