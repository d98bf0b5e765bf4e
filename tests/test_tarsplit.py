"""Exporting a layer with its original bytes: ``export_layer(tar_split=)`` replays the
record ``apply_layer(tar_split=)`` wrote (docs/tar-split.md), and ``LayerStore`` keeps
that record per imported layer so ``export_layer``/``export_image`` give the original
diff IDs back.  Against GNU tar in every format it writes and against ``docker save``;
a changed layer falls back to the deterministic export; a hostile record never makes
the export read outside the layer."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile

import pytest
from applyutil import dir_, file, symlink, tar

from overlayfs import LayerStore, errors
from overlayfs.apply import apply_layer
from overlayfs.export import export_layer
from overlayfs.image import write_oci_layout

SENTINEL = b"SENTINEL-outside-the-layer-" * 40


def make_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "d", "e"))
    with open(os.path.join(root, "a"), "wb") as f:
        f.write(b"hello\n")
    os.link(os.path.join(root, "a"), os.path.join(root, "d", "hl"))
    os.symlink("a", os.path.join(root, "sym"))
    long_dir = os.path.join(root, "x" * 120)
    os.mkdir(long_dir)
    with open(os.path.join(long_dir, "y" * 150), "wb") as f:
        f.write(b"long name")
    with open(os.path.join(root, "sparse"), "wb") as f:
        f.seek(5 << 20)
        f.write(b"data")
        f.seek(9 << 20)
        f.write(b"end")
    with open(os.path.join(root, "odd"), "wb") as f:
        f.write(os.urandom(777))
    with open(os.path.join(root, "d", "e", "big"), "wb") as f:
        f.write(os.urandom(3 << 20))
    with open(os.path.join(root, "empty"), "wb"):
        pass


FORMATS = {
    "gnu": ["--format=gnu"],
    "oldgnu": ["--format=oldgnu"],
    "posix": ["--format=posix"],
    "pax-sparse-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-sparse-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-sparse-1.0": ["--format=posix", "--sparse-version=1.0"],
    "ustar": ["--format=ustar"],
    "v7": ["--format=v7"],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("src") / "tree")
    os.mkdir(root)
    make_tree(root)
    return root


def _gnu_tar(tree: str, out: str, args: list[str], sparse: bool = True) -> bytes:
    # ustar and v7 cannot hold the long names: GNU tar leaves them out and says so.
    subprocess.run(["tar", *args, *(["--sparse"] if sparse and "--format=ustar" not in args
                                     and "--format=v7" not in args else []),
                    "-cf", out, "-C", tree, "."], check=False, capture_output=True)
    with open(out, "rb") as f:
        return f.read()


def _roundtrip(data: bytes, tmp_path, **kw):
    layer = tmp_path / "layer"
    split = io.BytesIO()
    r = apply_layer(io.BytesIO(data), layer, tar_split=split)
    out = io.BytesIO()
    e = export_layer(layer, out, tar_split=split.getvalue(), expect_diff_id=r.diff_id, **kw)
    return r, e, out.getvalue(), split.getvalue()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_gnu_tar_formats_reassemble(tree, tmp_path, fmt):
    data = _gnu_tar(tree, str(tmp_path / "t.tar"), FORMATS[fmt])
    r, e, out, _ = _roundtrip(data, tmp_path)
    assert e.reassembled and e.fallback_reason is None
    assert out == data
    assert e.diff_id == r.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert e.entries == r.entries


@pytest.mark.parametrize("extra", [512, 4096, 10240 + 512])
def test_trailing_zero_blocks_and_odd_padding(tree, tmp_path, extra):
    data = _gnu_tar(tree, str(tmp_path / "t.tar"), ["--format=gnu", "--blocking-factor=3"])
    data += bytes(extra)
    r, e, out, _ = _roundtrip(data, tmp_path)
    assert e.reassembled and out == data


def test_nonzero_padding_and_whiteouts(tmp_path):
    """Padding that is not zeros, a whiteout marker with data, an opaque marker and a
    PAX header are all given back as they were."""
    body = file(b"f", b"abc")
    body = body[:512 + 3] + b"JUNK" + body[512 + 7:]  # garbage in the padding
    data = tar(dir_(b"d/"), file(b"d/.wh..wh..opq"), file(b"d/.wh.gone", b"marker data"), body,
               symlink(b"s", b"/etc/passwd"),
               file(b"p", b"pax", records={b"path": b"pax-name", b"mtime": b"1.5"}))
    r, e, out, _ = _roundtrip(data, tmp_path)
    assert e.reassembled, e.fallback_reason
    assert out == data


def test_compressed_output_keeps_diff_id(tree, tmp_path):
    data = _gnu_tar(tree, str(tmp_path / "t.tar"), ["--format=posix"])
    r, e, out, _ = _roundtrip(data, tmp_path, compression="gzip")
    assert e.reassembled and e.diff_id == r.diff_id and gzip.decompress(out) == data


def test_record_from_a_path(tree, tmp_path):
    data = _gnu_tar(tree, str(tmp_path / "t.tar"), ["--format=gnu"])
    r = apply_layer(io.BytesIO(data), tmp_path / "layer", tar_split=tmp_path / "split.gz")
    e = export_layer(tmp_path / "layer", tmp_path / "out.tar", tar_split=tmp_path / "split.gz")
    assert e.reassembled and (tmp_path / "out.tar").read_bytes() == data and e.diff_id == r.diff_id


# -- a changed layer -------------------------------------------------------------------


def _applied(tree, tmp_path):
    data = _gnu_tar(tree, str(tmp_path / "t.tar"), ["--format=posix"])
    layer = tmp_path / "layer"
    split = io.BytesIO()
    r = apply_layer(io.BytesIO(data), layer, tar_split=split)
    return data, layer, split.getvalue(), r


@pytest.mark.parametrize("change", ["grown", "added", "removed", "retyped", "relinked",
                                    "hardlink-split", "opaque", "symlink"])
def test_changed_layer_falls_back(tree, tmp_path, change):
    data, layer, split, r = _applied(tree, tmp_path)
    if change == "grown":
        (layer / "odd").write_bytes(b"other size")
    elif change == "added":
        (layer / "d" / "new").write_bytes(b"")
    elif change == "removed":
        (layer / "d" / "e" / "big").unlink()
    elif change == "retyped":
        (layer / "empty").unlink()
        (layer / "empty").mkdir()
    elif change == "relinked":
        (layer / "sym").unlink()
        (layer / "sym").symlink_to("odd")
    elif change == "hardlink-split":
        (layer / "d" / "hl").unlink()
        (layer / "d" / "hl").write_bytes(b"hello\n")
    elif change == "opaque":
        os.setxattr(layer / "d", "trusted.overlay.opaque", b"y")
    elif change == "symlink":
        shutil.rmtree(layer / "d" / "e")
        (layer / "d" / "e").symlink_to("/")
    out = io.BytesIO()
    e = export_layer(layer, out, tar_split=split, expect_diff_id=r.diff_id)
    assert not e.reassembled and e.fallback_reason
    assert e.diff_id != r.diff_id and out.getvalue() != data
    again = io.BytesIO()
    plain = export_layer(layer, again)
    assert again.getvalue() == out.getvalue() and plain.diff_id == e.diff_id


def test_same_size_change_raises_and_removes_output(tree, tmp_path):
    data, layer, split, r = _applied(tree, tmp_path)
    with open(layer / "odd", "r+b") as f:
        f.write(b"X")
    target = tmp_path / "out.tar"
    with pytest.raises(errors.DiffIDMismatchError):
        export_layer(layer, target, tar_split=split, expect_diff_id=r.diff_id)
    assert not target.exists()
    # Without the diff ID to check against, the bytes are what the layer holds now.
    e = export_layer(layer, target, tar_split=split)
    assert e.reassembled and e.diff_id != r.diff_id and len(target.read_bytes()) == len(data)


# -- hostile records -------------------------------------------------------------------


def _record(*recs: tuple) -> bytes:
    out = [b"OVLTSPL1"]
    for r in recs:
        if r[0] == 1:
            out.append(b"\x01" + struct.pack("<Q", len(r[1])) + r[1])
        elif r[0] == 3:
            out.append(b"\x03" + struct.pack("<Q", r[1]))
        else:
            path, segs = r[1], r[2]
            out.append(b"\x02" + struct.pack("<H", len(path)) + path + struct.pack("<Q", len(segs))
                       + b"".join(struct.pack("<QQ", o, n) for o, n in segs))
    return gzip.compress(b"".join(out), mtime=0)


def _hdr(name: bytes, size: int) -> bytes:
    return file(name, bytes(size))[:512]


@pytest.fixture
def sentinel(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "x").write_bytes(SENTINEL)
    layer = base / "layer"
    layer.mkdir()
    (layer / "f").write_bytes(b"inside")
    return layer


@pytest.mark.parametrize("path", [b"../x", b"/../x", b"f/../../x", b"link/x", b"link"])
def test_hostile_record_never_reads_outside(sentinel, path):
    layer = sentinel
    (layer / "link").symlink_to("..")
    n = len(SENTINEL)
    # The header names the same path as the DATA record, as a consistent forgery would.
    rec = _record((1, _hdr(path, n)), (2, path, [(0, n)]), (3, -n % 512 + 1024))
    out = io.BytesIO()
    e = export_layer(layer, out, tar_split=rec)
    assert not e.reassembled and e.fallback_reason
    assert b"SENTINEL" not in out.getvalue()


def test_hostile_symlink_to_outside_file(sentinel):
    """The layer's own name is a symlink to the sentinel; the record says it is a file
    of the sentinel's size."""
    layer = sentinel
    (layer / "f").unlink()
    (layer / "f").symlink_to("../x")
    n = len(SENTINEL)
    rec = _record((1, _hdr(b"f", n)), (2, b"f", [(0, n)]), (3, -n % 512 + 1024))
    out = io.BytesIO()
    e = export_layer(layer, out, tar_split=rec)
    assert not e.reassembled and b"SENTINEL" not in out.getvalue()


