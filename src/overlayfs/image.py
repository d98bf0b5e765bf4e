"""Container images: OCI image layouts and ``docker save`` archives, read without extracting.

:func:`open_image` opens

- an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``),
- the same layout in a tar (skopeo's ``oci-archive:``),
- a ``docker save`` archive: legacy (``manifest.json``, ``<id>/layer.tar``, ``<hex>.json``,
  as Docker up to 24 writes it) or Docker 25+ (an OCI layout plus ``manifest.json``; where
  its ``index.json`` says ``"manifests": null`` the ``manifest.json`` is used),
- a directory holding an extracted ``docker save`` archive.

Archives are read in place: the tar's member table is read once and each blob is a
window onto the archive file (``os.pread`` for a path), so a 10 GB archive costs no
temporary space. A tar must therefore be seekable: a path or a seekable binary file
object; a pipe is refused with :class:`ImageError` (copy it to a file first, as the
``overlayfs`` command line does for ``-``). A compressed archive (``docker save | gzip``)
is refused the same way.

Every name read from an image is confined to it: digests must match the OCI grammar
(``sha256:<64 hex>``, so never a path), ``manifest.json`` paths that are absolute or
climb out with ``..`` are refused, and in an archive symlinks and hard links between
members (``docker save`` links identical ``layer.tar`` files) are followed inside the
archive only, as moby's ``load.go`` does with ``FollowSymlinkInScope``, except that a
link leading outside is refused rather than clamped. A member name that is absolute or
climbs out with ``..`` makes the whole archive :class:`UnsafeImageError`, as ``docker
load`` refuses to untar it. In a layout directory, blobs are opened with
``openat2(RESOLVE_IN_ROOT)`` semantics emulated by refusing symlinks that leave the root.

Unknown media types never raise (image-layout.md); blobs may be missing (a layout with
only some platforms' blobs): :meth:`ImageLayer.open` then raises :class:`MissingBlobError`.
Diff IDs are checked when asked (``open(verify=True)``, :meth:`ImageLayer.verify`), and
always by :meth:`overlayfs.LayerStore.import_image`.

:func:`diff_id` and :func:`chain_id` are the OCI ``config.md`` formulas;
:func:`write_oci_layout` writes an image back out as an OCI layout from layer tars.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform as _platform
import posixpath
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Final, Union

from ._compress import CHUNK, DecompressedReader, detect, open_compressed, open_decompressed
from .errors import DiffIDMismatchError as _ApplyDiffIDMismatchError

__all__ = [
    "DiffIDMismatchError",
    "Image",
    "ImageError",
    "ImageLayer",
    "MissingBlobError",
    "Platform",
    "UnsafeImageError",
    "chain_id",
    "diff_id",
    "open_image",
    "parse_image_ref",
    "write_oci_layout",
]

# --- media types -------------------------------------------------------------------------

MT_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_INDEX_TYPES: Final = (MT_OCI_INDEX, MT_DOCKER_LIST)
_MANIFEST_TYPES: Final = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
REF_ANNOTATION: Final = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME: Final = "io.containerd.image.name"

# OCI descriptor.md: algorithm ":" encoded; registered sha256/sha512 are lowercase hex.
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)\Z")
_HEX_LEN: Final = {"sha256": 64, "sha512": 128}

_MAX_JSON: Final = 64 << 20  # manifests, indexes and configs are small; refuse a bomb


class ImageError(ValueError):
    """An image that cannot be read as asked: malformed, ambiguous, or no such platform/ref."""


class UnsafeImageError(ImageError):
    """A name in the image (archive member, manifest path, link) would lead outside it."""


class MissingBlobError(ImageError, FileNotFoundError):
    """A blob the image names is not in the layout or archive."""

    def __init__(self, message: str, digest: str | None = None):
        ImageError.__init__(self, message)
        self.digest = digest

    def __str__(self) -> str:
        return str(self.args[0])


class DiffIDMismatchError(ImageError, _ApplyDiffIDMismatchError):
    """A layer's bytes do not hash to the digest or diff ID the image declares. Also an
    :class:`overlayfs.errors.DiffIDMismatchError` (what ``apply_layer`` raises), so one
    ``except`` catches a mismatch found while reading or while applying."""

    def __init__(self, message: str, expected: str, actual: str):
        ValueError.__init__(self, message)
        self.entry = None
        self.expected = expected
        self.actual = actual


# --- digests -----------------------------------------------------------------------------


def _check_digest(digest: object, what: str) -> str:
    if not isinstance(digest, str):
        raise ImageError(f"{what}: digest {digest!r} is not a string")
    m = _DIGEST.match(digest)
    if m is None:
        raise UnsafeImageError(f"{what}: malformed digest {digest!r}")
    alg, enc = m.groups()
    want = _HEX_LEN.get(alg)
    if want is not None and (len(enc) != want or not re.fullmatch(r"[0-9a-f]+", enc)):
        raise ImageError(f"{what}: malformed {alg} digest {digest!r}")
    return digest


def _blob_path(digest: str) -> str:
    alg, enc = digest.split(":", 1)
    return f"blobs/{alg}/{enc}"


Source = Union[str, "os.PathLike[str]", IO[bytes], Iterable[bytes]]


def _iter_source(src: Source) -> Iterator[bytes]:
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            yield from _iter_source(f)
        return
    if hasattr(src, "read"):
        reader: Any = src
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                return
            yield chunk
    else:
        yield from src  # type: ignore[misc]


class _IterReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        super().__init__()
        self._it = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = bytes(next(self._it))
            except StopIteration:
                return 0
        view = memoryview(b).cast("B")
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def diff_id(src: Source) -> str:
    """``sha256:<hex>`` of the uncompressed bytes of a layer: *src* is a path, a binary file
    object or an iterable of bytes; gzip, zstd, bzip2, xz or none, detected by magic (the
    diff ID of an uncompressed tar is the sha256 of the file itself)."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            return diff_id(f)
    fobj: Any = src if hasattr(src, "read") else _IterReader(iter(src))  # type: ignore[arg-type]
    reader = open_decompressed(fobj, hash_input=False)
    h = hashlib.sha256()
    while chunk := reader.read_chunk():
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain ID of the layers with these diff IDs, bottom first (OCI ``config.md``):
    ``ChainID(L0) = DiffID(L0)``, ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " +
    DiffID(Ln))``. ValueError for an empty list."""
    if not diff_ids:
        raise ValueError("chain_id of no layers")
    chain = _check_digest(diff_ids[0], "chain_id")
    for d in diff_ids[1:]:
        _check_digest(d, "chain_id")
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain


def _chain_ids(diff_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


# --- platforms ---------------------------------------------------------------------------

_MACHINE: Final = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"), "i386": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    "mips64": ("mips64", None), "loongarch64": ("loong64", None),
}


@dataclasses.dataclass(frozen=True)
class Platform:
    """An image platform: ``os``, ``architecture`` and the optional ``variant``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``"linux/amd64"``, ``"linux/arm64/v8"``, or ``"amd64"`` (linux assumed)."""
        parts = text.strip().split("/")
        if len(parts) == 1 and parts[0]:
            return cls("linux", parts[0])
        if len(parts) in (2, 3) and all(parts):
            return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
        raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")

    @classmethod
    def current(cls) -> Platform:
        """The running machine's platform (``linux/amd64``, ``linux/arm64/v8``, ...)."""
        arch, variant = _MACHINE.get(_platform.machine().lower(), (_platform.machine(), None))
        return cls("linux", arch, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, spec: Mapping[str, Any] | None) -> bool:
        """Whether a descriptor's ``platform`` object is this platform. A missing variant on
        either side matches (``arm64`` images rarely say ``v8``)."""
        if not spec:
            return True
        if spec.get("os") != self.os or spec.get("architecture") != self.architecture:
            return False
        other = spec.get("variant")
        return not (self.variant and other and other != self.variant)


