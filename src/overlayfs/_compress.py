"""Compressed layer streams: detection by magic, streaming inflate and deflate.

Layer blobs come as plain tar, gzip (often several members: pigz, bgzip,
concatenated writers), zstd (possibly several frames) and, from older tools,
bzip2 or xz.  :func:`open_decompressed` detects which from the first bytes
(as moby's ``DecompressStream`` does) and returns a reader of the
uncompressed bytes that also digests the compressed input, so one pass
gives both the blob digest and, to the caller, the diff ID.
:func:`open_compressed` is the writing side.

Speed comes from optional extras: ``isal`` (ISA-L) or ``zlib-ng`` for gzip,
about 2.5x the stdlib's zlib, and ``zstandard`` for zstd (Python 3.14's
``compression.zstd`` is used where it exists).  Without them gzip falls back
to :mod:`zlib` and zstd raises a clear error naming the extra to install.

Output is produced in bounded pieces (:data:`CHUNK`), never a whole member at
once, so a small bomb cannot balloon memory; the caller bounds the total.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib
import io
import lzma
import zlib
from collections.abc import Callable
from typing import IO, Any, Final

CHUNK: Final = 1 << 20
"""Bytes of input read, and at most of output made, per step."""

COMPRESSIONS: Final = ("none", "gzip", "zstd", "bzip2", "xz")

_INPUT_CHUNK: Final = CHUNK // 4
"""Compressed bytes read per step: about CHUNK of output at typical layer ratios."""

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC: Final = b"BZh"
_XZ_MAGIC: Final = b"\xfd7zXZ\x00"


def detect(head: bytes) -> str:
    """The compression of a stream that starts with *head* (at least 6 bytes
    where the stream has them): one of :data:`COMPRESSIONS`."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (
        len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F
    ):
        return "zstd"  # a frame, or a skippable frame 0x184D2A5?
    if head.startswith(_BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    return "none"


def _zlib_module(inflater: str | None) -> Any:
    """The fastest zlib-compatible module installed, or the one named."""
    names = {"isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng", "zlib": "zlib"}
    if inflater is not None:
        if inflater not in names:
            raise ValueError(f"unknown inflater {inflater!r}: expected one of {sorted(names)}")
        return importlib.import_module(names[inflater])
    for name in ("isal.isal_zlib", "zlib_ng.zlib_ng"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return zlib


def gzip_implementation() -> str:
    """Which gzip implementation this process uses: ``isal``, ``zlib-ng`` or ``zlib``."""
    return {"isal.isal_zlib": "isal", "zlib_ng.zlib_ng": "zlib-ng"}.get(
        _zlib_module(None).__name__, "zlib")


def _zstd() -> Any:
    try:
        return importlib.import_module("compression.zstd")  # Python 3.14+
    except ImportError:
        pass
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        raise ValueError("this layer is zstd-compressed: install the 'zstandard' package "
                         "(pip install 'overlayfs[fast]')") from None


class _Member:
    """One streaming decompressor with the interface this module needs:
    ``step(data, limit) -> output``, ``pending`` (output or input held back),
    ``eof``, ``unused`` (bytes after the end of the member)."""

    def __init__(self, obj: Any, bounded_tail: bool):
        self._d = obj
        self._tail = bounded_tail   # zlib style: unconsumed_tail; else needs_input style
        self._held = b""

    def step(self, data: bytes, limit: int) -> bytes:
        d = self._d
        if self._tail:
            out = d.decompress(self._held + data if self._held else data, limit)
            self._held = d.unconsumed_tail
            return out
        return d.decompress(data, limit)

    @property
    def pending(self) -> bool:
        if self._tail:
            return bool(self._held)
        return not self._d.needs_input and not self._d.eof

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused(self) -> bytes:
        return bytes(self._d.unused_data)


def _member_factory(compression: str, inflater: str | None) -> Callable[[], _Member]:
    if compression == "gzip":
        zmod = _zlib_module(inflater)
        return lambda: _Member(zmod.decompressobj(31), True)
    if compression == "zstd":
        zs = _zstd()
        if zs.__name__ == "zstandard":
            return lambda: _ZstdandardMember(zs)
        return lambda: _Member(zs.ZstdDecompressor(), False)
    if compression == "bzip2":
        return lambda: _Member(bz2.BZ2Decompressor(), False)
    if compression == "xz":
        return lambda: _Member(lzma.LZMADecompressor(), False)
    raise ValueError(f"unknown compression {compression!r}: expected one of {COMPRESSIONS}")


class _ZstdandardMember(_Member):
    """zstd frames through the ``zstandard`` package, with bounded output.

    Its ``decompressobj`` returns all that an input yields, and one 4-byte RLE
    block yields 128 KiB.  So input goes in pieces sized from the ratio seen so
    far: the first piece is 256 bytes (at most 8 MiB out even for a crafted
    stream), later ones aim at :data:`CHUNK` of output.
    """

    def __init__(self, zs: Any):
        self._d = zs.ZstdDecompressor().decompressobj()
        self._held = b""
        self._piece = 256
        self._eof = False
        self._unused = b""

    def step(self, data: bytes, limit: int) -> bytes:
        data = self._held + data if self._held else data
        piece, self._held = data[:self._piece], data[self._piece:]
        out = self._d.decompress(piece)
        if out:
            self._piece = max(32, min(CHUNK, len(piece) * limit // len(out)))
        if self._d.eof:
            self._eof = True
            self._unused = bytes(self._d.unused_data) + self._held
            self._held = b""
        return out

    @property
    def pending(self) -> bool:
        return bool(self._held)

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def unused(self) -> bytes:
        return self._unused


class DecompressedReader(io.RawIOBase):
    """The uncompressed bytes of a (possibly compressed) stream.

    ``compression`` says what was detected; :meth:`digest` is the sha256 of
    every compressed byte read from the source so far (the blob digest once
    the reader is at EOF; ``hash_input=False`` skips it, a quarter of the cost
    of a fast gzip inflate); ``compressed_size`` counts them.  Several gzip
    members, zstd frames, bzip2 or xz streams in a row are one stream; bytes
    after the last one that do not start another are an error (as Go's
    readers say ``invalid header``), never silently dropped.
    """

    def __init__(self, src: IO[bytes], compression: str = "auto", *,
                 inflater: str | None = None, hash_input: bool = True, name: object = None):
        super().__init__()
        self._src = src
        self.name = name if name is not None else getattr(src, "name", None)
        self._hash: Any = hashlib.sha256() if hash_input else None
        self.compressed_size = 0
        head = self._read_src(6)
        if compression == "auto":
            compression = detect(head)
        elif compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}: expected one of {COMPRESSIONS}")
        self.compression: str = compression
        self._new = None if compression == "none" else _member_factory(compression, inflater)
        self._member = self._new() if self._new else None
        self._input = head          # compressed bytes not yet given to a member
        self._out = b""             # uncompressed bytes not yet returned
        self._src_eof = False

    def _read_src(self, n: int) -> bytes:
        data = self._src.read(n)
        if data is None:
            raise BlockingIOError("the source is non-blocking and has no data")
        if self._hash is not None:
            self._hash.update(data)
        self.compressed_size += len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def digest(self) -> str:
        """``sha256:<hex>`` of the compressed bytes read so far."""
        if self._hash is None:
            raise ValueError("opened with hash_input=False: no digest of the input")
        return "sha256:" + self._hash.hexdigest()

    def _fill(self) -> bytes:
        """The next piece of output; b"" at the end."""
        if self._member is None:  # uncompressed
            if self._input:
                data, self._input = self._input, b""
                return data
            return self._read_src(CHUNK)
        while True:
            m = self._member
            if m.eof:
                rest = m.unused + self._input
                self._input = b""
                if not rest:
                    rest = self._read_src(CHUNK)
                    if not rest:
                        return b""
                if detect(rest[:6]) != self.compression and len(rest) < 6 and not self._src_eof:
                    more = self._read_src(CHUNK)
                    rest += more
                    self._src_eof = not more
                if detect(rest[:6]) != self.compression:
                    raise ValueError(
                        f"{self._what()}: {len(rest)}+ bytes after the last {self.compression} "
                        f"stream are not another {self.compression} stream")
                assert self._new is not None
                self._member = m = self._new()
                self._input = rest
            if self._input or m.pending:
                data, self._input = self._input, b""
                out = self._step(m, data)
            else:
                data = self._read_src(_INPUT_CHUNK)
                if not data:
                    if m.eof:
                        continue
                    raise ValueError(f"{self._what()}: truncated {self.compression} stream")
                out = self._step(m, data)
            if out:
                return out

    def _step(self, m: _Member, data: bytes) -> bytes:
        try:
            return m.step(data, CHUNK)
        except MemoryError:
            raise
        except Exception as e:  # zlib.error, IsalError, ZstdError, LZMAError, OSError, EOFError
            raise ValueError(f"{self._what()}: corrupt {self.compression} stream: {e}") from None

    def _what(self) -> str:
        return str(self.name) if self.name is not None else "layer stream"

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if not self._out:
            self._out = self._fill()
            if not self._out:
                return 0
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if not self._out:
            self._out = self._fill()
        data, self._out = self._out[:size], self._out[size:]
        return data

    def read_chunk(self) -> bytes:
        """The next piece of output as it comes (up to :data:`CHUNK` bytes, often
        exactly that); b"" at the end.  Cheaper than :meth:`read` for pipelines."""
        if self._out:
            data, self._out = self._out, b""
            return data
        return self._fill()

    def readall(self) -> bytes:
        parts = [self._out]
        self._out = b""
        while piece := self._fill():
            parts.append(piece)
        return b"".join(parts)


def open_decompressed(src: IO[bytes], compression: str = "auto", *,
                      inflater: str | None = None, hash_input: bool = True) -> DecompressedReader:
    """A reader of the uncompressed bytes of *src* (a binary file object).

    *compression* is ``"auto"`` (by magic) or one of :data:`COMPRESSIONS`;
    *inflater* forces a gzip implementation (``"isal"``, ``"zlib-ng"``,
    ``"zlib"``), else the fastest installed is used.  Corrupt or truncated
    compressed data raises :class:`ValueError` naming the stream.
    """
    return DecompressedReader(src, compression, inflater=inflater, hash_input=hash_input)


class CompressedWriter(io.RawIOBase):
    """Compresses what is written to it into *dst* (not closed by :meth:`close`).

    :meth:`digest` and ``compressed_size`` describe the bytes written to *dst*
    (the blob digest once closed).
    """

    def __init__(self, dst: IO[bytes], compression: str, level: int | None = None):
        super().__init__()
        if compression not in ("none", "gzip", "zstd"):
            raise ValueError(f"cannot write {compression!r}: expected 'none', 'gzip' or 'zstd'")
        self._dst = dst
        self.compression = compression
        self._hash = hashlib.sha256()
        self.compressed_size = 0
        self._c: Any = None
        if compression == "gzip":
            zmod = _zlib_module(None)
            lvl = 6 if level is None else level
            if zmod.__name__ == "isal.isal_zlib":
                lvl = min(lvl, 3)  # ISA-L has levels 0-3
            self._c = zmod.compressobj(lvl, zlib.DEFLATED, 31)
        elif compression == "zstd":
            zs = _zstd()
            lvl = 3 if level is None else level
            if hasattr(zs, "ZstdCompressor") and hasattr(zs.ZstdCompressor, "compressobj"):
                self._c = zs.ZstdCompressor(level=lvl).compressobj()
            else:
                self._c = zs.ZstdCompressor(level=lvl)

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self.compressed_size += len(data)
            self._dst.write(data)

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed CompressedWriter")
        data = bytes(b) if not isinstance(b, bytes) else b
        self._emit(self._c.compress(data) if self._c is not None else data)
        return len(data)

    def close(self) -> None:
        if not self.closed and self._c is not None:
            self._emit(self._c.flush())
            self._c = None
        if hasattr(self._dst, "flush"):
            self._dst.flush()
        super().close()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def open_compressed(dst: IO[bytes], compression: str, level: int | None = None) -> CompressedWriter:
    """A writer that compresses into *dst* with ``"gzip"``, ``"zstd"`` or ``"none"``."""
    return CompressedWriter(dst, compression, level)
