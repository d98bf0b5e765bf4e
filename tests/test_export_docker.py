"""Against real Docker: our export of dockerd's overlay2 diff dirs vs the layer tars of
``docker save``, entry by entry; our flatten of a container's layers vs ``docker
export``."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import tarcmp

from overlayfs import Stack
from overlayfs.export import export_layer, flatten

pytestmark = pytest.mark.usefixtures("require_root")  # skip_or_fail when not root

LONG = "l" * 120
DOCKERFILE = f"""\
FROM {{base}}
RUN mkdir -p /app/sub /opq/inner /gone-dir/x /deep/{"/".join(["d" * 50] * 4)} \\
 && echo one > /app/a && ln /app/a /app/hard && echo two > /app/b && ln -s ../a /app/sub/rel \\
 && ln -s /abs/target /app/abs && mkfifo /app/fifo && echo old > /opq/old && echo x > /opq/inner/y \\
 && echo gone > /gone-dir/x/f && echo gone > /app/deleted && printf odd > "/app/odd name \\303\\251" \\
 && echo deep > /deep/{"/".join(["d" * 50] * 4)}/{LONG} && chmod 4755 /app/b && chmod 2750 /app/sub \\
 && chown 1000:2000 /app/a && chown -h 33:33 /app/abs && mknod /app/null c 1 3 && touch /app/empty
RUN rm /app/deleted && rm -rf /gone-dir && rm -rf /opq && mkdir /opq && echo new > /opq/new \\
 && echo changed >> /app/hard && chmod 600 /app/b && chown 7:7 /app/sub && mkdir /gone-dir \\
 && echo back > /gone-dir/again && rm /app/sub/rel && ln -s elsewhere /app/sub/rel
"""


@pytest.fixture(scope="module")
def image(dockerd, busybox_image):
    tag = "ovltest-export:1"
    dockerd.build(DOCKERFILE.format(base=busybox_image), tag)
    return tag


def _saved_layers(dockerd, tag, tmp_path) -> list[bytes]:
    """The layer tars of ``docker save``, top-most first."""
    out = dockerd.save(tag, str(tmp_path / "saved.tar"))
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        return [tf.extractfile(p).read() for p in reversed(manifest["Layers"])]  # type: ignore[union-attr]


def test_export_matches_docker_save(dockerd, image, tmp_path):
    dirs = dockerd.layer_diff_dirs(image)
    saved = _saved_layers(dockerd, image, tmp_path)
    assert len(dirs) == len(saved) == 3
    # The two RUN layers (the base was imported from a tarfile-made tar, whose bytes
    # docker keeps and save gives back as they were).
    for d, want_tar in zip(dirs[:2], saved[:2], strict=True):
        buf = io.BytesIO()
        export_layer(d, buf)
        order: list = []
        ours = tarcmp.records(buf.getvalue(), order=order, raw_mode=True)
        theirs_order: list = []
        theirs = tarcmp.records(want_tar, order=theirs_order, raw_mode=True)
        # A whiteout's time differs by rule, not by accident: docker's tar header
        # carries the time of the whiteout in the build container's upper (the
        # kernel's one shared whiteout inode, made by the RUN's first delete),
        # while the char device in this diff dir is the one moby's ConvertRead
        # mknod'ed when dockerd applied that tar as the image layer, with no
        # times set -- later, usually within the same second.
        for name, rec in theirs.items():
            if name.rpartition(b"/")[2].startswith(b".wh.") and name in ours and \
                    0 <= ours[name]["mtime"] - rec["mtime"] <= 5:
                rec["mtime"] = ours[name]["mtime"]
        diffs = tarcmp.differences(ours, theirs)
        assert not diffs, "\n".join(diffs)
        # what matters of the order: a marker after its directory, parents first
        for names in (order, theirs_order):
            for i, n in enumerate(names):
                if n.endswith(b"/.wh..wh..opq"):
                    assert names.index(n[:-len(b"/.wh..wh..opq")]) < i
    top = tarcmp.records(_export(dirs[0]))
    assert top[b"opq/.wh..wh..opq"]["type"] == "file"
    assert {b".wh.gone-dir", b"app/.wh.deleted"} & set(top) == {b"app/.wh.deleted"}
    assert b"gone-dir/.wh..wh..opq" in top  # a dir deleted and made again: opaque


def _export(d) -> bytes:
    buf = io.BytesIO()
    export_layer(d, buf)
    return buf.getvalue()


def test_flatten_matches_docker_export(dockerd, image, tmp_path):
    cid = dockerd.run("create", image, "/bin/sh").stdout.strip()
    try:
        out = tmp_path / "export.tar"
        dockerd.run("export", "-o", str(out), cid)
        data = json.loads(dockerd.run("container", "inspect", cid).stdout)[0]["GraphDriver"]["Data"]
        layers = [data["UpperDir"], *data["LowerDir"].split(":")]
        buf = io.BytesIO()
        with Stack(layers) as st:
            flatten(st, buf)
        ours = tarcmp.records(buf.getvalue(), raw_mode=True)
        theirs = tarcmp.records(out.read_bytes(), raw_mode=True)
        diffs = tarcmp.differences(ours, theirs)
        assert not diffs, "\n".join(diffs)
        # The container's init layer is what docker adds to the image's tree: exactly these.
        img = io.BytesIO()
        with Stack(dockerd.layer_diff_dirs(image)) as st:
            flatten(st, img)
        added = set(theirs) - set(tarcmp.records(img.getvalue()))
        assert added == {b".dockerenv", b"dev", b"dev/console", b"dev/pts", b"dev/shm", b"etc/hostname",
                         b"etc/hosts", b"etc/mtab", b"etc/resolv.conf", b"proc", b"sys"}
    finally:
        dockerd.run("rm", cid, check=False)