# --- sources: where the files of an image come from ---------------------------------------


class _Window(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + size)`` onto a file."""

    def __init__(self, owner: _TarSource, offset: int, size: int, name: str):
        super().__init__()
        self._owner = owner
        self._offset = offset
        self._size = size
        self._pos = 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._owner.pread(n, self._offset + self._pos)
        if not data:
            raise ImageError(f"{self.name}: the archive ends inside this member (truncated)")
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        return self.read(max(self._size - self._pos, 0)) or b""


class _Source:
    """Files of an image, by slash-separated relative path."""

    description: str

    def open(self, path: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        try:
            self.size(path)
        except FileNotFoundError:
            return False
        return True

    def read_json(self, path: str) -> Any:
        with self.open(path) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise ImageError(f"{self.description}: {path} is larger than {_MAX_JSON} bytes")
        try:
            return json.loads(data)
        except ValueError as e:
            raise ImageError(f"{self.description}: {path} is not valid JSON: {e}") from None

    def close(self) -> None:
        pass


def _clean_relative(name: str, what: str) -> str:
    """A member or manifest path as a clean relative path; UnsafeImageError if it is
    absolute or climbs out."""
    if name.startswith("/") or "\0" in name:
        raise UnsafeImageError(f"{what}: absolute path {name!r}")
    clean = posixpath.normpath(name)
    if clean == ".." or clean.startswith("../"):
        raise UnsafeImageError(f"{what}: path {name!r} leads outside the image")
    return "" if clean == "." else clean


class _DirSource(_Source):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._real = os.path.realpath(self.root)
        self.description = self.root

    def _path(self, path: str) -> str:
        rel = _clean_relative(path, self.description)
        full = os.path.join(self.root, rel)
        real = os.path.realpath(full)
        if real != self._real and not real.startswith(self._real + os.sep):
            raise UnsafeImageError(f"{self.description}: {path!r} resolves outside the "
                                   f"directory (to {real!r})")
        return real

    def open(self, path: str) -> IO[bytes]:
        full = self._path(path)
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"{self.description}: {path} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def size(self, path: str) -> int:
        st = os.stat(self._path(path))
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{self.description}: {path} is not a regular file")
        return st.st_size


class _TarSource(_Source):
    """The members of an uncompressed tar, read in place."""

    def __init__(self, src: str | os.PathLike[str] | IO[bytes]):
        self._fd: int | None = None
        self._fobj: IO[bytes] | None = None
        if isinstance(src, (str, os.PathLike)):
            self.description = os.fspath(src)
            self._fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            fobj: IO[bytes] = os.fdopen(os.dup(self._fd), "rb")
        else:
            self.description = str(getattr(src, "name", "<image stream>"))
            try:
                seekable = src.seekable()
                if seekable:
                    src.tell()
            except (AttributeError, OSError):
                seekable = False
            if not seekable:
                raise ImageError(f"{self.description}: an image archive must be seekable (a file, "
                                 f"not a pipe): copy the stream to a file first")
            self._fobj = fobj = src
        try:
            start = fobj.tell()
            head = fobj.read(512)
            fobj.seek(start)
            kind = detect(head[:6])
            if kind != "none":
                raise ImageError(f"{self.description}: a {kind}-compressed archive; decompress it "
                                 f"first (image archives are read in place)")
            self._members: dict[str, tarfile.TarInfo] = {}
            try:
                with tarfile.open(fileobj=fobj, mode="r:") as tf:
                    for info in tf:
                        self._add(info)
            except tarfile.TarError as e:
                raise ImageError(f"{self.description}: not a readable tar archive: {e}") from None
        finally:
            if self._fd is not None:
                fobj.close()

    def _add(self, info: tarfile.TarInfo) -> None:
        name = _clean_relative(info.name, f"{self.description}: member")
        if not name:
            return
        self._members[name] = info  # a later duplicate wins, as an extraction would

    def pread(self, n: int, offset: int) -> bytes:
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        assert self._fobj is not None
        self._fobj.seek(offset)
        return self._fobj.read(n)

    def _resolve(self, path: str) -> tarfile.TarInfo:
        """The regular-file member *path* names, following symlinks and hard links inside
        the archive; FileNotFoundError or UnsafeImageError."""
        todo = _clean_relative(path, self.description).split("/")
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise UnsafeImageError(f"{self.description}: {path!r} leads outside the "
                                           f"archive")
                done.pop()
                continue
            cur = "/".join([*done, part])
            info = self._members.get(cur)
            if info is not None and (info.issym() or (info.islnk() and not todo)):
                hops += 1
                if hops > 40:
                    raise ImageError(f"{self.description}: too many links resolving {path!r}")
                target = info.linkname
                if target.startswith("/"):
                    raise UnsafeImageError(f"{self.description}: member {cur!r} links to the "
                                           f"absolute path {target!r}")
                if info.islnk():  # hard link: target is relative to the archive root
                    done = []
                todo = target.split("/") + todo
                continue
            done.append(part)
        full = "/".join(done)
        info = self._members.get(full) if not todo else None
        if info is None:
            raise FileNotFoundError(f"{self.description}: no member {path!r}")
        if not info.isreg():
            raise ImageError(f"{self.description}: member {full!r} is not a regular file")
        return info

    def open(self, path: str) -> IO[bytes]:
        info = self._resolve(path)
        return io.BufferedReader(_Window(self, info.offset_data, info.size, path), CHUNK)  # type: ignore[arg-type]

    def size(self, path: str) -> int:
        return self._resolve(path).size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- verifying readers -------------------------------------------------------------------


class _Verifying(io.RawIOBase):
    """Passes *inner* through, hashing it; at EOF the sha256 must be *expected*."""

    def __init__(self, inner: IO[bytes], expected: str, what: str, size: int | None = None):
        super().__init__()
        self._inner = inner
        self._hash = hashlib.sha256()
        self._expected = expected
        self._what = what
        self._size = size
        self._n = 0
        self._checked = False
        self.name = getattr(inner, "name", what)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self._inner.read(len(view))
        if not data:
            self._check()
            return 0
        n = len(data)
        view[:n] = data
        self._hash.update(data)
        self._n += n
        return n

    def read_chunk(self) -> bytes:
        chunk = getattr(self._inner, "read_chunk", None)
        data = chunk() if chunk is not None else self._inner.read(CHUNK)
        if not data:
            self._check()
            return b""
        self._hash.update(data)
        self._n += len(data)
        return data

    def _check(self) -> None:
        if self._checked or not self._expected.startswith("sha256:"):
            return
        self._checked = True
        actual = "sha256:" + self._hash.hexdigest()
        if self._size is not None and self._n != self._size:
            raise DiffIDMismatchError(f"{self._what}: {self._n} bytes, the image says "
                                      f"{self._size}", self._expected, actual)
        if actual != self._expected:
            raise DiffIDMismatchError(f"{self._what}: the bytes hash to {actual}, the image "
                                      f"says {self._expected}", self._expected, actual)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


# --- the image model ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageLayer:
    """One layer of an image, bottom first in :attr:`Image.layers`.

    ``digest``/``size``/``media_type`` describe the blob as stored (compressed or not);
    ``diff_id`` is the sha256 of its uncompressed tar (from the config; None where the
    config does not list one); ``chain_id`` identifies the layer with everything below
    it (None without diff IDs).
    """

    digest: str
    diff_id: str | None
    media_type: str
    size: int | None
    chain_id: str | None
    path: str = dataclasses.field(repr=False, compare=False, default="")
    _source: _Source | None = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def available(self) -> bool:
        """Whether the blob is present (layouts and archives may omit blobs)."""
        return self._source is not None and self._source.exists(self.path)

    def open(self, verify: bool = False) -> IO[bytes]:
        """The blob as stored (a binary file object). ``verify=True`` checks, at EOF, that
        its bytes hash to ``digest`` (and number ``size``): DiffIDMismatchError.
        MissingBlobError if the image lacks the blob."""
        if self._source is None:
            raise MissingBlobError(f"layer {self.digest}: no blob", self.digest)
        try:
            f = self._source.open(self.path)
        except FileNotFoundError:
            raise MissingBlobError(f"{self._source.description}: layer blob {self.digest} is "
                                   f"missing ({self.path})", self.digest) from None
        if not verify:
            return f
        return io.BufferedReader(_Verifying(f, self.digest, f"layer blob {self.digest}",  # type: ignore[arg-type]
                                            self.size), CHUNK)

    def open_decompressed(self, verify: bool = False) -> IO[bytes]:
        """The layer's uncompressed tar (compression by magic). ``verify=True`` checks the
        blob digest and the diff ID at EOF (DiffIDMismatchError). The reader has
        ``read_chunk()`` for cheap streaming."""
        raw = self.open(verify=verify)
        reader: IO[bytes] = open_decompressed(raw, hash_input=False)  # type: ignore[assignment]
        if verify and self.diff_id is not None:
            reader = _Verifying(reader, self.diff_id, f"layer {self.digest}: diff ID")  # type: ignore[assignment]
        return reader

    def verify(self) -> None:
        """Read the whole layer and check its digest and diff ID (DiffIDMismatchError)."""
        with self.open_decompressed(verify=True) as r:
            read = getattr(r, "read_chunk", None)
            while (read() if read is not None else r.read(CHUNK)):
                pass

    def compute_diff_id(self) -> str:
        """The sha256 of the uncompressed blob, computed (no check against the config)."""
        with self.open() as f:
            return diff_id(f)


class Image:
    """An image read by :func:`open_image`: ``config`` (parsed JSON), ``manifest`` (parsed
    JSON: the OCI/Docker manifest, or the ``manifest.json`` entry of a legacy archive),
    ``layers`` (bottom first), ``platform``, ``ref`` and ``format`` (``"oci"``,
    ``"oci-archive"``, ``"docker-archive"``, ``"docker-dir"``). A context manager: closing
    it closes the archive (open layer streams must be read first)."""

    def __init__(self, source: _Source, fmt: str, manifest: dict[str, Any],
                 config: dict[str, Any], config_digest: str, layers: list[ImageLayer],
                 ref: str | None, repo_tags: list[str], manifest_digest: str | None):
        self._source = source
        self.format = fmt
        self.manifest = manifest
        self.config = config
        self.config_digest = config_digest
        self.layers = layers
        self.ref = ref
        self.repo_tags = repo_tags
        self.manifest_digest = manifest_digest

    @property
    def id(self) -> str:
        """The image ID: the config's digest (what ``docker images`` shows)."""
        return self.config_digest

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids") or [])

    @property
    def platform(self) -> Platform:
        return Platform(str(self.config.get("os", "")), str(self.config.get("architecture", "")),
                        self.config.get("variant"))

    @property
    def chain_id(self) -> str | None:
        """The top layer's chain ID (None for an image without layers)."""
        return self.layers[-1].chain_id if self.layers else None

    def verify(self) -> None:
        """Check every layer's digest and diff ID (reads them all)."""
        for layer in self.layers:
            layer.verify()

    def save(self, dest: str | os.PathLike[str], *, compression: str = "gzip",
             ref: str | None = None) -> str:
        """Write this image as an OCI layout at *dest* (see :func:`write_oci_layout`; the
        layers are recompressed with *compression*, the diff IDs stay). Returns the
        manifest digest."""
        return write_oci_layout(dest, [layer.open for layer in self.layers], config=self.config,
                                compression=compression, ref=ref or self.ref)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<overlayfs.Image {self.format} {self.ref or self.config_digest[:19]} "
                f"{self.platform} {len(self.layers)} layers>")


