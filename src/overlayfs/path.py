"""``overlayfs.path.StackPath``: pathlib-style paths in a Stack's union.

``Stack.path("etc", "os-release")`` gives a :class:`StackPath`, which speaks
``importlib.resources.abc.Traversable`` and the read side of ``pathlib.Path``
the way ``zipfile.Path`` does: ``/``, ``joinpath``, ``iterdir``, ``glob``,
``rglob``, ``match``, ``read_text``, ``read_bytes``, ``open``, ``stat``,
``lstat``, ``is_dir``/``is_file``/``is_symlink``/``exists``, ``readlink``,
``resolve`` and the pure parts (``name``, ``stem``, ``suffix``, ``suffixes``,
``parent``, ``parents``, ``parts``).  On a stack with an upper layer the
write side works too (``write_text``, ``write_bytes``, ``mkdir``, ``touch``,
``unlink``, ``rmdir``, ``rename``), changing the upper as a mount would.

A StackPath is always absolute in the union: ``str()`` is the union path
with a leading ``/`` (``"/etc/os-release"``, ``"/"`` for the root), and
symlinks and ``..`` never lead out of the union root.  It has no
``__fspath__``: it names no host file, so ``open(p)`` or ``os.stat(p)`` with
one is a TypeError rather than a silent access to the host's ``/etc``.  Use
``Stack.resolve(str(p))`` for the host path of the winning layer entry, or
``importlib.resources.as_file(p)`` for a temporary host copy.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import re
import stat
from collections.abc import Iterator, Sequence
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stack import Stack

__all__ = ["StackPath"]

#: Symlinks followed by resolve() before ELOOP, as the kernel's MAXSYMLINKS.
_MAXSYMLINKS = 40


class StackPath(Traversable):
    """A path in the union of a Stack, like ``pathlib.Path`` (read side,
    plus the write side where the stack has an upper) and an
    ``importlib.resources`` Traversable.  Make one with ``Stack.path(*parts)``.

    Equal when the Stack is the same object and the paths are equal.
    Pickles with its Stack (which re-opens from its arguments)."""

    __slots__ = ("_pure", "_stack")

    _pure: PurePosixPath
    _stack: Stack

    def __init__(self, stack: Stack, *parts: str | os.PathLike[str]) -> None:
        self._stack = stack
        self._pure = PurePosixPath("/", *parts)

    def _new(self, pure: PurePosixPath) -> StackPath:
        p = StackPath.__new__(StackPath)
        p._stack = self._stack
        p._pure = pure
        return p

    @property
    def _upath(self) -> str:
        """The union path the Stack takes: "" for the root, "a/b" else."""
        return str(self._pure)[1:]

    @property
    def stack(self) -> Stack:
        """The Stack this path is in."""
        return self._stack

    # -- pure ---------------------------------------------------------------

    def __str__(self) -> str:
        return str(self._pure)

    def as_posix(self) -> str:
        """The union path, with a leading "/" (as str())."""
        return str(self._pure)

    def __repr__(self) -> str:
        return f"StackPath({self._stack!r}, {str(self._pure)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StackPath):
            return NotImplemented
        return self._stack is other._stack and self._pure == other._pure

    def __hash__(self) -> int:
        return hash((id(self._stack), self._pure))

    def __reduce__(self) -> tuple[Any, ...]:
        return (StackPath, (self._stack, str(self._pure)))

    def __truediv__(self, child: str | os.PathLike[str]) -> StackPath:
        return self._new(self._pure / child)

    def joinpath(self, *descendants: str | os.PathLike[str]) -> StackPath:
        """This path with descendants appended (an absolute one starts again
        at the union root), like pathlib."""
        return self._new(self._pure.joinpath(*descendants))

    @property
    def name(self) -> str:
        """The final component ("" for the root)."""
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def suffixes(self) -> list[str]:
        return self._pure.suffixes

    @property
    def parts(self) -> tuple[str, ...]:
        """("/", "etc", "passwd"), as pathlib gives for an absolute path."""
        return self._pure.parts

    @property
    def parent(self) -> StackPath:
        """The lexical parent (the root's parent is the root)."""
        return self._new(self._pure.parent)

    @property
    def parents(self) -> Sequence[StackPath]:
        """The lexical ancestors, nearest first, ending with the root."""
        return tuple(self._new(p) for p in self._pure.parents)

    def with_name(self, name: str) -> StackPath:
        return self._new(self._pure.with_name(name))

    def with_suffix(self, suffix: str) -> StackPath:
        return self._new(self._pure.with_suffix(suffix))

    def match(self, pattern: str) -> bool:
        """Does this path match the glob-style pattern (pathlib rules: a
        relative pattern matches from the right)?"""
        return self._pure.match(pattern)

    def is_absolute(self) -> bool:
        """True: a StackPath is always absolute in its union."""
        return True

    def relative_to(self, other: StackPath | str) -> PurePosixPath:
        """The relative pure path from other to this path (ValueError if
        this path is not under other)."""
        base = other._pure if isinstance(other, StackPath) else PurePosixPath("/", other)
        return self._pure.relative_to(base)

    # -- queries ------------------------------------------------------------

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """os.stat_result as the overlay shows it (Stack.stat)."""
        return self._stack.stat(self._upath, follow_symlinks=follow_symlinks)

    def lstat(self) -> os.stat_result:
        return self._stack.lstat(self._upath)

    def exists(self) -> bool:
        """Does the path exist (symlinks followed inside the union)?"""
        return self._stack.exists(self._upath)

    def is_dir(self) -> bool:
        return self._stack.isdir(self._upath)

    def is_file(self) -> bool:
        return self._stack.isfile(self._upath)

    def is_symlink(self) -> bool:
        return self._stack.islink(self._upath)

    def _is_type(self, test: Any) -> bool:
        try:
            return bool(test(self._stack.stat(self._upath).st_mode))
        except (OSError, ValueError):
            return False

    def is_fifo(self) -> bool:
        return self._is_type(stat.S_ISFIFO)

    def is_socket(self) -> bool:
        return self._is_type(stat.S_ISSOCK)

    def is_block_device(self) -> bool:
        return self._is_type(stat.S_ISBLK)

    def is_char_device(self) -> bool:
        return self._is_type(stat.S_ISCHR)

    def iterdir(self) -> Iterator[StackPath]:
        """The paths of the merged listing, in the kernel's order."""
        for name in self._stack.listdir(self._upath):
            yield self._new(self._pure / name)

    def readlink(self) -> StackPath:
        """The path a symlink points to: a relative target taken from the
        link's directory, an absolute one from the union root (unlike
        pathlib.Path.readlink, which returns the target text as a path)."""
        target = self._stack.readlink(self._upath)
        return self._new(self._pure.parent / target)

    def resolve(self, strict: bool = False) -> StackPath:
        """The path with symlinks followed and ".." taken, inside the union
        (an absolute target starts at the union root, ".." stops there), as
        pathlib.Path.resolve does on the host.  strict=True raises for a
        missing component; OSError(ELOOP) after 40 symlinks."""
        todo = list(reversed(self._pure.parts[1:]))
        done: list[str] = []
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join([*done, name])
            try:
                st = self._stack.lstat(cand)
            except OSError:
                if strict:
                    raise
                done.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            links += 1
            if links > _MAXSYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(self))
            target = self._stack.readlink(cand)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(target.split("/")))
        return self._new(PurePosixPath("/", *done))

    # -- glob ---------------------------------------------------------------

    def glob(self, pattern: str) -> Iterator[StackPath]:
        """Paths under this one matching the relative pattern, with the
        rules of this Python's pathlib: ``*``, ``?``, ``[...]`` within a
        component (hidden names match), ``**`` for this directory and every
        directory below it (symlinked directories not entered), a trailing
        "/" for directories only; a plain last component must exist (a
        broken symlink does not)."""
        if not pattern:
            raise ValueError(f"Unacceptable pattern: {pattern!r}")
        pat = PurePosixPath(pattern)
        if pat.is_absolute():
            raise NotImplementedError("Non-relative patterns are unsupported")
        parts = list(pat.parts)
        if pattern.endswith("/"):
            parts.append("")
        for part in parts:
            if "**" in part and part != "**":
                raise ValueError("Invalid pattern: '**' can only be an entire path component")
        if not self.is_dir():
            return
        seen: set[PurePosixPath] = set()
        for p in self._select(self._pure, parts):
            if p not in seen:
                seen.add(p)
                yield self._new(p)

    def rglob(self, pattern: str) -> Iterator[StackPath]:
        """glob("**/" + pattern)."""
        if PurePosixPath(pattern).is_absolute():
            raise NotImplementedError("Non-relative patterns are unsupported")
        return self.glob("**/" + pattern)

    def _scandir(self, pure: PurePosixPath) -> list[Any]:
        try:
            with self._stack.scandir(str(pure)[1:]) as it:
                return list(it)
        except OSError:
            return []

    def _select(self, base: PurePosixPath, parts: list[str]) -> Iterator[PurePosixPath]:
        # pathlib's selectors: each part but the last matches directories only.
        if not parts or not parts[0]:
            yield base
            return
        part, rest = parts[0], parts[1:]
        if part == "**":
            for d in self._recurse_dirs(base):
                yield from self._select(d, rest)
        elif not _is_wildcard(part):
            child = base / part
            if rest:
                if self._stack.isdir(str(child)[1:]):
                    yield from self._select(child, rest)
            elif self._stack.exists(str(child)[1:]):
                yield child
        else:
            match = re.compile(fnmatch.translate(part)).fullmatch
            for e in self._scandir(base):
                if rest:
                    try:
                        if not e.is_dir():
                            continue
                    except OSError:
                        continue
                if match(e.name):
                    yield from self._select(base / e.name, rest)

    def _recurse_dirs(self, base: PurePosixPath) -> Iterator[PurePosixPath]:
        yield base
        for e in self._scandir(base):
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                yield from self._recurse_dirs(base / e.name)

    # -- content ------------------------------------------------------------

    def open(self, mode: str = "r", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None) -> IO[Any]:
        """Open the file like pathlib.Path.open (Stack.open: reading needs no
        copy-up; writing copies up, or EROFS without an upper).  Text mode
        defaults to the locale encoding, as pathlib does."""
        if "b" not in mode:
            encoding = io.text_encoding(encoding)
        f = self._stack.open(self._upath, mode, buffering, encoding, errors, newline)
        return f  # type: ignore[return-value]

    def read_bytes(self) -> bytes:
        with self._stack.open(self._upath, "rb") as f:
            return f.read()  # type: ignore[no-any-return]

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        with self.open("r", encoding=encoding, errors=errors) as f:
            return f.read()  # type: ignore[no-any-return]

    # -- changes (a Stack with an upper) -------------------------------------

    def write_bytes(self, data: bytes) -> int:
        view = memoryview(data)
        with self._stack.open(self._upath, "wb") as f:
            return f.write(view)  # type: ignore[no-any-return]

    def write_text(self, data: str, encoding: str | None = None, errors: str | None = None,
                   newline: str | None = None) -> int:
        if not isinstance(data, str):
            raise TypeError(f"data must be str, not {type(data).__name__}")
        with self.open("w", encoding=encoding, errors=errors, newline=newline) as f:
            return f.write(data)  # type: ignore[no-any-return]

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Create the directory, like pathlib.Path.mkdir."""
        if parents:
            self._stack.makedirs(self._upath, mode, exist_ok=exist_ok)
            return
        try:
            self._stack.mkdir(self._upath, mode)
        except OSError:
            if not exist_ok or not self.is_dir():
                raise

    def touch(self, mode: int = 0o666, exist_ok: bool = True) -> None:
        """Create the file, or set its times to now, like pathlib.Path.touch."""
        if exist_ok:
            try:
                self._stack.utime(self._upath)
                return
            except FileNotFoundError:
                pass
        fd = self._stack.os_open(self._upath, os.O_CREAT | os.O_WRONLY | (0 if exist_ok else os.O_EXCL),
                                 mode)
        os.close(fd)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._stack.unlink(self._upath)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmdir(self) -> None:
        self._stack.rmdir(self._upath)

    def rename(self, target: StackPath | str) -> StackPath:
        """Rename to target (a StackPath of the same Stack, or a union path
        string) and return the new path, like pathlib.Path.rename."""
        dest = self._target(target)
        self._stack.rename(self._upath, dest._upath)
        return dest

    def replace(self, target: StackPath | str) -> StackPath:
        dest = self._target(target)
        self._stack.replace(self._upath, dest._upath)
        return dest

    def _target(self, target: StackPath | str) -> StackPath:
        if isinstance(target, StackPath):
            if target._stack is not self._stack:
                raise ValueError("rename target is in another Stack")
            return target
        return self._new(PurePosixPath("/", target))


def _is_wildcard(part: str) -> bool:
    return "*" in part or "?" in part or "[" in part
