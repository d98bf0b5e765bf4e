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
- ``Stack.path()`` (``StackPath``, pathlib-style, a Traversable) and, with
  fsspec installed, the ``overlay://`` filesystem (``overlayfs.fsspec``).
"""
from ._check import CheckReport, check
from ._core import CacheInfo, CopyUp, Entry
from ._mount import Mount, mount, unmount
from ._mountinfo import MountInfo, mounts
from ._mountopts import MAX_LOWERS
from ._namespace import run_in_private_namespace, run_in_user_namespace
from .changes import Change
from .containers import Target, open_container, resolve_target
from .path import StackPath
from .stack import Stack
from .store import Layer, LayerStore, stack_from_layer_dir

__all__ = [
    "MAX_LOWERS",
    "CacheInfo",
    "Change",
    "CheckReport",
    "CopyUp",
    "Entry",
    "Layer",
    "LayerStore",
    "Mount",
    "MountInfo",
    "Stack",
    "StackPath",
    "Target",
    "check",
    "mount",
    "mounts",
    "open_container",
    "resolve_target",
    "run_in_private_namespace",
    "run_in_user_namespace",
    "stack_from_layer_dir",
    "unmount",
]
__version__ = "0.1.0"