# --- reading -----------------------------------------------------------------------------


def _layers_from(source: _Source, manifest: Mapping[str, Any], config: Mapping[str, Any],
                 what: str) -> list[ImageLayer]:
    descs = manifest.get("layers")
    if not isinstance(descs, list):
        raise ImageError(f"{what}: the manifest has no layers list")
    rootfs = config.get("rootfs") if isinstance(config, Mapping) else None
    diff_ids = list(rootfs.get("diff_ids") or []) if isinstance(rootfs, Mapping) else []
    if diff_ids and len(diff_ids) != len(descs):
        raise ImageError(f"{what}: the manifest lists {len(descs)} layers, the config "
                         f"{len(diff_ids)} diff IDs")
    for d in diff_ids:
        _check_digest(d, f"{what}: config diff_ids")
    chains = _chain_ids(diff_ids) if diff_ids else []
    out = []
    for i, desc in enumerate(descs):
        if not isinstance(desc, Mapping):
            raise ImageError(f"{what}: layer {i} is not a descriptor")
        digest = _check_digest(desc.get("digest"), f"{what}: layer {i}")
        size = desc.get("size")
        out.append(ImageLayer(digest, diff_ids[i] if diff_ids else None,
                              str(desc.get("mediaType", "")),
                              size if isinstance(size, int) else None,
                              chains[i] if chains else None, _blob_path(digest), source))
    return out


