"""``overlay://``: an fsspec filesystem over a Stack (needs the ``fsspec`` extra).

::

    import fsspec
    fs = fsspec.filesystem("overlay", lowers=["/layers/2", "/layers/1"])
    fs.ls("/etc")                      # merged listing, LocalFileSystem's dicts
    fs.cat_file("/etc/hostname", 0, 4)
    with fsspec.open("overlay://etc/os-release", "rt", lowers=[...]) as f: ...

``OverlayFileSystem(lowers, upper=None, work=None, **stack_options)`` opens
its own ``overlayfs.Stack`` (closed when the filesystem is collected or
``close()``d); ``OverlayFileSystem(stack=st)`` works over an existing one
(which it does not close).  Paths are union paths with a leading "/"
(``"/etc/passwd"``, the root is ``"/"``; ``overlay://etc/passwd`` and
relative paths name the same), and every answer is the one
``LocalFileSystem`` gives over a kernel mount of the same layers: the same
``info`` dicts (``name``, ``size``, ``type``, ``created``, ``islink``,
``mode``, ``uid``, ``gid``, ``mtime``, ``ino``, ``nlink``, and
``destination`` for a symlink), symlinks followed by ``info`` and reported as
themselves (type ``"other"``, the target's size) by ``ls``.  Symlinks are
followed inside the union root, never out of it.

Writes (``open`` in ``"wb"``/``"ab"``/``"xb"``, ``pipe``, ``put``, ``touch``,
``mkdir``, ``rm``, ``mv``, ``cp_file``) go through the stack's upper layer
with copy-up; without an upper they raise ``OSError(EROFS)``.  Filesystems
made from arguments are cached by fsspec per arguments; one made with
``stack=`` is not cached (a Stack is not a token).  Both pickle (the Stack
re-opens from its arguments in the other process).
"""

from __future__ import annotations

import datetime
import errno
import inspect
import os
import stat
import weakref
from collections.abc import Sequence
from typing import Any

from fsspec.spec import AbstractFileSystem, _Cached
from fsspec.utils import stringify_path

from .stack import Stack

__all__ = ["OverlayFileSystem"]

