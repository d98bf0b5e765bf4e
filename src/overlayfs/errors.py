"""The errors of moving layers in and out: applying a layer tar
(overlayfs.apply) and exporting a layer (overlayfs.export).

A layer tar is hostile input: what is wrong with it is a ``ValueError``
subclass carrying ``.entry``, the name of the entry at fault as the tar
spells it (``str``, undecodable bytes as surrogate escapes; ``None`` when no
entry is to blame).  A system call that fails is an ``OSError`` with the
entry's name as its filename.  This module imports nothing of the package:
the compiled binding raises these classes.
"""

from __future__ import annotations

import os

__all__ = [
    "ArchiveError",
    "ArchiveTooLargeError",
    "CorruptArchiveError",
    "DiffIDMismatchError",
    "InvalidWhiteoutError",
    "TruncatedArchiveError",
    "UnsafeArchiveError",
    "UnsupportedLayerError",
]


class ArchiveError(ValueError):
    """A layer tar that cannot be applied as it is; ``.entry`` names the entry."""

    def __init__(self, message: str, entry: str | bytes | None = None):
        if isinstance(entry, bytes):
            entry = os.fsdecode(entry)
        self.entry: str | None = entry
        super().__init__(f"{entry!r}: {message}" if entry is not None else message)


class CorruptArchiveError(ArchiveError):
    """A bad header, checksum, number, PAX record or sparse map; non-zero bytes
    after the end blocks; an id or device number out of range; a corrupt
    compressed stream."""


class TruncatedArchiveError(CorruptArchiveError):
    """The stream ended inside a header, an extension header or an entry's data."""


class UnsafeArchiveError(ArchiveError):
    """An entry name or hardlink target that is empty or escapes the root ("..")."""


class InvalidWhiteoutError(ArchiveError):
    """``.wh.`` alone, ``.wh..``, ``.wh...``, the whiteout of another marker, a char
    device 0:0 in the tar, or an opaque layer root with no lowers to emulate it."""


class ArchiveTooLargeError(ArchiveError):
    """More uncompressed bytes than ``max_size``, or an extension header past 1 MiB."""


class DiffIDMismatchError(ArchiveError):
    """The sha256 of the uncompressed stream is not the expected diff ID."""

    def __init__(self, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"diff ID mismatch: expected {expected}, got {actual}")


_MESSAGES = {
    1: (CorruptArchiveError, "corrupt archive"),
    2: (TruncatedArchiveError, "truncated archive"),
    3: (UnsafeArchiveError, "unsafe entry name or link target"),
    4: (InvalidWhiteoutError, "invalid whiteout"),
    6: (ArchiveTooLargeError, "archive too large"),
}


def _from_class(cls: int, err: int, entry: bytes | None) -> ArchiveError:
    """The exception for an enum ovl_apply_class (csrc/ovl.h) and its errno."""
    kind, message = _MESSAGES.get(cls, (CorruptArchiveError, "invalid archive"))
    if cls == 4 and entry is None:
        message = "an opaque layer root needs the lower layers (lowers=) to be emulated"
    elif err and kind is not TruncatedArchiveError:
        message = f"{message} ({os.strerror(err)})"
    if cls == 4 and entry is not None and entry.rstrip(b"/").rsplit(b"/", 1)[-1] == b".wh..wh..opq":
        message = "an opaque layer root needs the lower layers (lowers=) to be emulated"
    return kind(message, entry)


class UnsupportedLayerError(ValueError):
    """A layer that cannot be exported on its own: a directory renamed with
    redirect_dir=on (<ns>.overlay.redirect) or a metacopy file keeps part of
    its meaning in the layers below.  ``path`` names the entry, ``reason`` is
    "redirect" or "metacopy"."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: the layer holds a {reason} "
                         f"(<ns>.overlay.{reason}); export it with its lower layers")
        self.path = path
        self.reason = reason
