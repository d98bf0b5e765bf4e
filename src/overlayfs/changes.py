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

    Every entry of ``upper_dir`` is ``added``, or ``changed`` where the parent's view
    has the path (inside an opaque directory too); a whiteout (char device 0/0, or an
    xattr whiteout) is ``deleted``. An opaque directory is reported with
    ``opaque=True``; in it and below it only the layer's entries show, so every name
    the parent's view has there and the layer lacks is ``deleted`` too. Cost: one
    walk of ``upper_dir``, one Stack lookup per entry, and a listing of the parent's
    view of each directory under an opaque one.
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

    def walk(rel_dir: str, abs_dir: str, merges: bool, dir_below: bool) -> None:
        """``merges``: the merged directory ``rel_dir`` shows the parent's entries the
        layer does not hide (else only the layer's: it or an ancestor is opaque, or the
        parent's view has no directory there); ``dir_below``: the parent's view has a
        directory at ``rel_dir``."""
        with os.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        present = set()
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            present.add(entry.name)
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
            walk(rel, entry.path, merges and is_dir_below and not opaque, is_dir_below)
        if not merges and dir_below and view is not None:
            # Only the layer's entries show here: what else the parent shows is gone
            # (whiteouts among them were reported above).
            for name in sorted(view.listdir(rel_dir)):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if name not in present and view.lexists(rel):
                    found.append(Change("deleted", rel))

    try:
        walk("", top, view is not None, view is not None)
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