def _read_blob_json(source: _Source, desc: Mapping[str, Any], what: str) -> tuple[Any, str]:
    digest = _check_digest(desc.get("digest"), what)
    path = _blob_path(digest)
    try:
        with source.open(path) as f:
            data = f.read(_MAX_JSON + 1)
    except FileNotFoundError:
        raise MissingBlobError(f"{source.description}: {what} blob {digest} is missing",
                               digest) from None
    if len(data) > _MAX_JSON:
        raise ImageError(f"{source.description}: {what} {digest} is too large")
    if digest.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise DiffIDMismatchError(f"{source.description}: {what} blob does not match its "
                                  f"digest {digest}", digest,
                                  "sha256:" + hashlib.sha256(data).hexdigest())
    try:
        return json.loads(data), digest
    except ValueError as e:
        raise ImageError(f"{source.description}: {what} {digest} is not JSON: {e}") from None


def _ref_names(desc: Mapping[str, Any]) -> list[str]:
    ann = desc.get("annotations") or {}
    return [v for k in (REF_ANNOTATION, _CONTAINERD_NAME) if isinstance(v := ann.get(k), str)]


def _ref_matches(want: str, names: Sequence[str]) -> bool:
    for n in names:
        if n == want:
            return True
        short = n.split("/")[-1]  # docker.io/library/busybox:1 ~ busybox:1
        if short == want or (":" not in want and short == f"{want}:latest"):
            return True
    return False


