"""overlayfs: the Linux OverlayFS view of a stack of layer directories.

- ``Stack``: resolve paths across layers exactly as the kernel's overlayfs
  does -- whiteouts, opaque directories, redirects, metacopy, merged
  listings -- without mounting (``overlayfs.stack``, over the C core's
  binding ``_core``).
- ``mount``/``unmount``/``mounts``/``check``: real kernel overlay mounts
  through the new mount API (``lowerdir+``) or mount(2), past the page and
  layer-count limits.
- ``LayerStore``: an overlay2-style layer store (``<id>/diff``, ``l/``
  short links, ``lower`` files) that Docker's tools recognize.
- ``Stack.diff``/``LayerStore.diff`` (``overlayfs.changes``): what an upper
  layer changes in the view of its lowers, as ``Change`` tuples.
- ``open_image`` (``overlayfs.image``): OCI image layouts and ``docker save``
  archives, their layers, diff IDs and chain IDs; ``LayerStore.import_image``.
- ``apply_layer`` (``overlayfs.apply``): a layer tar into a layer directory
  (dockerd's overlay2 ApplyDiff) or a rootfs; its errors in ``overlayfs.errors``.
- ``export_layer``/``flatten``/``squash`` (``overlayfs.export``): a layer dir,
  a merged view, or a range of layers out as one layer tar.
- ``open_container`` (``overlayfs.containers``): a Docker or podman container's
  or image's layers, read from the engine's own store without a daemon.
- ``Stack.path()`` (``StackPath``, pathlib-style, a Traversable) and, with
  fsspec installed, the ``overlay://`` filesystem (``overlayfs.fsspec``).
"""
from ._check import CheckReport, check
from ._core import CacheInfo, CopyUp, Entry
from ._mount import Mount, mount, unmount
from ._mountinfo import MountInfo, mounts
from ._mountopts import MAX_LOWERS
from ._namespace import run_in_private_namespace, run_in_user_namespace
from .apply import ApplyResult, apply_layer
from .changes import Change
from .containers import Target, open_container, resolve_target
from .errors import (
    ArchiveError,
    ArchiveTooLargeError,
    CorruptArchiveError,
    DiffIDMismatchError,
    InvalidWhiteoutError,
    TruncatedArchiveError,
    UnsafeArchiveError,
    UnsupportedLayerError,
)
from .export import ExportResult, export_layer, flatten, squash
from .image import Image, ImageLayer, Platform, chain_id, diff_id, open_image, write_oci_layout
from .path import StackPath
from .stack import Stack
from .store import ImportResult, Layer, LayerStore, stack_from_layer_dir

__all__ = [
    "MAX_LOWERS",
    "ApplyResult",
    "ArchiveError",
    "ArchiveTooLargeError",
    "CacheInfo",
    "Change",
    "CheckReport",
    "CopyUp",
    "CorruptArchiveError",
    "DiffIDMismatchError",
    "Entry",
    "ExportResult",
    "Image",
    "ImageLayer",
    "ImportResult",
    "InvalidWhiteoutError",
    "Layer",
    "LayerStore",
    "Mount",
    "MountInfo",
    "Platform",
    "Stack",
    "StackPath",
    "Target",
    "TruncatedArchiveError",
    "UnsafeArchiveError",
    "UnsupportedLayerError",
    "apply_layer",
    "chain_id",
    "check",
    "diff_id",
    "export_layer",
    "flatten",
    "mount",
    "mounts",
    "open_container",
    "open_image",
    "resolve_target",
    "run_in_private_namespace",
    "run_in_user_namespace",
    "squash",
    "stack_from_layer_dir",
    "unmount",
    "write_oci_layout",
]
__version__ = "0.1.0"
