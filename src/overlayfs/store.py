"""An overlay2-style layer store: Docker's ``/var/lib/docker/overlay2`` layout, from Python.

Layout under ``root`` (moby ``daemon/graphdriver/overlay2/overlay.go``)::

    l/<short> -> ../<id>/diff   one 26-character link per layer, keeps mount strings short
    <id>/diff                   the layer's contents (the upperdir while it is writable)
    <id>/link                   the layer's <short> name
    <id>/lower                  "l/<short>:l/<short>:…" of every layer below, top first
                                (absent for a base layer)
    <id>/work                   the overlay workdir (layers with a parent only)
    <id>/merged                 the mount point, created by mount() and removed by unmount()
    <id>/committed              present once the layer is read-only: it has a child, or
                                commit() was called; it then mounts without an upper
    <id>/tar-split.gz           layers import_image applied: the tar's header bytes
    <id>/diff-id                (docs/tar-split.md) and its diff ID, to export the same
                                bytes again (moby's layerdb ``tar-split.json.gz``/``diff``)

Creation is atomic: a layer is assembled in ``.tmp-<id>-*`` and published with one
``renameat2(RENAME_NOREPLACE)``, so a failure leaves no partial layer and a concurrent
creator of the same id gets FileExistsError. Metadata rewrites are temp + rename.
:meth:`LayerStore.repair` removes what a crash left and recreates lost ``l/`` links.

Mounting goes through :func:`overlayfs.mount` (new mount API, or mount(2) with the
paths relative to ``root`` — exactly overlay2's ``l/<short>`` strings — when the kernel is
older), with moby's reference counting and ``index=off``.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal, overload

from . import _syscalls as _sys
from ._mount import mount as _mount_overlay
from ._mount import unmount as _unmount
from ._mountopts import MAX_LOWERS
from ._namespace import _in_user_namespace
from .changes import Change, changes

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack
    from overlayfs.export import ExportResult
    from overlayfs.image import Image, Platform

__all__ = ["Change", "ImportResult", "Layer", "LayerStore", "stack_from_layer_dir"]

LINK_DIR: Final = "l"
#: overlay2's short link length: (26 + len("l/") + 1) * 128 layers fits in a page.
LINK_LENGTH: Final = 26
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")
_SHORT = re.compile(r"[A-Za-z0-9]{1,64}\Z")
_TMP_PREFIX: Final = ".tmp-"
_TRASH_PREFIX: Final = ".trash-"
#: Where import_image records the images it imported (not a layer id: starts with '.').
IMAGES_DIR: Final = ".images"
#: Beside ``diff``: the tar-split record of the tar a layer was applied from, and its diff ID.
TAR_SPLIT: Final = "tar-split.gz"
DIFF_ID: Final = "diff-id"

# Mount reference counts, per mount point, shared by every LayerStore in the process
# (moby daemon/internal/mountref: the first use adopts a mount that already exists).
_mount_counts: dict[str, int] = {}
_mount_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer's metadata as read from disk."""

    id: str
    path: str  #: <root>/<id>
    link: str | None  #: the short name under l/ (None if the link file is missing)
    lower: tuple[str, ...]  #: the lower file's entries, "l/<short>", top first
    committed: bool

    @property
    def diff(self) -> str:
        return os.path.join(self.path, "diff")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @property
    def merged(self) -> str:
        return os.path.join(self.path, "merged")


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What :meth:`LayerStore.import_image` did."""

    top: str  #: the id of the image's top layer (``store.stack(top)`` is the image's rootfs)
    layers: tuple[str, ...]  #: every layer id of the image, bottom first
    created: tuple[str, ...]  #: the ids this call applied (the others were there already)
    image_id: str  #: the config digest
    ref: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _new_short() -> str:
    """A random 26-character link name, base32 like moby's overlayutils.GenerateID."""
    return base64.b32encode(os.urandom(20)).decode("ascii")[:LINK_LENGTH]


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, mode: int, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: write a temp file beside it, rename."""
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        _write_file(tmp, data, mode, durable)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(os.path.dirname(path))


@overload
def _lock_dir(path: str, blocking: Literal[True]) -> int: ...


@overload
def _lock_dir(path: str, blocking: Literal[False]) -> int | None: ...


def _lock_dir(path: str, blocking: bool) -> int | None:
    """flock a directory; returns the fd holding the lock, or None if someone else holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_mount_point(path: str) -> bool:
    """``path`` is the root of a mount (its mount id differs from its parent's). 2 statx."""
    try:
        here = _sys.mount_id(path)
        above = _sys.mount_id(os.path.dirname(path.rstrip("/")) or "/")
    except OSError:
        return False
    if here is None or above is None:
        return os.path.ismount(path)
    return here != above