def _collect(source: _Source, index: Mapping[str, Any], plat: Platform, depth: int,
             found: list[tuple[Mapping[str, Any], list[str]]], seen: list[str],
             refs: list[str]) -> None:
    if depth > 8:
        raise ImageError(f"{source.description}: image indexes nested more than 8 deep")
    manifests = index.get("manifests")
    if manifests is None:
        return
    if not isinstance(manifests, list):
        raise ImageError(f"{source.description}: index 'manifests' is not a list")
    for desc in manifests:
        if not isinstance(desc, Mapping):
            continue
        mt = desc.get("mediaType")
        if mt in _INDEX_TYPES:
            if not plat.matches(desc.get("platform")):
                continue
            child, _ = _read_blob_json(source, desc, "nested index")
            if isinstance(child, Mapping):
                _collect(source, child, plat, depth + 1, found, seen, refs)
        elif mt in _MANIFEST_TYPES:
            p = desc.get("platform")
            if isinstance(p, Mapping):
                seen.append(str(Platform(str(p.get("os")), str(p.get("architecture")),
                                         p.get("variant"))))
            if plat.matches(p if isinstance(p, Mapping) else None):
                found.append((desc, refs))
        # unknown media types (attestations, artifacts, ...) are skipped, never an error


def _open_oci(source: _Source, fmt: str, index: Mapping[str, Any], plat: Platform,
              ref: str | None, explicit_platform: bool) -> Image | None:
    """The image an OCI index selects; None if the index lists no manifests at all."""
    top = index.get("manifests")
    if top is None:
        return None
    if not isinstance(top, list):
        raise ImageError(f"{source.description}: index.json 'manifests' is not a list")
    if not top:
        return None
    entries = [d for d in top if isinstance(d, Mapping)]
    if ref is not None:
        picked = [d for d in entries if _ref_matches(ref, _ref_names(d))]
        if not picked:
            known = sorted({n for d in entries for n in _ref_names(d)})
            raise ImageError(f"{source.description}: no image with ref {ref!r} "
                             f"(refs: {', '.join(known) or 'none'})")
        entries = picked
    found: list[tuple[Mapping[str, Any], list[str]]] = []
    seen: list[str] = []
    groups = []
    for d in entries:
        before = len(found)
        _collect(source, {"manifests": [d]}, plat, 0, found, seen, _ref_names(d))
        if len(found) > before:
            groups.append(d)
    if not found:
        avail = ", ".join(sorted(set(seen))) or "none listed"
        raise ImageError(f"{source.description}: no image for platform {plat} "
                         f"(platforms: {avail})" + ("" if explicit_platform else
                                                    "; pass a platform"))
    if len(groups) > 1 and ref is None:
        names = sorted({n for d in groups for n in _ref_names(d)}) or \
            [str(d.get("digest")) for d in groups]
        raise ImageError(f"{source.description}: {len(groups)} images; choose one with a ref "
                         f"({', '.join(names)})")
    desc, refs = found[0]
    manifest, mdigest = _read_blob_json(source, desc, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), Mapping):
        raise ImageError(f"{source.description}: manifest {desc.get('digest')} has no config")
    config, cdigest = _read_blob_json(source, manifest["config"], "config")
    if not isinstance(config, dict):
        raise ImageError(f"{source.description}: config {cdigest} is not an object")
    layers = _layers_from(source, manifest, config, f"{source.description}: manifest {mdigest}")
    name = next((n for n in refs if n), None)
    return Image(source, fmt, manifest, config, cdigest, layers, ref or name, list(refs), mdigest)


