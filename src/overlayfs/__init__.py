"""overlayfs: the Linux OverlayFS view of a stack of layer directories.

Resolve paths across layers exactly as the kernel's overlayfs does --
whiteouts, opaque directories, redirects, metacopy, merged listings --
without mounting (``Stack``, backed by a C core).
"""
from ._core import CacheInfo, Entry, Stack

__all__ = ["CacheInfo", "Entry", "Stack"]
__version__ = "0.1.0"
