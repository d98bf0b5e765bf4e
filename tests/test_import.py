"""LayerStore.import_image against dockerd: the same archive loaded by both.

An image is built with the private dockerd, saved (legacy ``docker save``), removed and
loaded back with ``docker load``, so dockerd's overlay2 diff dirs are what its ApplyDiff
made from the very tars we import. Each of our layers must equal dockerd's entry by entry
(type, mode, owner, size, content, link target, device numbers, mtime, xattrs such as the
opaque marker, hard-link groups); a Stack over our top layer must equal a kernel overlay
mount of dockerd's layers; the store's layout must be overlay2's (``l/`` links, ``lower``
and ``link`` files).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

import kernel
import pytest

from overlayfs import LayerStore, errors
from overlayfs.image import chain_id, open_image, write_oci_layout
from overlayfs.store import LINK_LENGTH

DOCKERFILE = """\
FROM {base}
RUN mkdir -p /data/sub/deep /opq/keep /var/run && echo hello > /data/a \\
    && echo x > /opq/old && echo y > /opq/keep/f && ln /data/a /data/hard \\
    && ln -s a /data/sym && ln -s /etc/passwd /data/abs && chmod 4755 /data/a \\
    && mkfifo /data/fifo && echo s > /data/sub/deep/f && chown -R 65534:65534 /data/sub \\
    && dd if=/dev/zero of=/data/zeros bs=1k count=300 2>/dev/null && chmod 0640 /data/zeros \\
    && mknod /data/null c 1 3 && touch /etc/gone
RUN rm -r /data/sub && rm -rf /opq && mkdir /opq && echo new > /opq/new && rm /etc/group \\
    && echo more >> /data/a && rm /etc/gone && ln /data/hard /data/hard2 && chmod 700 /root