def _open_docker(source: _Source, fmt: str, ref: str | None) -> Image:
    entries = source.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{source.description}: manifest.json lists no images")
    picked: list[Mapping[str, Any]] = []
    if ref is not None:
        picked = [e for e in entries if isinstance(e, Mapping)
                  and _ref_matches(ref, list(e.get("RepoTags") or []))]
        if not picked:
            known = sorted({t for e in entries if isinstance(e, Mapping)
                            for t in e.get("RepoTags") or []})
            raise ImageError(f"{source.description}: no image tagged {ref!r} "
                             f"(tags: {', '.join(known) or 'none'})")
    else:
        picked = [e for e in entries if isinstance(e, Mapping)]
        if len(picked) > 1:
            tags = sorted({t for e in picked for t in e.get("RepoTags") or []})
            raise ImageError(f"{source.description}: {len(picked)} images; choose one with a "
                             f"ref ({', '.join(tags) or 'untagged'})")
    entry = dict(picked[0])
    what = f"{source.description}: manifest.json"
    cfg_path = entry.get("Config")
    if not isinstance(cfg_path, str):
        raise ImageError(f"{what}: no Config")
    cfg_path = _clean_relative(cfg_path, what)
    with source.open(cfg_path) as f:
        raw = f.read(_MAX_JSON + 1)
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ImageError(f"{what}: config {cfg_path} is not JSON: {e}") from None
    cdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
    paths = entry.get("Layers")
    if not isinstance(paths, list):
        raise ImageError(f"{what}: no Layers list")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(paths):
        raise ImageError(f"{what}: {len(paths)} layers but the config lists "
                         f"{len(diff_ids)} diff IDs")
    chains = _chain_ids([_check_digest(d, f"{what}: diff_ids") for d in diff_ids])
    sources = entry.get("LayerSources") or {}
    layers = []
    descs = []
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise ImageError(f"{what}: layer {i} is not a path")
        p = _clean_relative(p, what)
        src_desc = sources.get(diff_ids[i]) if isinstance(sources, Mapping) else None
        try:
            size: int | None = source.size(p)
            with source.open(p) as f:
                kind = detect(f.read(6))
        except FileNotFoundError:
            size, kind = None, "none"
        if isinstance(src_desc, Mapping) and "digest" in src_desc:  # a foreign layer
            digest = _check_digest(src_desc["digest"], what)
            mt = str(src_desc.get("mediaType", MT_DOCKER_LAYER_GZIP))
        elif kind == "none":
            digest, mt = diff_ids[i], MT_DOCKER_LAYER  # uncompressed: the blob is the tar
        else:
            with source.open(p) as f:
                h = hashlib.sha256()
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            digest, mt = "sha256:" + h.hexdigest(), MT_DOCKER_LAYER_GZIP
        layers.append(ImageLayer(digest, diff_ids[i], mt, size, chains[i], p, source))
        descs.append({"mediaType": mt, "digest": digest, "size": size})
    tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    return Image(source, fmt, entry, config, cdigest, layers,
                 ref or (tags[0] if tags else None), tags, None)


