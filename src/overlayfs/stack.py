"""``overlayfs.Stack``: the compiled ``_core._Stack`` plus what is composed of its calls.

The binding (``_core.pyx``) converts, holds the C stack's lifetime and raises; every
call that needs the C core or sits on the warm path (``lstat``, ``listdir``,
``scandir``, ``open``, the changes, ``copy_up``...) is a method of ``_Stack``.  What
only strings those calls together -- ``walk``, ``makedirs``, ``move``, ``mkfifo``,
``diff``, ``from_layer_dir`` -- lives here, in plain Python, as uvloop's ``Loop``
subclasses its compiled ``__BaseLoop``.  The subclass adds one slot, the options it
was opened with (for pickling); the inherited methods run exactly as on the base.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from ._core import _Stack
from .changes import Change, changes
from .path import StackPath
from .store import stack_from_layer_dir

if TYPE_CHECKING:  # pragma: no cover
    from .export import ExportResult

__all__ = ["Stack"]

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _join(a: Any, name: Any, sep: Any) -> Any:
    """os.path.join of a union path and a name: no separator doubled."""
    return a + name if not a or a.endswith(sep) else a + sep + name


class Stack(_Stack):
    """An OverlayFS view of a stack of layer directories: read-only, or with
    an upper layer (and a work dir) changed as a kernel mount changes it.

    lowers are top-most first, like lowerdir=top:...:bottom.  Layer paths
    are made absolute when the stack opens (relative ones against the
    current directory then), so the host paths it hands out keep naming
    what it opened after a chdir.

    whiteouts="kernel" (the default) honours only the forms a kernel mount
    honours: char 0:0 devices and xattr whiteouts, opaque xattrs.  Files
    named ".wh.NAME" or ".wh..wh..opq" are then ordinary files, as they are
    in a layer dir a kernel mounts (a container can create them).  "oci"
    honours only those names (trees extracted from OCI/Docker layer tars
    without converting), "auto" both.  Layer indices:
    0 is the upper, 1..N the lowers in that order, N+1.. the data-only layers.
    Union paths are '/'-separated and relative to the union root ("" and "/"
    name the root); '..' never climbs above the root and symlinks are
    followed inside the union root.  str in gives str out, bytes in gives
    bytes out.

    Lookups are answered from a per-directory cache built by reading each
    contributing layer once; layers changed behind the Stack's back are seen
    after invalidate().  Thread-safe.

    Like a mount, a Stack keeps the credentials it was opened with and reads
    and changes the layers with them.  Every change (and open, getxattr,
    listxattr) first checks the calling thread's fsuid, fsgid, groups and
    capabilities against the merged objects as the kernel checks an overlay
    inode (PermissionError: EACCES or EPERM; nothing is copied up then); a
    thread whose credentials differ from the opener's switches to them for
    the call and back, per thread.  New objects belong to the caller.

    redirect_dir=True changes the upper layer as a mount with
    redirect_dir=on does: rename() of a merged or lower directory copies the
    directory alone up and sets its <ns>.overlay.redirect instead of failing
    with EXDEV, and mkdir() in a merged directory makes an opaque one.  Not
    with redirect_follow=False, whiteouts="oci" or xattr_namespace="user"
    (ValueError), as the kernel refuses userxattr with redirect_dir=on.

    volatile=True skips the fsync of copied-up data, as the kernel's
    volatile option does.  Device nodes are not opened, as on a nodev
    mount: open() and os_open() of a char or block device raise
    PermissionError (EACCES), so a layer's dev/sda never reaches the host's
    disk.  devices=True opens them.

    A Stack pickles (and copy.copy()s) as its arguments: unpickling opens a
    new Stack over the same layers (their absolute paths) with the same
    options, with the credentials of the process that unpickles it, so a
    Stack can be sent to multiprocessing and concurrent.futures workers.
    The copy has its own fds and cache, and is closed without a
    ResourceWarning when collected (a worker cannot close what a pool
    unpickled for it).  Pass a Stack to a pool's initializer to open it
    once per worker rather than once per task.  A closed Stack does not
    pickle (ValueError).
    """

    __slots__ = ("_options", "_unpickled")

    _options: dict[str, Any]
    _unpickled: bool

    def __init__(
        self,
        lowers: Sequence[_Path],
        upper: _Path | None = None,
        work: _Path | None = None,
        *,
        xattr_namespace: str = "trusted",
        whiteouts: str = "kernel",
        cache: bool = True,
        data_layers: Sequence[_Path] = (),
        metacopy: bool = False,
        redirect_follow: bool = True,
        redirect_dir: bool = False,
        cache_max_bytes: int | None = None,
        volatile: bool = False,
        devices: bool = False,
    ) -> None:
        # The base takes volatile through **options: a C keyword, no Cython name.
        _Stack.__init__(self, lowers, upper, work, xattr_namespace=xattr_namespace,
                        whiteouts=whiteouts, cache=cache, data_layers=data_layers,
                        metacopy=metacopy, redirect_follow=redirect_follow,
                        redirect_dir=redirect_dir, cache_max_bytes=cache_max_bytes,
                        volatile=volatile, devices=devices)
        # What __reduce__ re-opens with (the layer paths are kept by the base).
        self._options = dict(
            xattr_namespace=xattr_namespace, whiteouts=whiteouts, cache=cache, metacopy=metacopy,
            redirect_follow=redirect_follow, redirect_dir=redirect_dir,
            cache_max_bytes=cache_max_bytes, volatile=volatile, devices=devices)

    def __del__(self) -> None:
        if getattr(self, "_unpickled", False):
            self.close()
        else:
            super().__del__()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the arguments: the layers' absolute paths and the options."""
        self._check_open()
        return (_reopen, (type(self), self.lowers, self.upper, self.work,
                          {**self._options, "data_layers": self.data_layers}))

    def path(self, *parts: str | os.PathLike[str]) -> StackPath:
        """A pathlib-style path in the union: ``overlayfs.path.StackPath``
        (an importlib.resources Traversable, read side of pathlib.Path; the
        write side too where the stack has an upper).  No parts: the root.
        Cost: none until a method of the path is called."""
        self._check_open()
        return StackPath(self, *parts)

    @classmethod
    def from_layer_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> Stack:
        """A Stack over one container's overlay2 layer dir (``<id>/diff``
        as the upper or top layer, its ``lower`` file naming the rest), as
        Docker lays it out.  kwargs go to Stack()."""
        return stack_from_layer_dir(path, **kwargs)

    # -- listings -----------------------------------------------------------------------

    @overload
    def walk(self, top: str | os.PathLike[str] = "", topdown: bool = True,
             onerror: Callable[[OSError], Any] | None = None,
             followlinks: bool = False) -> Iterator[tuple[str, list[str], list[str]]]: ...
    @overload
    def walk(self, top: bytes | os.PathLike[bytes], topdown: bool = True,
             onerror: Callable[[OSError], Any] | None = None,
             followlinks: bool = False) -> Iterator[tuple[bytes, list[bytes], list[bytes]]]: ...

    def walk(self, top: _Path = "", topdown: bool = True,
             onerror: Callable[[OSError], Any] | None = None,
             followlinks: bool = False) -> Iterator[tuple[Any, list[Any], list[Any]]]:
        """Directory tree generator over union paths, like os.walk.

        Yields (dirpath, dirnames, filenames); with topdown, dirnames may be
        pruned in place.  Symlinks to directories are listed in dirnames but
        only entered with followlinks."""
        top = os.fspath(top)
        stack: list[Any] = [top]
        sep = b"/" if isinstance(top, bytes) else "/"

        while stack:
            top = stack.pop()
            if isinstance(top, tuple):
                yield top
                continue
            try:
                dirs, nondirs, links = self._walk_dir(top)
            except OSError as err:
                if onerror is not None:
                    onerror(err)
                continue
            if topdown:
                listed = set(dirs)
                yield top, dirs, nondirs
                # dirs may have been edited in place: names we did not list
                # are checked with a lookup, like os.walk does.
                for d in reversed(dirs):
                    new = _join(top, d, sep)
                    if followlinks or not (d in links if d in listed else self.islink(new)):
                        stack.append(new)
            else:
                stack.append((top, dirs, nondirs))
                for d in reversed(dirs):
                    if followlinks or d not in links:
                        stack.append(_join(top, d, sep))

    # -- changes ------------------------------------------------------------------------

    def makedirs(self, name: _Path, mode: int = 0o777, exist_ok: bool = False) -> None:
        """Create a directory and its missing parents, like os.makedirs
        (mode is for the leaf; parents get 0o777 less the umask).

        Tries the leaf first: one mkdir when the parents exist.  Unlike
        os.makedirs it never asks whether a parent exists (the lookups of
        the read API are not checked against the caller's rights; mkdir
        is), so an unprivileged caller gets the error mkdir gives.
        """
        name = os.fspath(name)
        sep: Any = b"/" if isinstance(name, bytes) else "/"
        head = name.rstrip(sep)
        if not head:
            if exist_ok:
                return
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        parent, _, tail = head.rpartition(sep)
        try:
            self._mkdir_leaf(name, mode, exist_ok)
            return
        except FileNotFoundError:
            if not parent:
                raise
        try:
            self.makedirs(parent, exist_ok=exist_ok)
        except FileExistsError:
            pass  # made meanwhile, as os.makedirs accepts
        if tail == (b"." if isinstance(tail, bytes) else "."):
            return
        self._mkdir_leaf(name, mode, exist_ok)

    def _mkdir_leaf(self, name: str | bytes, mode: int, exist_ok: bool) -> None:
        try:
            self.mkdir(name, mode)
        except FileNotFoundError:
            raise
        except OSError:
            if not exist_ok or not self.isdir(name):
                raise

    def mkfifo(self, path: _Path, mode: int = 0o666) -> None:
        """Create a FIFO, like os.mkfifo."""
        self.mknod(path, stat.S_IFIFO | (mode & 0o7777))

    def move(self, src: _Path, dst: _Path) -> None:
        """Move src to dst like mv(1) through an overlay mount: rename, and
        where that gives EXDEV (a merged or lower directory without
        redirect_dir, or a redirect that would be too long) copy the tree
        through the union -- modes, owners, times, xattrs, symlinks, fifos,
        devices, and hard links between files inside it -- then remove the
        source.  Cost: a rename, or a copy of the tree."""
        try:
            self.rename(src, dst)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        if self.lexists(dst):
            self.rmdir(dst)
        self._copy_tree(src, dst, {})
        self._remove_tree(src)

    def _copy_tree(self, src: Any, dst: Any, links: dict[tuple[int, int], Any]) -> None:
        st = self.lstat(src)
        mode = st.st_mode
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            # A second name of a file copied already: link it, as mv does.
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                self.link(first, dst)
                return
            links[(st.st_dev, st.st_ino)] = dst
        if stat.S_ISDIR(mode):
            self.mkdir(dst, 0o700)
            sep = b"/" if isinstance(src, bytes) else "/"
            for name in self.listdir(src):
                self._copy_tree(src + sep + name, dst + sep + name, links)
        elif stat.S_ISLNK(mode):
            self.symlink(self.readlink(src), dst)
        elif stat.S_ISREG(mode):
            with self.open(src, "rb") as fin, self.open(dst, "xb") as fout:
                while True:
                    chunk = fin.read(1 << 20)
                    if not chunk:
                        break
                    fout.write(chunk)
        else:
            self.mknod(dst, mode, st.st_rdev)
        for name in self.listxattr(src, follow_symlinks=False):  # symlinks' trusted.* too
            self.setxattr(dst, name, self.getxattr(src, name, follow_symlinks=False),
                          follow_symlinks=False)
        self.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            self.chmod(dst, stat.S_IMODE(mode))
        self.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _remove_tree(self, path: Any) -> None:
        if self.isdir(path) and not self.islink(path):
            sep = b"/" if isinstance(path, bytes) else "/"
            for name in self.listdir(path):
                self._remove_tree(path + sep + name)
            self.rmdir(path)
        else:
            self.unlink(path)

    # -- diff ---------------------------------------------------------------------------

    def diff(self) -> list[Change]:
        """The changes the upper layer makes to the view of the lowers, as
        a sorted list of overlayfs.Change: overlayfs.changes.changes() over
        this Stack's layers, in its whiteout form and xattr namespace (see
        there for the rules and the cost).  ValueError without an upper."""
        self._check_open()
        if self.upper is None:
            raise ValueError("a diff needs an upper layer: this Stack has none")
        return changes(self.upper, self.lowers, xattr_namespace=self.xattr_namespace,
                       whiteouts=self.whiteouts, data_layers=self.data_layers)

    # -- export -------------------------------------------------------------------------

    def export(self, out: Any, **options: Any) -> ExportResult:
        """The merged view as one tar (``docker export``), written to out (a path
        or a binary file object): overlayfs.export.flatten(self, out, **options)."""
        from .export import flatten
        return flatten(self, out, **options)


def _reopen(cls: type[Stack], lowers: Sequence[_Path], upper: _Path | None, work: _Path | None,
            options: dict[str, Any]) -> Stack:
    """Unpickle a Stack: open a new one with the pickled arguments."""
    st = cls(lowers, upper, work, **options)
    st._unpickled = True
    return st