RUN echo third > /third && mkdir /data/sub && echo back > /data/sub/again
"""
TAG = "ovltest-import:1"


def _walk(root: str) -> dict:
    """Everything observable about a layer dir, by relative path (the root itself apart)."""
    out = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            rec = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
                   "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    rec["sha256"] = hashlib.sha256(f.read()).hexdigest()
                rec["size"] = st.st_size
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    rec["link_group"] = inodes.setdefault(key, rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
                if st.st_rdev == 0:  # a whiteout: made at apply time, by both (mknod)
                    del rec["mtime"]
            if not stat.S_ISLNK(st.st_mode):
                rec["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False)
                                 for n in sorted(os.listxattr(full, follow_symlinks=False))}
            out[rel] = rec
    return out


@pytest.fixture(scope="module")
def loaded(dockerd, busybox_image, tmp_path_factory):
    """(archive path, dockerd's diff dirs bottom first, docker inspect) of an image that
    dockerd itself loaded from the archive."""
    base = tmp_path_factory.mktemp("import")
    dockerd.build(DOCKERFILE.format(base=busybox_image), TAG)
    archive = dockerd.save(TAG, str(base / "image.tar"))
    dockerd.run("rmi", TAG)
    dockerd.run("load", "-i", archive)
    inspect = dockerd.inspect(TAG)
    dirs = list(reversed(dockerd.layer_diff_dirs(TAG)))
    assert len(dirs) == len(inspect["RootFS"]["Layers"]) == 4
    return {"archive": archive, "dirs": dirs, "inspect": inspect, "base": base}


@pytest.fixture
def store(tmp_path):
    return LayerStore(str(tmp_path / "store"), durable=False)


def test_import_matches_dockerd_layer_by_layer(loaded, store):
    result = store.import_image(loaded["archive"])
    diff_ids = loaded["inspect"]["RootFS"]["Layers"]
    assert result.layers == tuple(chain_id(diff_ids[:i + 1])[7:] for i in range(len(diff_ids)))
    assert result.top == result.layers[-1] and result.created == result.layers
    assert result.image_id == loaded["inspect"]["Id"] and result.ref == TAG
    for n, (ours, theirs) in enumerate(zip(result.layers, loaded["dirs"])):
        mine = _walk(os.path.join(store.root, ours, "diff"))
        docker = _walk(theirs)
        assert mine.keys() == docker.keys(), f"layer {n}"
        diffs = [(p, mine[p], docker[p]) for p in mine if mine[p] != docker[p]]
        assert not diffs, f"layer {n}: {diffs[:5]}"
    top = _walk(os.path.join(store.root, result.top, "diff"))
    wh = os.lstat(os.path.join(store.root, result.layers[2], "diff", "etc", "group"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert "trusted.overlay.opaque" not in top["data/sub"]["xattrs"]  # made over a whiteout
    opq = _walk(os.path.join(store.root, result.layers[2], "diff"))["opq"]
    assert opq["xattrs"] == {"trusted.overlay.opaque": b"y"}  # rm -rf /opq && mkdir /opq
    assert store.images()[0]["layers"] == list(result.layers)
    assert store.images()[0]["id"] == loaded["inspect"]["Id"]


def test_stack_over_import_equals_kernel_mount_of_dockerd(loaded, store, require_kernel):
    result = store.import_image(loaded["archive"])
    with store.stack(result.top) as st:
        ours = kernel.stack_view(st)
    theirs = kernel.kernel_view(list(reversed(loaded["dirs"])))
    for view in (ours, theirs):  # a layer tar has no root entry: each side's apply time
        for key in ("lstat", "stat"):
            view["paths"][""][key].pop("mtime_ns")
    kernel.assert_views_equal(theirs, ours, context="import vs dockerd")
    assert "data/sub/again" in ours["paths"] and "etc/group" not in ours["paths"]


def test_store_layout_is_overlay2(loaded, store):
    result = store.import_image(loaded["archive"])
    shorts = []
    for n, layer_id in enumerate(result.layers):
        layer = store.get(layer_id)
        assert layer.link is not None and len(layer.link) == LINK_LENGTH
        assert os.readlink(os.path.join(store.root, "l", layer.link)) == f"../{layer_id}/diff"
        with open(os.path.join(layer.path, "link")) as f:
            assert f.read() == layer.link
        if n == 0:
            assert not os.path.exists(os.path.join(layer.path, "lower"))
            assert not os.path.exists(os.path.join(layer.path, "work"))
        else:
            with open(os.path.join(layer.path, "lower")) as f:
                assert f.read() == ":".join(f"l/{s}" for s in reversed(shorts))
            assert os.path.isdir(os.path.join(layer.path, "work"))
        assert layer.committed
        shorts.append(layer.link)
    # as dockerd's own layers read through the same class
    docker = LayerStore.open_docker(os.path.dirname(loaded["dirs"][-1].rstrip("/").rsplit("/", 1)[0]))
    theirs = docker.get(os.path.basename(os.path.dirname(loaded["dirs"][-1])))
    assert len(theirs.lower) == len(store.get(result.top).lower) == 3
    assert store.chain(result.top) == list(reversed(result.layers))


def test_shared_layers_are_applied_once(loaded, store, tmp_path):
    first = store.import_image(loaded["archive"])
    with open_image(loaded["archive"]) as image:  # the same image again: nothing to do
        again = store.import_image(image)
    assert again.layers == first.layers and again.created == ()
    # an image that shares the bottom three layers: only its new top layer is applied
    extra = tmp_path / "extra.tar"
    with tarfile.open(extra, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("fourth")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"4th"))
    with open_image(loaded["archive"]) as image:
        layers = [la.open_decompressed for la in image.layers[:3]]
        write_oci_layout(str(tmp_path / "other"), [*layers, str(extra)], config=image.config,
                         ref="other")
    other = store.import_image(str(tmp_path / "other"))
    assert other.layers[:3] == first.layers[:3]
    assert other.created == (other.layers[3],) and other.layers[3] != first.layers[3]
    with store.stack(other.top) as st:
        assert st.open("fourth").read() == b"4th"
        assert not st.exists("third")
    assert len(store.images()) == 2


def test_failed_layer_leaves_nothing(loaded, store, tmp_path):
    """A tampered top layer: the layers below are imported, the bad one leaves no trace."""
    bad = str(tmp_path / "bad.tar")
    with open_image(loaded["archive"]) as image:
        top_path = image.layers[-1].path
    with tarfile.open(loaded["archive"]) as tin, tarfile.open(bad, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isreg() else None
            if m.name == top_path:
                data = data.replace(b"third\n", b"THIRD\n")
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    before = set(os.listdir(os.path.join(store.root, "l")))
    with pytest.raises(errors.DiffIDMismatchError, match="diff ID mismatch"):
        store.import_image(bad)
    layers = store.layers()
    assert len(layers) == 3
    with open_image(loaded["archive"]) as image:
        assert image.layers[-1].chain_id[7:] not in layers
    assert len(os.listdir(os.path.join(store.root, "l"))) == len(before) + 3
    assert not [n for n in os.listdir(store.root) if n.startswith(".tmp-")]
    assert store.images() == []
    done = store.import_image(loaded["archive"])  # the good one completes the store
    assert done.created == (done.top,)


def test_import_oci_layouts_gives_the_same_layers(loaded, store, tmp_path):
    """skopeo's gzip and zstd OCI layouts of the archive import to the same layer ids, and
    are then skipped."""
    import peers

    peers.require_tool("skopeo")
    first = store.import_image(loaded["archive"])
    for fmt in ("gzip", "zstd"):
        out = str(tmp_path / f"oci-{fmt}")
        subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", fmt,
                        f"docker-archive:{loaded['archive']}", f"oci:{out}:x"], check=True)
        fresh = LayerStore(str(tmp_path / f"store-{fmt}"), durable=False)
        got = fresh.import_image(out)
        assert got.layers == first.layers
        for a, b in zip(got.layers, first.layers):
            assert _walk(os.path.join(fresh.root, a, "diff")) == \
                _walk(os.path.join(store.root, b, "diff"))
        assert store.import_image(out).created == ()


def test_cli_unpack(loaded, tmp_path):
    target = str(tmp_path / "cli-store")
    p = subprocess.run([sys.executable, "-m", "overlayfs", "unpack",
                        f"docker-archive:{loaded['archive']}:{TAG}", target, "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    diff_ids = loaded["inspect"]["RootFS"]["Layers"]
    assert data["top"] == chain_id(diff_ids)[7:]
    assert sorted(LayerStore(target).layers()) == sorted(data["layers"])
    with open(loaded["archive"], "rb") as f:
        p = subprocess.run([sys.executable, "-m", "overlayfs", "unpack", "-", target],
                           stdin=f, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == data["top"]
    p = subprocess.run([sys.executable, "-m", "overlayfs", "unpack", str(tmp_path / "nope"),
                        target], capture_output=True, text=True)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1


def _tar_exporter(diff: str, out) -> None:
    """A plain tarfile exporter of a layer dir in the kernel's form (whiteouts to .wh.,
    opaque dirs to .wh..wh..opq): enough to test export_image's plumbing."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirs, files in os.walk(diff):
            dirs.sort()
            rel = os.path.relpath(dirpath, diff)
            for name in sorted(dirs + files):
                full = os.path.join(dirpath, name)
                arc = os.path.normpath(os.path.join(rel, name))
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    tf.addfile(tarfile.TarInfo(os.path.normpath(os.path.join(rel, ".wh." + name))))
                    continue
                info = tf.gettarinfo(full, arc)
                if info.isreg():
                    with open(full, "rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
                if stat.S_ISDIR(st.st_mode) and "trusted.overlay.opaque" in os.listxattr(full):
                    tf.addfile(tarfile.TarInfo(arc + "/.wh..wh..opq"))


@pytest.mark.parametrize("which", ["tarfile", "export_layer"])
def test_export_image_round_trip(loaded, store, tmp_path, which):
    """export_image writes an OCI layout skopeo reads; importing it into a fresh store
    gives the same merged tree."""
    import peers

    exporter = None if which == "export_layer" else _tar_exporter  # None: overlayfs.export
    first = store.import_image(loaded["archive"])
    out = str(tmp_path / "exported")
    digest = store.export_image(first.top, out, exporter=exporter, ref="again")
    peers.require_tool("skopeo")
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out}:again"],
                                    check=True, capture_output=True, text=True).stdout)
    assert "sha256:" + hashlib.sha256(json.dumps(raw, separators=(",", ":")).encode()
                                      ).hexdigest() == digest
    with open_image(out, ref="again") as image:
        assert image.config["config"] == loaded["inspect"]["Config"] or \
            image.config["config"].get("Env") == loaded["inspect"]["Config"].get("Env")
        assert len(image.layers) == len(first.layers)
        image.verify()
        fresh = LayerStore(str(tmp_path / "fresh"), durable=False)
        again = fresh.import_image(image)
    with store.stack(first.top) as a, fresh.stack(again.top) as b:
        va, vb = kernel.stack_view(a), kernel.stack_view(b)
    kernel.assert_views_equal(va, vb, ignore={"mtime_ns", "ino"}, context="re-imported export")
