"""What an upper layer changes in the view of the layers below it, as Docker's diff says it.

:func:`changes` is the diff behind :meth:`overlayfs.Stack.diff` and
:meth:`overlayfs.LayerStore.diff`; :class:`Change` is one line of it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

__all__ = ["Change", "changes"]

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class Change(NamedTuple):
    """One change a layer makes to the view of its parent."""

    kind: Literal["added", "changed", "deleted"]
    path: str  #: union path, relative, "/"-separated ("etc/passwd")
    opaque: bool = False  #: a directory that hides everything below it (X.opaque = "y")


def changes(upper_dir: _Path, lowers: Sequence[_Path], *,
            xattr_namespace: Literal["trusted", "user"] = "trusted") -> list[Change]:
    """The changes ``upper_dir`` makes to the view of ``lowers`` (top-most first), sorted
    by path components.

    Every entry of ``upper_dir`` is ``added`` or ``changed`` (the parent's view has the
    path); a whiteout (char device 0/0, or an xattr whiteout) is ``deleted``; an opaque
    directory is reported with ``opaque=True`` plus one ``deleted`` per name of the
    parent's view of it that the layer does not have. Cost: one walk of ``upper_dir``
    plus one Stack lookup per entry whose parent directory exists below.
    """
    top = os.fsdecode(upper_dir)
    view = None
    if lowers:
        from overlayfs import Stack

        view = Stack([os.fsdecode(p) for p in lowers], xattr_namespace=xattr_namespace)
    prefix = f"{xattr_namespace}.overlay."
    found: list[Change] = []

    def below_mode(rel: str) -> int | None:
        if view is None:
            return None
        try:
            return view.lstat(rel).st_mode
        except OSError:
            return None

    def walk(rel_dir: str, abs_dir: str, dir_below: bool) -> None:
        with os.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if _is_whiteout(entry.path, st, prefix):
                found.append(Change("deleted", rel))
                continue
            mode = below_mode(rel) if dir_below else None
            kind: Literal["added", "changed"] = "added" if mode is None else "changed"
            if not stat.S_ISDIR(st.st_mode):
                found.append(Change(kind, rel))
                continue
            opaque = _xattr(entry.path, prefix + "opaque") == b"y"
            found.append(Change(kind, rel, opaque))
            is_dir_below = mode is not None and stat.S_ISDIR(mode)
            if opaque and is_dir_below and view is not None:
                with os.scandir(entry.path) as it:
                    present = {e.name for e in it}
                for name in sorted(view.listdir(rel)):
                    if name not in present:
                        found.append(Change("deleted", f"{rel}/{name}"))
            walk(rel, entry.path, is_dir_below and not opaque)

    try:
        walk("", top, view is not None)
    finally:
        if view is not None:
            view.close()
    found.sort(key=lambda c: c.path.split("/"))
    return found


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _is_whiteout(path: str, st: os.stat_result, prefix: str) -> bool:
    """A char device 0/0, or a zero-size regular file carrying ``<prefix>whiteout``."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return _xattr(path, prefix + "whiteout") is not None
    return False