class LayerStore:
    """Layers laid out like Docker's overlay2 driver under ``root``.

    ``readonly=True`` (see :meth:`open_docker`) refuses every change with EROFS and mounts
    only read-only views at targets you choose. ``xattr_namespace`` (``"trusted"`` or
    ``"user"``) is the one overlay xattr namespace used for views and mounts; by default
    ``"user"`` inside a user namespace (with ``userxattr``), else ``"trusted"``.
    ``mount_options`` are added to every mount (default ``index=off`` like moby, when the
    module knows the option). ``durable=False`` skips the fsyncs (tests, scratch stores).
    """

    def __init__(self, root: str | os.PathLike[str], *, readonly: bool = False,
                 xattr_namespace: Literal["trusted", "user"] | None = None,
                 mount_options: Mapping[str, Any] | None = None, durable: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.readonly = readonly
        self.durable = durable
        if xattr_namespace is None:
            xattr_namespace = "user" if _in_user_namespace() else "trusted"
        if xattr_namespace not in ("trusted", "user"):
            raise ValueError(f"xattr_namespace must be 'trusted' or 'user', not "
                             f"{xattr_namespace!r}")
        self.xattr_namespace: Literal["trusted", "user"] = xattr_namespace
        options: dict[str, Any] = {}
        if os.path.exists("/sys/module/overlay/parameters/index"):
            options["index"] = "off"  # as moby: an index would tie the upper to its lowers
        options["userxattr"] = xattr_namespace == "user"
        options.update(mount_options or {})
        self.mount_options = options
        if readonly:
            if not os.path.isdir(os.path.join(self.root, LINK_DIR)):
                raise FileNotFoundError(errno.ENOENT, f"not an overlay2 layer store (no "
                                        f"{LINK_DIR}/ directory)", self.root)
        else:
            os.makedirs(self.root, mode=0o710, exist_ok=True)
            os.makedirs(os.path.join(self.root, LINK_DIR), mode=0o700, exist_ok=True)

    @classmethod
    def open_docker(cls, path: str | os.PathLike[str] = "/var/lib/docker/overlay2",
                    **kwargs: Any) -> LayerStore:
        """Open an existing Docker (or containers/storage) overlay2 tree read-only."""
        return cls(path, readonly=True, **kwargs)

    def __repr__(self) -> str:
        return f"<overlayfs.LayerStore {self.root!r}{' read-only' if self.readonly else ''}>"

    # --- paths and metadata -------------------------------------------------------------

    def _dir(self, layer_id: str) -> str:
        if not isinstance(layer_id, str) or not _ID.match(layer_id) or layer_id == LINK_DIR:
            raise ValueError(f"invalid layer id {layer_id!r}: use letters, digits, '_', '.' "
                             f"and '-', starting with a letter or digit (and not 'l')")
        return os.path.join(self.root, layer_id)

    def _writable(self, step: str) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, f"{step}: the layer store is open read-only", self.root)

    def __contains__(self, layer_id: object) -> bool:
        return isinstance(layer_id, str) and bool(_ID.match(layer_id)) and \
            layer_id != LINK_DIR and os.path.isdir(os.path.join(self.root, layer_id, "diff"))

    def layers(self) -> list[str]:
        """The ids of every layer (a directory with a ``diff``), sorted. One scandir."""
        return sorted(name for name in os.listdir(self.root)
                      if name != LINK_DIR and _ID.match(name)
                      and os.path.isdir(os.path.join(self.root, name, "diff")))

    def get(self, layer_id: str) -> Layer:
        """The metadata of one layer; FileNotFoundError if there is none. 3 small reads."""
        path = self._dir(layer_id)
        if not os.path.isdir(os.path.join(path, "diff")):
            raise FileNotFoundError(errno.ENOENT, f"no layer {layer_id!r}", path)
        link = (_read_text(os.path.join(path, "link")) or "").strip() or None
        lower_text = (_read_text(os.path.join(path, "lower")) or "").strip()
        lower = tuple(lower_text.split(":")) if lower_text else ()
        committed = os.path.exists(os.path.join(path, "committed"))
        return Layer(layer_id, path, link, lower, committed)

    def _symlink_owner(self, short: str) -> str | None:
        """The id whose diff ``l/<short>`` points at (None if the link is missing)."""
        try:
            target = os.readlink(os.path.join(self.root, LINK_DIR, short))
        except OSError:
            return None
        parts = target.split("/")
        if len(parts) == 3 and parts[0] == ".." and parts[2] == "diff":
            return parts[1]
        return None

    def _link_index(self) -> dict[str, str]:
        """short name -> id, from every layer's ``link`` file (one read per layer)."""
        index = {}
        for layer_id in self.layers():
            name = (_read_text(os.path.join(self.root, layer_id, "link")) or "").strip()
            if name:
                index[name] = layer_id
        return index

    def _resolve_lower(self, layer: Layer) -> list[str]:
        """The ids of the layers below ``layer``, top first, through the ``l/`` links (or,
        where a link is lost, the ``link`` files); FileNotFoundError if one is missing."""
        index: dict[str, str] | None = None
        ids = []
        for entry in layer.lower:
            short = entry.split("/", 1)[1] if entry.startswith(f"{LINK_DIR}/") else entry
            owner = self._symlink_owner(short)
            if owner is None:
                if index is None:
                    index = self._link_index()
                owner = index.get(short)
            if owner is None or owner not in self:
                raise FileNotFoundError(errno.ENOENT, f"layer {layer.id!r}: lower layer "
                                        f"{entry!r} does not exist", layer.path)
            ids.append(owner)
        return ids

    def parent(self, layer_id: str) -> str | None:
        """The id of the layer directly below ``layer_id``, or None for a base layer."""
        layer = self.get(layer_id)
        if not layer.lower:
            return None
        return self._resolve_lower(dataclasses.replace(layer, lower=layer.lower[:1]))[0]

    def chain(self, layer_id: str) -> list[str]:
        """``layer_id`` followed by every layer below it, top first."""
        return [layer_id, *self._resolve_lower(self.get(layer_id))]

    def children(self, layer_id: str) -> list[str]:
        """The layers whose parent is ``layer_id``. Reads every layer's lower file."""
        link = self.get(layer_id).link
        if link is None:
            return []
        first = f"{LINK_DIR}/{link}"
        found = []
        for other in self.layers():
            text = (_read_text(os.path.join(self.root, other, "lower")) or "").strip()
            if text.split(":", 1)[0] == first:
                found.append(other)
        return found

    # --- create / remove / commit ---------------------------------------------------------

    def create(self, layer_id: str, parent: str | None = None, *,
               populate: Callable[[str], object] | None = None) -> Layer:
        """Create an empty layer on top of ``parent`` (which becomes committed).

        Atomic: assembled in a temporary directory and renamed into place, so after a
        failure nothing of the layer is left; if another creator publishes the same id
        first, this one gets FileExistsError. ValueError past :data:`MAX_LOWERS` layers.
        ``populate(path)``, if given, must create ``path`` (the layer's ``diff`` in the
        temporary directory) with the layer's contents; an exception from it abandons the
        layer (:meth:`import_image` applies a layer tar this way).
        Cost: ~10 system calls plus a few fsyncs (with ``durable``).
        """
        self._writable("create")
        final = self._dir(layer_id)
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, f"create: layer {layer_id!r} already exists",
                                  final)
        lower = ""
        if parent is not None:
            below = self.get(parent)
            if below.link is None:
                raise FileNotFoundError(errno.ENOENT, f"create: parent {parent!r} has no "
                                        f"link file (LayerStore.repair() recreates it)",
                                        below.path)
            entries = [f"{LINK_DIR}/{below.link}", *below.lower]
            if len(entries) > MAX_LOWERS:
                raise ValueError(f"create: max depth exceeded: {layer_id!r} would have "
                                 f"{len(entries)} layers below it; the kernel mounts at most "
                                 f"{MAX_LOWERS} (OVL_MAX_STACK)")
            lower = ":".join(entries)

        tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{layer_id}-", dir=self.root)
        lock = _lock_dir(tmp, blocking=True)
        link_path = None
        try:
            os.chmod(tmp, 0o710)
            if populate is None:
                os.mkdir(os.path.join(tmp, "diff"), 0o755)
            else:
                populate(os.path.join(tmp, "diff"))
            while True:  # a fresh short name; the symlink's creation is the uniqueness test
                short = _new_short()
                link_path = os.path.join(self.root, LINK_DIR, short)
                try:
                    os.symlink(f"../{layer_id}/diff", link_path)
                    break
                except FileExistsError:
                    link_path = None
            _write_file(os.path.join(tmp, "link"), short.encode(), 0o644, self.durable)
            if parent is not None:
                os.mkdir(os.path.join(tmp, "work"), 0o700)
                _write_file(os.path.join(tmp, "lower"), lower.encode(), 0o644, self.durable)
            if self.durable:
                _fsync_dir(tmp)
            self._before_publish(layer_id)
            try:
                _sys.renameat2(tmp, final, _sys.RENAME_NOREPLACE)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(
                        errno.EEXIST, f"create: layer {layer_id!r} was created concurrently "
                        f"by another creator", final) from None
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                os.rename(tmp, final)  # no RENAME_NOREPLACE here: the target is non-empty
            if self.durable:
                _fsync_dir(self.root)
        except BaseException:
            if link_path is not None:
                os.unlink(link_path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock)
        if parent is not None:
            self._mark_committed(parent)
        return self.get(layer_id)

    def _before_publish(self, layer_id: str) -> None:
        """Hook called just before a new layer is renamed into place (tests use it)."""

    def _mark_committed(self, layer_id: str) -> None:
        path = os.path.join(self._dir(layer_id), "committed")
        if not os.path.exists(path):
            _write_atomic(path, b"", 0o600, self.durable)

    def commit(self, layer_id: str) -> None:
        """Mark a layer read-only (``<id>/committed``, as moby does for parents): it then
        mounts without an upper. EBUSY while it is mounted writable."""
        self._writable("commit")
        layer = self.get(layer_id)
        if not layer.committed and layer.lower and _is_mount_point(layer.merged):
            raise OSError(errno.EBUSY, f"commit: layer {layer_id!r} is mounted writable; "
                          f"unmount it first", layer.merged)
        self._mark_committed(layer_id)

    def remove(self, layer_id: str) -> None:
        """Delete a layer and its ``l/`` link. EBUSY if it is mounted or is the parent of
        another layer. The layer disappears at once (one rename) and is then deleted."""
        self._writable("remove")
        layer = self.get(layer_id)
        if _is_mount_point(layer.merged):
            raise OSError(errno.EBUSY, f"remove: layer {layer_id!r} is mounted", layer.merged)
        kids = self.children(layer_id)
        if kids:
            raise OSError(errno.EBUSY, f"remove: layer {layer_id!r} is the parent of "
                          f"{', '.join(map(repr, kids))}", layer.path)
        trash = os.path.join(self.root, f"{_TRASH_PREFIX}{layer_id}-{os.urandom(4).hex()}")
        lock = _lock_dir(layer.path, blocking=True)  # held across the rename: repair skips it
        try:
            os.rename(layer.path, trash)
            if layer.link and self._symlink_owner(layer.link) == layer_id:
                try:
                    os.unlink(os.path.join(self.root, LINK_DIR, layer.link))
                except FileNotFoundError:
                    pass
            shutil.rmtree(trash)
        finally:
            os.close(lock)

    def repair(self) -> list[str]:
        """Bring the store back to a consistent state after a crash; returns what was done.

        Removes abandoned ``.tmp-*``/``.trash-*`` directories (not those a live creator or
        remover still holds), writes missing ``link`` files (reusing a surviving ``l/``
        entry), recreates missing or wrong ``l/`` links, and removes ``l/`` links to layers
        that no longer exist. A layer that lost both its ``link`` file and its ``l/`` entry
        gets a new name, which the ``lower`` files of its children cannot know.
        Cost: reads every layer's link file and every ``l/`` entry.
        """
        self._writable("repair")
        actions: list[str] = []
        busy: set[str] = set()
        for name in sorted(os.listdir(self.root)):
            if not name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                continue
            path = os.path.join(self.root, name)
            lock = _lock_dir(path, blocking=False)
            if lock is None:  # a creator or remover is still at work
                busy.add(name.split("-", 1)[1].rsplit("-", 1)[0])
                continue
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(lock)
            actions.append(f"removed the abandoned {name}")

        link_dir = os.path.join(self.root, LINK_DIR)
        targets: dict[str, str | None] = {}
        for short in os.listdir(link_dir):
            try:
                targets[short] = os.readlink(os.path.join(link_dir, short))
            except OSError:
                targets[short] = None
        by_owner = {t.split("/")[1]: s for s, t in targets.items()
                    if t and t.startswith("../") and t.endswith("/diff") and t.count("/") == 2}
        claimed: set[str] = set()
        for layer_id in self.layers():
            link_file = os.path.join(self.root, layer_id, "link")
            short = (_read_text(link_file) or "").strip()
            if not _SHORT.match(short) or short in claimed:
                short = by_owner.get(layer_id) or _new_short()
                while short in claimed or (short in targets and short != by_owner.get(layer_id)):
                    short = _new_short()
                _write_atomic(link_file, short.encode(), 0o644, self.durable)
                actions.append(f"wrote {layer_id}/link ({short})")
            claimed.add(short)
            want = f"../{layer_id}/diff"
            if targets.get(short) != want:
                path = os.path.join(link_dir, short)
                if short in targets:
                    os.unlink(path)
                os.symlink(want, path)
                targets[short] = want
                actions.append(f"linked {LINK_DIR}/{short} -> {want}")
        for short, target in sorted(targets.items()):
            if short in claimed or (target and os.path.isdir(os.path.join(link_dir, target))):
                continue  # still leads to a layer: lower files may name it
            owner = target.split("/")[1] if target and target.count("/") == 2 else None
            if owner in busy:
                continue
            os.unlink(os.path.join(link_dir, short))
            actions.append(f"removed the stale {LINK_DIR}/{short} -> {target}")
        return actions

    # --- images --------------------------------------------------------------------------

    def import_image(self, image: Image | str | os.PathLike[str], *,
                     platform: Platform | str | None = None, ref: str | None = None,
                     whiteouts: Literal["chardev", "xattr"] = "chardev",
                     max_layer_size: int | None = None,
                     progress: Callable[[int], object] | None = None) -> ImportResult:
        """Import an image (an :class:`overlayfs.image.Image`, or a path for
        :func:`overlayfs.image.open_image` with *platform* and *ref*) into the store, the way
        ``docker load`` fills overlay2: each layer applied once by
        :func:`overlayfs.apply.apply_layer` into ``<id>/diff`` over the layers below it,
        with ``link``, ``lower`` and ``l/<short>`` as dockerd writes them.

        Layer ids are the chain ID's hex digits (dockerd uses a random cache id and keeps
        the chain ID in its layerdb; here the id *is* the chain ID), so a layer that two
        images share is applied once and later imports skip it. Every layer's diff ID is
        verified, and its blob digest too, before the layer is published; a failure leaves
        no trace of that layer (the ones below it stay, complete and reusable). An image
        record goes to ``<root>/.images/<config hex>.json`` (see :meth:`images`).
        *progress* gets the number of layer bytes read since its previous call. Layers
        applied here are committed (read-only); ``create(new, parent=result.top)`` gives a
        writable layer over the image.
        """
        from .apply import apply_layer
        from .image import DiffIDMismatchError, ImageError, open_image

        self._writable("import_image")
        own = not hasattr(image, "layers")
        img: Image = open_image(image, platform=platform, ref=ref) if own else image  # type: ignore[arg-type,assignment]
        try:
            ids: list[str] = []
            created: list[str] = []
            parent: str | None = None
            for n, layer in enumerate(img.layers):
                if layer.chain_id is None or layer.diff_id is None:
                    raise ImageError(f"import_image: layer {n} ({layer.digest}) has no diff ID "
                                     f"in the image config")
                layer_id = layer.chain_id.split(":", 1)[1]
                if layer_id not in self:
                    lowers = [] if parent is None else \
                        [os.path.join(self.root, parent, "diff"), *self.lower_dirs(parent)]
                    last = [0]

                    def report(done: int, last: list[int] = last) -> None:
                        if progress is not None:
                            progress(done - last[0])
                            last[0] = done

                    def populate(diff: str, layer: Any = layer, lowers: list[str] = lowers,
                                 report: Callable[[int], None] = report) -> None:
                        here = os.path.dirname(diff)
                        with layer.open() as blob, \
                                open(os.path.join(here, TAR_SPLIT), "wb") as split:
                            result = apply_layer(blob, diff, lowers=lowers, mode="layer",
                                                 whiteouts=whiteouts, xattr_ns=self.xattr_namespace,
                                                 expect_diff_id=layer.diff_id,
                                                 max_size=max_layer_size, sync=self.durable,
                                                 tar_split=split, progress=report)
                            if self.durable:
                                split.flush()
                                os.fsync(split.fileno())
                        if layer.digest.startswith("sha256:") and result.digest != layer.digest:
                            raise DiffIDMismatchError(
                                f"layer {layer.digest}: the blob hashes to {result.digest}",
                                layer.digest, result.digest)
                        _write_file(os.path.join(here, DIFF_ID), result.diff_id.encode(), 0o644,
                                    self.durable)

                    try:
                        self.create(layer_id, parent, populate=populate)
                        created.append(layer_id)
                    except FileExistsError:
                        if layer_id not in self:  # not a concurrent import of the same layer
                            raise
                elif parent is not None:
                    want = self.get(layer_id).lower[:1]
                    link = self.get(parent).link
                    if want and link and want[0] != f"{LINK_DIR}/{link}":
                        raise ValueError(f"import_image: layer {layer_id} exists over another "
                                         f"parent than {parent}")
                ids.append(layer_id)
                parent = layer_id
            if parent is not None:
                self._mark_committed(parent)
            record = {"id": img.id, "ref": img.ref, "repo_tags": img.repo_tags,
                      "manifest_digest": img.manifest_digest, "layers": ids,
                      "diff_ids": [la.diff_id for la in img.layers], "config": img.config}
            os.makedirs(os.path.join(self.root, IMAGES_DIR), mode=0o700, exist_ok=True)
            _write_atomic(os.path.join(self.root, IMAGES_DIR, img.id.split(":", 1)[1] + ".json"),
                          json.dumps(record).encode(), 0o600, self.durable)
            return ImportResult(ids[-1] if ids else "", tuple(ids), tuple(created), img.id,
                                img.ref)
        finally:
            if own:
                img.close()

    def export_image(self, layer_id: str, dest: str | os.PathLike[str], *,
                     exporter: Callable[[str, IO[bytes]], object] | None = None,
                     compression: str = "gzip", ref: str | None = None) -> str:
        """Write the image whose top layer is ``layer_id`` as an OCI image layout at *dest*
        (:func:`overlayfs.image.write_oci_layout`); returns the manifest digest.

        Each layer's ``diff`` dir, bottom first, becomes a layer tar through
        ``exporter(diff_dir, out)``, which writes the tar to the binary file *out*; the
        default is :meth:`export_layer` (graphdriver ``Diff``), which gives an imported,
        unchanged layer's original bytes back (with ``compression="none"`` the layer
        digests are then the original diff IDs). The config is the one :meth:`import_image` recorded for an image with
        exactly these layers, if any (its ``rootfs`` recomputed from the tars written),
        else a minimal one for the running machine. Temporary tars go beside *dest*.
        """
        from .image import write_oci_layout

        ids = list(reversed(self.chain(layer_id)))
        config = next((rec.get("config") for rec in self.images()
                       if rec.get("layers") == ids), None)
        where = os.path.dirname(os.path.abspath(os.fspath(dest))) or "."
        os.makedirs(where, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=where) as tmp:
            tars = []
            for n, lid in enumerate(ids):
                path = os.path.join(tmp, f"{n}.tar")
                with open(path, "wb") as out:
                    if exporter is None:
                        self.export_layer(lid, out)
                    else:
                        exporter(os.path.join(self.root, lid, "diff"), out)
                tars.append(path)
            return write_oci_layout(dest, tars, config=config, compression=compression, ref=ref)

    def export_layer(self, layer_id: str, out: str | os.PathLike[str] | IO[bytes],
                     **options: Any) -> ExportResult:
        """Write layer ``layer_id`` as a layer tar to ``out`` (graphdriver ``Diff``):
        :func:`overlayfs.export.export_layer` of its ``diff`` dir, with the store's xattr
        namespace and its lower layers (for the naive-diff fallback). A layer that
        :meth:`import_image` applied keeps the tar-split record of its tar
        (``<id>/tar-split.gz``) and its diff ID (``<id>/diff-id``): while the layer is
        unchanged the original bytes come out (``result.reassembled``), so the
        original diff ID; a changed layer exports deterministically;
        :class:`overlayfs.errors.DiffIDMismatchError` if a file's content changed
        with its size kept. ``options`` as for :func:`overlayfs.export.export_layer`.
        """
        from .export import export_layer

        layer = self.get(layer_id)
        split = os.path.join(layer.path, TAR_SPLIT)
        if "tar_split" not in options and os.path.exists(split):
            options["tar_split"] = split
            if "expect_diff_id" not in options:
                options["expect_diff_id"] = (_read_text(os.path.join(layer.path, DIFF_ID))
                                             or "").strip() or None
        options.setdefault("xattr_ns", self.xattr_namespace)
        options.setdefault("lowers", self.lower_dirs(layer_id))
        return export_layer(layer.diff, out, **options)

    def images(self) -> list[dict[str, Any]]:
        """The records :meth:`import_image` wrote (``id``, ``ref``, ``repo_tags``,
        ``layers`` bottom first, ``diff_ids``, ``config``), sorted by id."""
        folder = os.path.join(self.root, IMAGES_DIR)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json"):
                text = _read_text(os.path.join(folder, name))
                if text:
                    out.append(json.loads(text))
        return out

    # --- views and mounts -----------------------------------------------------------------

    def lower_dirs(self, layer_id: str) -> list[str]:
        """The diff directories below ``layer_id``, top first (moby's ``LowerDir``)."""
        return [os.path.join(self.root, i, "diff") for i in self.chain(layer_id)[1:]]

    def _view(self, layer_id: str) -> tuple[list[str], str | None, str | None]:
        """(lowers, upper, work) of the view ``mount(layer_id)`` gives."""
        layer = self.get(layer_id)
        below = [os.path.join(self.root, i, "diff") for i in self._resolve_lower(layer)]
        if not below or layer.committed or self.readonly:
            return [layer.diff, *below], None, None
        return below, layer.diff, layer.work

    def stack(self, layer_id: str, **kwargs: Any) -> Stack:
        """An ``overlayfs.Stack`` over the same layers ``mount(layer_id)`` would mount,
        without mounting: writable (upper = diff) for an uncommitted layer with a parent in
        a writable store, read-only otherwise. ``kwargs`` go to ``Stack``; by default it
        reads the layers in the kernel's whiteout form, as a mount does (a file named
        ``.wh.x`` is a file)."""
        from overlayfs import Stack

        lowers, upper, work = self._view(layer_id)
        kwargs.setdefault("xattr_namespace", self.xattr_namespace)
        kwargs.setdefault("whiteouts", "kernel")
        return Stack(lowers, upper, work, **kwargs)

    def mount(self, layer_id: str, target: str | os.PathLike[str] | None = None) -> str:
        """Mount a layer's view and return the path to use; reference counted.

        As moby's ``Get``: a base layer (no lower file) is not mounted and its ``diff`` is
        returned; otherwise the overlay goes on ``<id>/merged`` (created here), writable
        with ``diff`` as upper unless the layer is committed. A read-only store needs a
        ``target`` and always mounts read-only (a base layer as a read-only bind mount).
        A repeated call only increments the count. Missing ``l/`` links are recreated
        (writable stores). Cost: one overlay mount the first time, else a dict update.
        """
        layer = self.get(layer_id)
        if target is None:
            if self.readonly:
                raise ValueError("a read-only store does not mount inside its own tree: pass "
                                 "target=")
            if not layer.lower:
                return layer.diff
            point = layer.merged
        else:
            point = os.path.abspath(os.fspath(target))
        with _mount_lock:
            count = _mount_counts.get(point)
            if count is None:  # first sight: adopt a mount that is already there
                count = 1 if _is_mount_point(point) else 0
            if count > 0:
                _mount_counts[point] = count + 1
                return point
            if target is None:
                os.makedirs(point, mode=0o700, exist_ok=True)
            try:
                self._mount_at(layer, point)
            except BaseException:
                if target is None:
                    try:
                        os.rmdir(point)
                    except OSError:
                        pass
                raise
            _mount_counts[point] = 1
        return point

    def _mount_at(self, layer: Layer, point: str) -> None:
        below = [os.path.join(self.root, entry) for entry in layer.lower]
        missing = [p for p in below if not os.path.isdir(p)]
        if missing and not self.readonly:
            self.repair()
            missing = [p for p in below if not os.path.isdir(p)]
        if missing:
            raise FileNotFoundError(errno.ENOENT, f"mount: layer {layer.id!r}: lower link(s) "
                                    f"missing ({', '.join(missing[:3])}); "
                                    f"LayerStore.repair() recreates them", missing[0])
        readonly = layer.committed or self.readonly
        if not below:  # a lone layer: the kernel needs 2 lowers for a read-only overlay
            flags = _sys.MS_BIND
            _sys.mount(layer.diff, point, None, flags, None)
            if readonly:
                _sys.mount(None, point, None, flags | _sys.MS_REMOUNT | _sys.MS_RDONLY, None)
            return
        if readonly:
            if len(below) + 1 > MAX_LOWERS:
                raise ValueError(f"mount: committed layer {layer.id!r} needs "
                                 f"{len(below) + 1} lowers read-only; the kernel allows "
                                 f"{MAX_LOWERS}")
            _mount_overlay(point, [layer.diff, *below], options=self.mount_options)
        else:
            _mount_overlay(point, below, layer.diff, layer.work, options=self.mount_options)

    def unmount(self, layer_id: str, target: str | os.PathLike[str] | None = None) -> None:
        """Drop one reference from :meth:`mount`; the last one unmounts (``MNT_DETACH`` as
        moby does, so a busy mount is detached rather than kept) and removes ``merged``."""
        layer = self.get(layer_id)
        if target is None:
            if self.readonly or not layer.lower:
                return
            point = layer.merged
        else:
            point = os.path.abspath(os.fspath(target))
        with _mount_lock:
            count = _mount_counts.get(point)
            if count is None:
                count = 1 if _is_mount_point(point) else 0
            if count > 1:
                _mount_counts[point] = count - 1
                return
            _mount_counts.pop(point, None)
            if count == 1:
                _unmount(point, lazy=True)
            if target is None:
                try:
                    os.rmdir(point)
                except OSError:
                    pass

    def mount_count(self, layer_id: str, target: str | os.PathLike[str] | None = None) -> int:
        """How many :meth:`mount` calls of this process hold the layer's mount point."""
        point = (self.get(layer_id).merged if target is None
                 else os.path.abspath(os.fspath(target)))
        return _mount_counts.get(point, 0)

    # --- diff ------------------------------------------------------------------------------

    def diff(self, layer_id: str) -> list[Change]:
        """The changes ``layer_id`` makes to its parent's view, sorted by path: see
        :func:`overlayfs.changes.changes`, which this calls with the layer's ``diff`` over
        the ``diff`` directories below it, in the kernel's whiteout form (overlay2's)."""
        layer = self.get(layer_id)
        below = [os.path.join(self.root, i, "diff") for i in self._resolve_lower(layer)]
        return changes(layer.diff, below, xattr_namespace=self.xattr_namespace, whiteouts="kernel")


def stack_from_layer_dir(path: str | os.PathLike[str], **kwargs: Any) -> Stack:
    """``Stack.from_layer_dir``: the read-only view of one overlay2 layer directory
    (``/var/lib/docker/overlay2/<id>``: its ``diff`` over every layer its ``lower`` file
    names), without mounting. ``kwargs`` go to ``Stack``."""
    layer_dir = os.path.abspath(os.fspath(path)).rstrip("/")
    root, layer_id = os.path.split(layer_dir)
    store = LayerStore(root, readonly=True,
                       xattr_namespace=kwargs.get("xattr_namespace"))
    return store.stack(layer_id, **kwargs)