_COPY_CHUNK = 1 << 20

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class _StackCached(_Cached):
    """fsspec's instance cache keys on the arguments' text; a Stack's repr
    does not identify it, so a filesystem over a given Stack is never cached."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("stack") is not None:
            kwargs["skip_instance_cache"] = True
        return super().__call__(*args, **kwargs)


class OverlayFileSystem(AbstractFileSystem, metaclass=_StackCached):
    """fsspec filesystem (protocol ``overlay``) over an ``overlayfs.Stack``.

    Either Stack arguments -- ``lowers`` (top-most first), ``upper``,
    ``work`` and the Stack keywords (``whiteouts``, ``xattr_namespace``,
    ``data_layers``, ``metacopy``...) -- or ``stack=`` an open Stack.
    ``auto_mkdir=True`` creates missing parent directories when a file is
    opened for writing (as LocalFileSystem's option)."""

    protocol = "overlay"
    root_marker = "/"

    def __init__(self, lowers: Sequence[_Path] | None = None, upper: _Path | None = None,
                 work: _Path | None = None, *,
                 stack: Stack | None = None, auto_mkdir: bool = False, **kwargs: Any) -> None:
        fs_options = {k: kwargs.pop(k) for k in ("use_listings_cache", "listings_expiry_time",
                                                 "max_paths") if k in kwargs}
        super().__init__(**fs_options)
        if stack is not None:
            if lowers is not None or upper is not None or work is not None or kwargs:
                raise TypeError("OverlayFileSystem takes either stack= or the Stack arguments, not both")
            self.stack = stack
        else:
            if lowers is None:
                raise TypeError("OverlayFileSystem needs lowers=[...] (top-most first) or stack=")
            self.stack = Stack(lowers, upper, work, **kwargs)
            self._finalizer = weakref.finalize(self, self.stack.close)
        self.auto_mkdir = auto_mkdir

    def close(self) -> None:
        """Close the Stack this filesystem opened (not one given as stack=),
        and drop the filesystem from fsspec's instance cache."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
            with type(self)._instantiation_lock:
                if type(self)._cache.get(self._fs_token) is self:
                    del type(self)._cache[self._fs_token]

    @property
    def fsid(self) -> str:
        return "overlay:" + self._fs_token

    # -- paths ---------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith("overlay://"):
            path = path[10:]
        elif path.startswith("overlay:"):
            path = path[8:]
        # As LocalFileSystem normalizes an absolute path: no trailing "/".
        if not path.startswith("/"):
            path = "/" + path
        return path.rstrip("/") or "/"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _join(self, path: str, name: str) -> str:
        return path + name if path.endswith("/") else path + "/" + name

    # -- reading -------------------------------------------------------------

    def _entry_info(self, entry: Any, path: str) -> dict[str, Any]:
        # LocalFileSystem.info(os.DirEntry): the entry itself, the target's size.
        out = entry.stat(follow_symlinks=False)
        link = entry.is_symlink()
        if entry.is_dir(follow_symlinks=False):
            t = "directory"
        elif entry.is_file(follow_symlinks=False):
            t = "file"
        else:
            t = "other"
        size = out.st_size
        if link:
            try:
                size = entry.stat(follow_symlinks=True).st_size
            except OSError:
                size = 0
        return self._result(path, out, size, t, link)

    def _result(self, path: str, out: os.stat_result, size: int, t: str, link: bool) -> dict[str, Any]:
        result = {"name": path, "size": size, "type": t,
                  "created": getattr(out, "st_birthtime", out.st_ctime), "islink": link,
                  "mode": out.st_mode, "uid": out.st_uid, "gid": out.st_gid,
                  "mtime": out.st_mtime, "ino": out.st_ino, "nlink": out.st_nlink}
        if link:
            result["destination"] = self.stack.readlink(path)
        return result

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        """The entry at path with symlinks followed (the dict says islink
        and the destination), as LocalFileSystem.info."""
        path = self._strip_protocol(path)
        out = self.stack.lstat(path)
        link = stat.S_ISLNK(out.st_mode)
        if link:
            out = self.stack.stat(path)
        if stat.S_ISDIR(out.st_mode):
            t = "directory"
        elif stat.S_ISREG(out.st_mode):
            t = "file"
        else:
            t = "other"
        return self._result(path, out, out.st_size, t, link)

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> list[Any]:
        """The merged listing of a directory (in the kernel's order), or
        the entry itself for anything else, as LocalFileSystem.ls."""
        path = self._strip_protocol(path)
        path_info = self.info(path)
        if path_info["type"] != "directory":
            return [path_info] if detail else [path_info["name"]]
        infos: list[Any] = []
        with self.stack.scandir(path) as it:
            for entry in it:
                name = self._join(path, entry.name)
                try:
                    infos.append(self._entry_info(entry, name) if detail else name)
                except FileNotFoundError:
                    pass
        return infos

    def exists(self, path: Any, **kwargs: Any) -> bool:
        return self.stack.exists(self._strip_protocol(path))

    def lexists(self, path: Any, **kwargs: Any) -> bool:
        return self.stack.lexists(self._strip_protocol(path))

    def isdir(self, path: Any) -> bool:
        return self.stack.isdir(self._strip_protocol(path))

    def isfile(self, path: Any) -> bool:
        return self.stack.isfile(self._strip_protocol(path))

    def islink(self, path: Any) -> bool:
        return self.stack.islink(self._strip_protocol(path))

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        """The bytes of a file, or of [start:end) with slice semantics
        (negative offsets count from the end)."""
        path = self._strip_protocol(path)
        with self.stack.open(path, "rb", buffering=0) as f:
            if start is None and end is None:
                return f.readall()  # type: ignore[attr-defined,no-any-return]
            size = os.fstat(f.fileno()).st_size
            lo, hi, _ = slice(start, end).indices(size)
            if hi <= lo:
                return b""
            return os.pread(f.fileno(), hi - lo, lo)

    def created(self, path: Any) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["created"], tz=datetime.UTC)

    def modified(self, path: Any) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def _open(self, path: Any, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if mode not in ("rb", "wb", "ab", "xb"):
            raise ValueError(f"mode must be 'rb', 'wb', 'ab' or 'xb', not {mode!r}")
        if not autocommit:
            raise NotImplementedError("overlay:// has no transactions: writes go to the upper layer")
        if mode != "rb" and self.auto_mkdir:
            self.makedirs(self._parent(path), exist_ok=True)
        buffering = block_size if block_size else -1
        f = self.stack.open(path, mode, buffering=buffering)
        f.path = path  # type: ignore[attr-defined]
        if mode == "rb":
            f.size = os.fstat(f.fileno()).st_size  # type: ignore[attr-defined]
        return f

    # -- changes ---------------------------------------------------------------

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if self.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        if create_parents:
            self.makedirs(path, exist_ok=True)
        else:
            self.stack.mkdir(path, **kwargs)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        self.stack.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: Any) -> None:
        self.stack.rmdir(self._strip_protocol(path))

    def rm_file(self, path: Any) -> None:
        self.stack.unlink(self._strip_protocol(path))

    def _rm(self, path: Any) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove files, and directory trees with recursive=True (ValueError
        without), as LocalFileSystem.rm: no glob expansion."""
        for p in path if isinstance(path, list) else [path]:
            p = self._strip_protocol(p)
            if self.stack.isdir(p) and not self.stack.islink(p):
                if not recursive:
                    raise ValueError("Cannot delete directory, set recursive=True")
                self._rm_tree(p)
            else:
                self.stack.unlink(p)

    def _rm_tree(self, path: str) -> None:
        for entry in list(self.stack.scandir(path)):
            child = self._join(path, entry.name)
            if entry.is_dir(follow_symlinks=False):
                self._rm_tree(child)
            else:
                self.stack.unlink(child)
        self.stack.rmdir(path)

    def touch(self, path: Any, truncate: bool = True, **kwargs: Any) -> None:
        """Create an empty file, or set an existing one's times to now (and
        truncate it with truncate=True), as LocalFileSystem.touch."""
        path = self._strip_protocol(path)
        if self.auto_mkdir:
            self.makedirs(self._parent(path), exist_ok=True)
        if self.exists(path):
            self.stack.utime(path)
        else:
            self.stack.open(path, "ab").close()
        if truncate:
            self.stack.truncate(path, 0)

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        """Copy a file's data (or make the directory) through the union."""
        path1 = self._strip_protocol(path1)
        path2 = self._strip_protocol(path2)
        if self.auto_mkdir:
            self.makedirs(self._parent(path2), exist_ok=True)
        if self.stack.isfile(path1):
            with self.stack.open(path1, "rb") as fin, self.stack.open(path2, "wb") as fout:
                while chunk := fin.read(_COPY_CHUNK):
                    fout.write(chunk)
        elif self.stack.isdir(path1):
            self.makedirs(path2, exist_ok=True)
        else:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path1)

    def mv(self, path1: Any, path2: Any, recursive: bool = True, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        """Move like shutil.move (as LocalFileSystem.mv): into path2 if it is
        a directory, by rename, or by a copy through the union and removal
        where the overlay refuses the rename (Stack.move)."""
        path1 = self._strip_protocol(path1)
        path2 = self._strip_protocol(path2)
        if self.auto_mkdir:
            self.makedirs(self._parent(path2), exist_ok=True)
        if self.stack.isdir(path2):
            path2 = self._join(path2, path1.rstrip("/").rsplit("/", 1)[-1])
        self.stack.move(path1, path2)


# fsspec's caching metaclass takes (*args, **kwargs): show __init__'s signature in help().
_init = inspect.signature(OverlayFileSystem.__init__)
OverlayFileSystem.__signature__ = _init.replace(  # type: ignore[attr-defined]
    parameters=list(_init.parameters.values())[1:], return_annotation=inspect.Signature.empty)
del _init