def _split_platform(platform: Platform | str | None) -> tuple[Platform, bool]:
    if platform is None:
        return Platform.current(), False
    if isinstance(platform, str):
        return Platform.parse(platform), True
    return platform, True


def open_image(path: str | os.PathLike[str] | IO[bytes], *,
               platform: Platform | str | None = None, ref: str | None = None) -> Image:
    """Open an image: an OCI layout directory, an OCI layout tar, a ``docker save`` archive
    (legacy or Docker 25+), or a directory holding an extracted ``docker save``.

    *path* is a path or a seekable binary file object (a tar). *platform* (``"os/arch[/
    variant]"`` or a :class:`Platform`) picks a manifest from an image index; default: the
    running machine. *ref* picks an image by its ``org.opencontainers.image.ref.name``
    annotation (OCI; ``io.containerd.image.name`` too) or a ``RepoTags`` entry (``docker
    save``); without it a layout or archive with several images is ImageError.
    Errors: ImageError (and its subclasses UnsafeImageError, MissingBlobError), OSError.
    """
    plat, explicit = _split_platform(platform)
    source: _Source
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        source = _DirSource(os.fspath(path))
        kind = "dir"
    else:
        source = _TarSource(path)
        kind = "archive"
    try:
        return _open(source, kind, plat, ref, explicit)
    except BaseException:
        source.close()
        raise


def _open(source: _Source, kind: str, plat: Platform, ref: str | None, explicit: bool) -> Image:
    has_index = source.exists("index.json")
    has_docker = source.exists("manifest.json")
    if has_index:
        layout = source.read_json("oci-layout") if source.exists("oci-layout") else None
        if layout is not None and (not isinstance(layout, Mapping)
                                   or not isinstance(layout.get("imageLayoutVersion"), str)):
            raise ImageError(f"{source.description}: oci-layout has no imageLayoutVersion")
        index = source.read_json("index.json")
        if not isinstance(index, Mapping):
            raise ImageError(f"{source.description}: index.json is not an object")
        fmt = ("docker-archive" if has_docker else "oci-archive") if kind == "archive" else \
            ("docker-dir" if has_docker else "oci")
        try:
            image = _open_oci(source, fmt, index, plat, ref, explicit)
        except ImageError:
            if not has_docker:
                raise
            image = None  # Docker 25+: manifest.json is the authority when index.json fails
        if image is not None:
            return image
        if not has_docker:
            raise ImageError(f"{source.description}: index.json lists no manifests")
    if has_docker:
        return _open_docker(source, "docker-archive" if kind == "archive" else "docker-dir", ref)
    raise ImageError(f"{source.description}: not an image (no index.json or manifest.json)")


# --- image references for the command line -----------------------------------------------


def parse_image_ref(text: str) -> tuple[str, str, str | None]:
    """``oci:DIR[:REF]``, ``oci-archive:TAR[:REF]``, ``docker-archive:TAR[:REPO:TAG]`` or a
    bare path -> ``(transport, path, ref)``; transport ``"auto"`` for a bare path."""
    for transport in ("oci-archive", "docker-archive", "oci"):
        prefix = transport + ":"
        if text.startswith(prefix):
            rest = text[len(prefix):]
            if os.path.exists(rest) or rest == "-":
                return transport, rest, None
            path, sep, ref = rest.partition(":")
            if transport == "docker-archive" and sep:
                # docker-archive:TAR:REPO:TAG -- the path is up to the first ':' that leaves
                # an existing file
                for i, ch in enumerate(rest):
                    if ch == ":" and os.path.exists(rest[:i]):
                        return transport, rest[:i], rest[i + 1:] or None
            return transport, path, (ref or None) if sep else None
    return "auto", text, None


# --- writing -----------------------------------------------------------------------------