def test_swapped_for_symlink_after_the_check(sentinel, monkeypatch):
    """A file replaced by a symlink between the check and the read: the O_NOFOLLOW
    open refuses it."""
    from overlayfs import _tarsplit

    layer = sentinel
    n = 6
    rec = _record((1, _hdr(b"f", n)), (2, b"f", [(0, n)]), (3, -n % 512 + 1024))
    real = _tarsplit.Plan.chunks

    def swapped(self, bufs):
        (layer / "f").unlink()
        (layer / "f").symlink_to("../x")
        return real(self, bufs)

    monkeypatch.setattr(_tarsplit.Plan, "chunks", swapped)
    out = io.BytesIO()
    with pytest.raises(OSError):
        export_layer(layer, out, tar_split=rec)
    assert b"SENTINEL" not in out.getvalue()


def test_garbage_record_falls_back(tree, tmp_path):
    data, layer, split, r = _applied(tree, tmp_path)
    for bad in (b"", b"not gzip", gzip.compress(b"OVLTSPL1\x09"), split[:-20]):
        e = export_layer(layer, io.BytesIO(), tar_split=bad)
        assert not e.reassembled and e.fallback_reason


# -- the store -----------------------------------------------------------------------


def _image(tmp_path, tree) -> tuple[str, list[bytes]]:
    tars = [_gnu_tar(tree, str(tmp_path / "a.tar"), ["--format=gnu"]),
            tar(file(b"a", b"changed\n"), file(b".wh.odd"), dir_(b"d/"), file(b"d/.wh..wh..opq"),
                end=bytes(4096))]
    (tmp_path / "b.tar").write_bytes(tars[1])
    dest = str(tmp_path / "oci")
    write_oci_layout(dest, [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], compression="none")
    return dest, tars


