"""Layer stream compression: what the real tools write, we read back exactly.

Every stream here is made by the real CLI (gzip, zstd, xz, bzip2), including
the shapes layer producers emit: several gzip members (pigz, concatenated
writers), several zstd frames and skippable frames.  Damaged streams --
truncated, trailing garbage, corrupt checksums -- raise ValueError naming the
stream, never end early.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

import peers
import pytest

from overlayfs import _compress

PAYLOAD = os.urandom(300_000) + b"layer " * 200_000 + bytes(range(256)) * 1000

CLIS = {
    "gzip": ["gzip", "-c", "-6"],
    "zstd": ["zstd", "-q", "-c", "-3"],
    "xz": ["xz", "-c", "-1"],
    "bzip2": ["bzip2", "-c", "-1"],
}
INFLATERS = ["isal", "zlib-ng", "zlib"]


def cli_compress(kind: str, data: bytes) -> bytes:
    peers.require_tool(CLIS[kind][0])
    return subprocess.run(CLIS[kind], input=data, capture_output=True, check=True).stdout


def read_all(blob: bytes, **kw) -> tuple[bytes, _compress.DecompressedReader]:
    r = _compress.open_decompressed(io.BytesIO(blob), **kw)
    out = bytearray()
    while piece := r.read_chunk():
        assert len(piece) <= 2 * _compress.CHUNK
        out += piece
    return bytes(out), r


@pytest.mark.parametrize("kind", sorted(CLIS))
def test_streams_of_every_cli_decompress_to_the_input(kind):
    blob = cli_compress(kind, PAYLOAD)
    assert _compress.detect(blob[:6]) == kind
    out, r = read_all(blob)
    assert out == PAYLOAD
    assert r.compression == kind
    assert r.digest() == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert r.compressed_size == len(blob)


@pytest.mark.parametrize("inflater", INFLATERS)
def test_several_gzip_members_are_one_stream(inflater):
    """pigz/bgzip and `cat a.gz b.gz` write several members; zlib.decompressobj alone stops after the first."""
    parts = [PAYLOAD[:1000], PAYLOAD[1000:500_000], b"", PAYLOAD[500_000:]]
    blob = b"".join(cli_compress("gzip", p) for p in parts)
    out, _ = read_all(blob, inflater=inflater)
    assert out == PAYLOAD
    assert subprocess.run(["gzip", "-dc"], input=blob, capture_output=True).stdout == out


def test_several_zstd_frames_and_skippable_frames():
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"meta"
    blob = skippable + cli_compress("zstd", PAYLOAD[:7]) + cli_compress("zstd", PAYLOAD[7:])
    assert subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout == PAYLOAD
    out, r = read_all(blob)
    assert (out, r.compression) == (PAYLOAD, "zstd")


def test_uncompressed_passes_through_without_a_copy_of_the_whole():
    out, r = read_all(PAYLOAD)
    assert (out, r.compression) == (PAYLOAD, "none")


@pytest.mark.parametrize("kind", sorted(CLIS))
@pytest.mark.parametrize("damage", ["truncated", "trailing garbage"])
def test_damaged_streams_raise_and_name_the_stream(kind, damage):
    blob = cli_compress(kind, PAYLOAD)
    bad = blob[:-9] if damage == "truncated" else blob + b"garbage!"
    if damage == "truncated":  # the real CLI refuses too
        cli = subprocess.run([CLIS[kind][0], "-dc"], input=bad, capture_output=True)
        assert cli.returncode != 0
    # Trailing garbage: gzip warns (exit 2) and bzip2 ignores it; we refuse, as Go's
    # readers (docker, containerd) do: a layer blob is exactly its streams.
    src = io.BytesIO(bad)
    src.name = "layer.tar.x"
    reader = _compress.open_decompressed(src)
    with pytest.raises(ValueError, match=r"layer\.tar\.x: .*(truncated|not another|corrupt)"):
        while reader.read_chunk():
            pass


@pytest.mark.parametrize("inflater", INFLATERS)
def test_a_corrupt_gzip_checksum_is_an_error(inflater):
    blob = bytearray(cli_compress("gzip", PAYLOAD))
    blob[-6] ^= 0xFF  # the CRC32 in the trailer
    assert subprocess.run(["gzip", "-dc"], input=bytes(blob), capture_output=True).returncode != 0
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_all(bytes(blob), inflater=inflater)


def test_a_zstd_bomb_comes_out_in_bounded_pieces():
    """A 1 GiB run of zeros compresses to ~32 KiB; no single step may hold much of it."""
    blob = subprocess.run(["sh", "-c", "head -c 1073741824 /dev/zero | zstd -q -c -19"],
                          capture_output=True, check=True).stdout
    r = _compress.open_decompressed(io.BytesIO(blob))
    total = biggest = 0
    while piece := r.read_chunk():
        total += len(piece)
        biggest = max(biggest, len(piece))
    assert total == 1 << 30
    assert biggest <= 8 << 20


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_writers_round_trip_through_the_real_cli(kind):
    buf = io.BytesIO()
    w = _compress.open_compressed(buf, kind)
    for i in range(0, len(PAYLOAD), 70_000):
        w.write(PAYLOAD[i:i + 70_000])
    w.close()
    blob = buf.getvalue()
    assert w.digest() == "sha256:" + hashlib.sha256(blob).hexdigest()
    if kind != "none":
        assert subprocess.run([CLIS[kind][0], "-dc"], input=blob, capture_output=True,
                              check=True).stdout == PAYLOAD
    assert read_all(blob)[0] == PAYLOAD


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown compression"):
        _compress.open_decompressed(io.BytesIO(b""), "lz4")
    with pytest.raises(ValueError, match="unknown inflater"):
        _compress.open_decompressed(io.BytesIO(b"\x1f\x8b" + b"\0" * 20), inflater="pigz")
    with pytest.raises(ValueError, match="cannot write"):
        _compress.open_compressed(io.BytesIO(), "xz")