LayerInput = Union[str, "os.PathLike[str]", IO[bytes], Callable[[], IO[bytes]]]


def _write_blob(root: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(root, _blob_path(digest))
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return {"digest": digest, "size": len(data)}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def write_oci_layout(dest: str | os.PathLike[str], layers: Iterable[LayerInput], *,
                     config: Mapping[str, Any] | None = None, compression: str = "gzip",
                     ref: str | None = None, platform: Platform | str | None = None,
                     annotations: Mapping[str, str] | None = None) -> str:
    """Write an image as an OCI image layout at *dest* (created if missing; an existing
    layout gets the new manifest added to its ``index.json``). Returns the manifest digest.

    *layers*, bottom first, are layer tars: paths, binary file objects, or callables
    returning one (called once each, in order: so a generator of ``export_layer`` output
    plugs in), any compression (detected by magic). Each is stored with *compression*
    (``"gzip"``, ``"zstd"`` or ``"none"``); its diff ID is computed on the way. *config* is
    the image config to start from (``rootfs`` is replaced; default: a minimal config for
    *platform*, default the running machine). *ref* becomes the manifest's
    ``org.opencontainers.image.ref.name`` (an existing entry with that ref is replaced).
    Blobs are written under temp names and renamed, ``index.json`` last, so a failure leaves
    the previous index intact.
    """
    root = os.fspath(dest)
    media = {"gzip": MT_OCI_LAYER_GZIP, "zstd": MT_OCI_LAYER_ZSTD, "none": MT_OCI_LAYER}
    if compression not in media:
        raise ValueError(f"compression must be 'gzip', 'zstd' or 'none', not {compression!r}")
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    layout_path = os.path.join(root, "oci-layout")
    if not os.path.exists(layout_path):
        with open(layout_path, "wb") as lf:
            lf.write(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    descs = []
    diff_ids = []
    for item in layers:
        src = item() if callable(item) else item
        close = not hasattr(src, "read") or callable(item)
        f: Any = open(src, "rb") if isinstance(src, (str, os.PathLike)) else src
        try:
            desc, did = _write_layer_blob(root, f, compression)
        finally:
            if close:
                f.close()
        desc["mediaType"] = media[compression]
        descs.append(desc)
        diff_ids.append(did)
    if config is not None:
        cfg = json.loads(json.dumps(config))
    else:
        plat, _ = _split_platform(platform)
        cfg = {"architecture": plat.architecture, "os": plat.os, "config": {}}
        if plat.variant:
            cfg["variant"] = plat.variant
    cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    history = cfg.get("history")
    if isinstance(history, list) and \
            sum(1 for h in history if not (isinstance(h, Mapping) and h.get("empty_layer"))) \
            != len(diff_ids):
        cfg.pop("history")  # it would describe other layers
    config_desc = {"mediaType": MT_OCI_CONFIG, **_write_blob(root, _json_bytes(cfg))}
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                                "config": config_desc,
                                "layers": [{"mediaType": d["mediaType"], "digest": d["digest"],
                                            "size": d["size"]} for d in descs]}
    if annotations:
        manifest["annotations"] = dict(annotations)
    mdesc: dict[str, Any] = {"mediaType": MT_OCI_MANIFEST,
                             **_write_blob(root, _json_bytes(manifest))}
    mdesc["platform"] = {"architecture": cfg.get("architecture"), "os": cfg.get("os")}
    if cfg.get("variant"):
        mdesc["platform"]["variant"] = cfg["variant"]
    if ref:
        mdesc["annotations"] = {REF_ANNOTATION: ref}
    index_path = os.path.join(root, "index.json")
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path, "rb") as fh:
            index = json.load(fh)
        index["manifests"] = [m for m in index.get("manifests") or []
                              if not (ref and (m.get("annotations") or {}).get(REF_ANNOTATION)
                                      == ref)]
    index["manifests"].append(mdesc)
    tmp = index_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(_json_bytes(index))
    os.replace(tmp, index_path)
    return str(mdesc["digest"])


def _write_layer_blob(root: str, src: IO[bytes], compression: str) -> tuple[dict[str, Any], str]:
    """Store one layer (re)compressed; returns its descriptor (digest, size) and diff ID."""
    blobs = os.path.join(root, "blobs", "sha256")
    reader: DecompressedReader = open_decompressed(src, hash_input=False)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=blobs)
    try:
        with os.fdopen(fd, "wb") as out:
            w = open_compressed(out, compression)
            while chunk := reader.read_chunk():
                h.update(chunk)
                w.write(chunk)
            w.close()
            digest = w.digest()
            size = w.compressed_size
        final = os.path.join(blobs, digest.split(":", 1)[1])
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return {"digest": digest, "size": size}, "sha256:" + h.hexdigest()
