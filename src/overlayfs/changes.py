"""What an upper layer changes in the view of the layers below it, as Docker's diff says it.

:func:`changes` is the diff behind :meth:`overlayfs.Stack.diff` and
:meth:`overlayfs.LayerStore.diff`; :class:`Change` is one line of it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

__all__ = ["Change", "changes"]

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class Change(NamedTuple):
    """One change a layer makes to the view of its parent."""

    kind: Literal["added", "changed", "deleted"]
    path: str  #: union path, relative, "/"-separated ("etc/passwd")
    #: a directory that hides the parent's view of everything below it: opaque
    #: (``<ns>.overlay.opaque=y``, ``.wh..wh..opq``) or redirected
    opaque: bool = False


#: How the entries a merged directory shows from below relate to the parent's view of
#: the same path: the same entries (unchanged: nothing to report); none (the directory,
#: or an ancestor, is opaque, or the parent's view has no directory there: only the
#: layer's entries show); or entries of another directory (a redirect of it or of an
#: ancestor: every entry is reported, compared with the parent's view path by path).
_SAME, _NONE, _MOVED = "same", "none", "moved"

_OCI_WH: Final = ".wh."
_OCI_OPQ: Final = ".wh..wh..opq"


def changes(upper_dir: _Path, lowers: Sequence[_Path], *,
            xattr_namespace: Literal["trusted", "user"] = "trusted",
            whiteouts: Literal["kernel", "oci", "auto"] = "kernel",
            data_layers: Sequence[_Path] = ()) -> list[Change]:
    """The changes ``upper_dir`` makes to the view of ``lowers`` (top-most first): what
    the merged view of ``upper_dir`` over ``lowers`` differs in from the view of
    ``lowers`` alone (the parent's view), as a list sorted by path components.

    ``whiteouts`` is the on-disk form of the layers, as for ``Stack``: ``"kernel"``
    (char 0/0 and xattr whiteouts, ``<ns>.overlay.opaque``; a file named ``.wh.x`` is
    a file), ``"oci"`` (``.wh.x`` and ``.wh..wh..opq`` files) or ``"auto"`` (both).
    ``data_layers`` are data-only layers below ``lowers`` (for metacopy files).

    * Every entry of ``upper_dir`` is ``added``, or ``changed`` where the parent's
      view has the path (inside an opaque directory too); a whiteout is ``deleted``.
    * An opaque directory is reported with ``opaque=True``; in it and below it only
      the layer's entries show, so every name the parent's view has there and the
      layer lacks is ``deleted`` too.
    * A directory with a redirect (renamed with ``redirect_dir=on``) shows the
      contents of the directory it was renamed from: it is reported with
      ``opaque=True`` (the parent's view of its path is hidden), and every path of
      its merged contents is ``added``, or ``changed`` where the parent's view has
      that same path; names the parent's view has there and it lacks are ``deleted``.
    * A metacopy file (metadata in the layer, data below) is ``changed``, or
      ``added`` where the parent's view lacks the path (a renamed one, whose
      redirect leads to its data).
    * An entry whose merged lookup fails (an invalid redirect: ``EINVAL``; a metacopy
      file without data: ``EIO``) is reported, and nothing below it: the merged view
      has nothing there either.

    Both views are a kernel mount's: redirects are followed and metacopy files read
    (``redirect_always_follow``, ``metacopy=on``), except with ``xattr_namespace=
    "user"``, where, as ``userxattr`` forces, they are not (their lookups fail with
    ``EPERM``, so such entries are reported as damaged ones).

    Read the content of ``added``/``changed`` paths through the merged view (a
    ``Stack`` over ``[upper_dir, *lowers]``), not from ``upper_dir``: redirected
    directories and metacopy files keep it below. The result is deterministic: each
    path once, sorted by its components.

    Cost: one walk of ``upper_dir`` with one lookup in the parent's view per entry
    (which reads each directory of the parent's view that holds one once, into the
    view's cache); a listing of the parent's view of each directory in or under an
    opaque one; and for a redirected directory a walk of its whole merged subtree,
    one lookup per path in both views. Layers must not change meanwhile.
    """
    if xattr_namespace not in ("trusted", "user"):
        raise ValueError(f"xattr_namespace must be 'trusted' or 'user', not {xattr_namespace!r}")
    if whiteouts not in ("kernel", "oci", "auto"):
        raise ValueError(f"whiteouts must be 'kernel', 'oci' or 'auto', not {whiteouts!r}")
    from overlayfs import Stack

    top = os.fsdecode(upper_dir)
    below = [os.fsdecode(p) for p in lowers]
    # Both views as a kernel mount shows them: redirects followed and metacopy files
    # honoured, but not with userxattr, which forces redirect_dir=nofollow and
    # metacopy=off (their lookups then fail with EPERM: damaged entries).
    trusted = xattr_namespace == "trusted"
    options: dict[str, Any] = {"xattr_namespace": xattr_namespace, "whiteouts": whiteouts, "metacopy": trusted,
               "redirect_follow": trusted, "data_layers": [os.fsdecode(p) for p in data_layers]}
    with contextlib.ExitStack() as stack:
        merged = stack.enter_context(Stack([top, *below], **options))
        parent = stack.enter_context(Stack(below, **options)) if below else None
        return _Diff(merged, parent, xattr_namespace, whiteouts).run(top)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class _Diff:
    """One diff: the merged view (the layer as the top lower), the parent's view (None
    for a base layer), and the changes found so far by path."""

    def __init__(self, merged: Stack, parent: Stack | None, xattr_namespace: str, whiteouts: str):
        self.merged = merged
        self.parent = parent
        self.prefix = f"{xattr_namespace}.overlay."
        self.kernel_wh = whiteouts in ("kernel", "auto")
        self.oci_wh = whiteouts in ("oci", "auto")
        self.found: dict[str, Change] = {}

    def run(self, top: str) -> list[Change]:
        self.visit("", top, _SAME if self.parent is not None else _NONE)
        return sorted(self.found.values(), key=lambda c: c.path.split("/"))

    def emit(self, kind: Literal["added", "changed", "deleted"], path: str,
             opaque: bool = False) -> None:
        self.found.setdefault(path, Change(kind, path, opaque))

    def in_parent(self, path: str) -> tuple[bool, bool]:
        """(the parent's view has ``path``, it is a directory there). A path whose
        lookup fails with an error other than ENOENT/ENOTDIR is there, damaged."""
        if self.parent is None:
            return False, False
        try:
            mode = self.parent.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False, False
        except OSError:
            return True, False
        return True, stat.S_ISDIR(mode)

    def names(self, view: Stack, rel: str) -> list[str]:
        """The names ``view`` lists in directory ``rel`` whose lookup finds something
        (the kernel lists some xattr whiteouts, whose lookup gives ENOENT)."""
        out = []
        for name in view.listdir(rel):
            try:
                view.lstat(_join(rel, name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                pass  # damaged, but there
            out.append(name)
        return out

    def scan(self, host: str, rel: str) -> tuple[dict[str, os.DirEntry[str]], set[str]]:
        """The layer's directory ``host`` (union path ``rel``): its entries by name, and
        the names its whiteouts delete (reported here)."""
        with os.scandir(host) as it:
            listed = {e.name: e for e in it}
        entries: dict[str, os.DirEntry[str]] = {}
        whited: set[str] = set()
        for name, entry in listed.items():
            if self.oci_wh and name.startswith(_OCI_WH):
                target = name[len(_OCI_WH):]
                # The opaque marker, and AUFS's own .wh..wh.* files, delete nothing.
                if not target.startswith(_OCI_WH) and target not in listed:
                    whited.add(target)
                continue
            if self.kernel_wh and _is_whiteout(entry.path, entry.stat(follow_symlinks=False),
                                               self.prefix):
                whited.add(name)
                continue
            entries[name] = entry
        for name in whited:
            self.emit("deleted", _join(rel, name))
        return entries, whited

    def child_state(self, state: str, name: str, host: str, is_dir_below: bool) -> tuple[str, bool]:
        """(state, hides the parent's view of it) of the layer's directory ``host``
        (``name`` in a directory in ``state``)."""
        if (self.kernel_wh and _xattr(host, self.prefix + "opaque") == b"y") or \
                (self.oci_wh and os.path.lexists(os.path.join(host, _OCI_OPQ))):
            return _NONE, True
        redirect = _xattr(host, self.prefix + "redirect")
        # A relative redirect looks below in the parent's lower directories: where
        # they are the parent's view's, one to its own name changes nothing; where
        # there are none, no relative one does. An absolute one starts from the root.
        if redirect is not None and not (state == _SAME and redirect == os.fsencode(name)) \
                and not (state == _NONE and not redirect.startswith(b"/")):
            return _MOVED, True
        if state == _SAME:
            return (_SAME if is_dir_below else _NONE), False
        return state, False

    def visit(self, rel: str, host: str | None, state: str) -> None:
        """Report what changed in directory ``rel`` of the merged view (a directory
        there), ``host`` being the layer's directory at ``rel`` if it has one."""
        entries, whited = self.scan(host, rel) if host is not None else ({}, set())
        from_below: list[str] = []
        if state == _MOVED:
            # The entries from below come from elsewhere: each is compared with the
            # parent's view. (_SAME shows the parent's entries, _NONE none at all.)
            from_below = [n for n in self.names(self.merged, rel) if n not in entries]
        for name in sorted(entries):
            entry = entries[name]
            path = _join(rel, name)
            there, is_dir_below = self.in_parent(path)
            kind: Literal["added", "changed"] = "changed" if there else "added"
            if not entry.is_dir(follow_symlinks=False):
                self.emit(kind, path)
                continue
            child, hides = self.child_state(state, name, entry.path, is_dir_below)
            if child != _SAME or (there and not is_dir_below):
                try:
                    seen = stat.S_ISDIR(self.merged.lstat(path).st_mode)
                except OSError:
                    seen = False
                if not seen:  # a damaged directory: nothing below it to see
                    self.emit(kind, path)
                    continue
            self.emit(kind, path, hides)
            self.visit(path, entry.path, child)
        for name in sorted(from_below):
            path = _join(rel, name)
            there, _ = self.in_parent(path)
            kind = "changed" if there else "added"
            self.emit(kind, path)
            try:
                is_dir = stat.S_ISDIR(self.merged.lstat(path).st_mode)
            except OSError:
                continue
            if is_dir:
                self.visit(path, None, _MOVED)
        if state != _SAME and self.parent is not None and self.in_parent(rel)[1]:
            # The parent's names the merged directory lacks are gone.
            shown = set(entries) | set(from_below) | whited
            for name in self.names(self.parent, rel):
                if name not in shown:
                    self.emit("deleted", _join(rel, name))


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