def test_store_keeps_record_and_exports_original(tree, tmp_path):
    dest, tars = _image(tmp_path, tree)
    store = LayerStore(str(tmp_path / "store"), durable=False)
    result = store.import_image(dest)
    for lid, data in zip(result.layers, tars):
        layer = store.get(lid)
        assert os.path.exists(os.path.join(layer.path, "tar-split.gz"))
        out = io.BytesIO()
        e = store.export_layer(lid, out)
        assert e.reassembled and out.getvalue() == data
    assert store.repair() == []
    assert os.path.exists(os.path.join(store.get(result.top).path, "tar-split.gz"))
    # export_image of the unchanged image: the original diff IDs and (uncompressed) digests.
    store.export_image(result.top, str(tmp_path / "again"), compression="none")
    with open(tmp_path / "again" / "index.json") as f:
        mdesc = json.load(f)["manifests"][0]
    with open(tmp_path / "again" / "blobs" / "sha256" / mdesc["digest"].split(":")[1]) as f:
        manifest = json.load(f)
    digests = [la["digest"] for la in manifest["layers"]]
    assert digests == ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    # A changed layer: deterministic; removing the layer removes its record.
    top = store.get(result.top)
    with open(os.path.join(top.diff, "new"), "wb") as f:
        f.write(b"new")
    e = store.export_layer(result.top, io.BytesIO())
    assert not e.reassembled
    store.remove(result.top)
    assert not os.path.exists(top.path)


# -- docker save ---------------------------------------------------------------------

DOCKERFILE = """\
FROM {base}
RUN mkdir -p /data/sub /opq/keep && echo hello > /data/a && ln /data/a /data/hard \\
    && ln -s a /data/sym && mkfifo /data/fifo && echo y > /opq/keep/f \\
    && dd if=/dev/zero of=/data/zeros bs=1k count=300 2>/dev/null && touch /etc/gone \\
    && mkdir -p /data/{long} && echo deep > /data/{long}/{long}
RUN rm -rf /opq && mkdir /opq && echo new > /opq/new && rm /etc/gone && echo more >> /data/a
"""


def test_docker_save_layers_reassemble(dockerd, busybox_image, tmp_path):
    tag = "ovltest-tarsplit:1"
    dockerd.build(DOCKERFILE.format(base=busybox_image, long="l" * 120), tag)
    archive = dockerd.save(tag, str(tmp_path / "image.tar"))
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        blobs = [tf.extractfile(name).read() for name in manifest[0]["Layers"]]  # type: ignore[union-attr]
    store = LayerStore(str(tmp_path / "store"), durable=False)
    result = store.import_image(archive)
    assert len(result.layers) == len(blobs) >= 3
    inspect = dockerd.inspect(tag)
    for lid, blob, diff_id in zip(result.layers, blobs, inspect["RootFS"]["Layers"]):
        out = io.BytesIO()
        e = store.export_layer(lid, out)
        assert e.reassembled, e.fallback_reason
        assert out.getvalue() == blob
        assert e.diff_id == diff_id == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()


def test_data_of_a_name_a_later_entry_replaced(tmp_path):
    """A file entry, then a symlink of the same name (last wins): the DATA record names
    a symlink now; the export falls back instead of following or failing."""
    data = tar(file(b"f", b"first"), symlink(b"f", b"/etc/passwd"))
    r, e, out, _ = _roundtrip(data, tmp_path)
    assert not e.reassembled and "later entry" in (e.fallback_reason or "")
