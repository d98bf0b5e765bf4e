"""Reading images (overlayfs.image) against what Docker and skopeo say about the same image.

One image is built with the private dockerd (busybox base, RUN lines making files, hard
links, symlinks, deletions and an opaque directory), saved with ``docker save`` (Debian's
dockerd writes the legacy format) and converted by skopeo to an OCI layout (gzip and zstd
layers), an oci-archive and a Docker 25+ style archive assembled here. Our layer list must
equal ``docker image inspect`` (RootFS.Layers = diff IDs), dockerd's layerdb (chain IDs)
and skopeo's manifests (digests, media types, sizes).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import overlayfs.image as oi
from overlayfs.image import (
    DiffIDMismatchError,
    ImageError,
    MissingBlobError,
    Platform,
    UnsafeImageError,
    chain_id,
    diff_id,
    open_image,
    write_oci_layout,
)

DOCKERFILE = """\
FROM {base}
RUN mkdir -p /data/sub /opq/keep && echo hello > /data/a && echo x > /opq/old \\
    && ln /data/a /data/hard && ln -s a /data/sym && ln -s /etc/passwd /data/abs \\
    && chmod 4755 /data/a && mkfifo /data/fifo && echo s > /data/sub/f \\
    && chown 65534:65534 /data/sub/f
RUN rm -r /data/sub && rm -rf /opq && mkdir /opq && echo new > /opq/new && rm /etc/group \\
    && echo more >> /data/a
"""
TAG = "ovltest-image:1"


def _skopeo(*args: str) -> str:
    import peers

    peers.require_tool("skopeo")
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def _tar_dir(src: str, out: str, extra: dict[str, bytes] | None = None) -> str:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(src)):
            tf.add(os.path.join(src, name), arcname=name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def saved(dockerd, busybox_image, tmp_path_factory):
    """Paths of the one test image in every format, and what docker says about it."""
    base = tmp_path_factory.mktemp("image")
    dockerd.build(DOCKERFILE.format(base=busybox_image), TAG)
    inspect = dockerd.inspect(TAG)
    legacy = dockerd.save(TAG, str(base / "legacy.tar"))
    oci_dir = str(base / "oci")
    _skopeo("copy", "-q", f"docker-archive:{legacy}", f"oci:{oci_dir}:v1")
    oci_tar = str(base / "oci.tar")
    _skopeo("copy", "-q", f"docker-archive:{legacy}", f"oci-archive:{oci_tar}:v1")
    zstd_dir = str(base / "oci-zstd")
    _skopeo("copy", "-q", "--dest-compress-format", "zstd", f"docker-archive:{legacy}",
            f"oci:{zstd_dir}:v1")
    # Docker 25+ (moby tarexport/save.go): an OCI layout whose blobs are the config as is
    # (digest = image ID) and the uncompressed layer tars (digest = diff ID), plus the
    # legacy manifest.json pointing into blobs/.
    d25 = str(base / "d25")
    os.makedirs(os.path.join(d25, "blobs", "sha256"))
    with tarfile.open(legacy) as tf:
        entry = json.load(tf.extractfile("manifest.json"))[0]
        config_bytes = tf.extractfile(entry["Config"]).read()
        for i, layer in enumerate(entry["Layers"]):
            data = tf.extractfile(layer).read()
            with open(os.path.join(d25, "blobs", "sha256", hashlib.sha256(data).hexdigest()),
                      "wb") as f:
                f.write(data)
            entry["Layers"][i] = (hashlib.sha256(data).hexdigest(), len(data))
    cfg_hex = hashlib.sha256(config_bytes).hexdigest()
    with open(os.path.join(d25, "blobs", "sha256", cfg_hex), "wb") as f:
        f.write(config_bytes)
    manifest = {"schemaVersion": 2, "mediaType": oi.MT_OCI_MANIFEST,
                "config": {"mediaType": oi.MT_OCI_CONFIG, "digest": "sha256:" + cfg_hex,
                           "size": len(config_bytes)},
                "layers": [{"mediaType": oi.MT_OCI_LAYER, "digest": "sha256:" + h, "size": n}
                           for h, n in entry["Layers"]]}
    mbytes = json.dumps(manifest).encode()
    m_hex = hashlib.sha256(mbytes).hexdigest()
    with open(os.path.join(d25, "blobs", "sha256", m_hex), "wb") as f:
        f.write(mbytes)
    index = {"schemaVersion": 2, "mediaType": oi.MT_OCI_INDEX, "manifests": [
        {"mediaType": oi.MT_OCI_MANIFEST, "digest": "sha256:" + m_hex, "size": len(mbytes),
         "annotations": {"io.containerd.image.name": f"docker.io/library/{TAG}",
                         "org.opencontainers.image.ref.name": TAG.split(":")[1]}}]}
    with open(os.path.join(d25, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(d25, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(d25, "manifest.json"), "w") as f:
        json.dump([{"Config": "blobs/sha256/" + cfg_hex, "RepoTags": [TAG],
                    "Layers": ["blobs/sha256/" + h for h, _ in entry["Layers"]]}], f)
    d25_tar = _tar_dir(d25, str(base / "d25.tar"))
    d25_null = str(base / "d25-null")
    shutil.copytree(d25, d25_null)
    with open(os.path.join(d25_null, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": None}, f)
    d25_null_tar = _tar_dir(d25_null, str(base / "d25-null.tar"))
    return {"base": base, "inspect": inspect, "legacy": legacy, "oci": oci_dir,
            "oci_tar": oci_tar, "zstd": zstd_dir, "d25": d25_tar, "d25_null": d25_null_tar,
            "d25_manifest": manifest, "docker": dockerd}


def _rows(image):
    return [(la.digest, la.diff_id, la.media_type, la.size, la.chain_id) for la in image.layers]


def _docker_chain_ids(dockerd, diff_ids):
    """Chain IDs as dockerd's layerdb names them (the directory of each layer)."""
    layerdb = os.path.join(dockerd.data_root, "image", "overlay2", "layerdb", "sha256")
    return {"sha256:" + n for n in os.listdir(layerdb)}


def test_diff_id_and_chain_id_formulas():
    data = b"not really a tar but bytes"
    assert diff_id(io.BytesIO(data)) == "sha256:" + hashlib.sha256(data).hexdigest()
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_id([a]) == a
    assert chain_id([a, b]) == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    with pytest.raises(ValueError):
        chain_id([])
    with pytest.raises(ImageError):
        chain_id(["sha256:../../etc"])


def test_docker_archive_matches_docker(saved):
    diff_ids = saved["inspect"]["RootFS"]["Layers"]
    with open_image(saved["legacy"]) as image:
        assert image.format == "docker-archive"
        assert image.ref == TAG and image.repo_tags == [TAG]
        assert image.id == saved["inspect"]["Id"]
        assert [la.diff_id for la in image.layers] == diff_ids
        chains = [la.chain_id for la in image.layers]
        assert chains == [chain_id(diff_ids[:i + 1]) for i in range(len(diff_ids))]
        assert set(chains) <= _docker_chain_ids(saved["docker"], diff_ids)
        raw = json.loads(_skopeo("inspect", "--raw", f"docker-archive:{saved['legacy']}"))
        # skopeo calls every docker-archive layer ".tar.gzip"; the blobs are plain tars and
        # we say so. Digests (= diff IDs) and sizes agree.
        assert [(la.digest, la.size) for la in image.layers] == \
            [(d["digest"], d["size"]) for d in raw["layers"]]
        assert {la.media_type for la in image.layers} == {oi.MT_DOCKER_LAYER}
        image.verify()
        for la in image.layers:
            assert la.compute_diff_id() == la.diff_id


@pytest.mark.parametrize("fmt", ["oci", "oci_tar", "zstd"])
def test_oci_layouts_match_skopeo(saved, fmt):
    path = saved[fmt]
    transport = "oci-archive" if fmt == "oci_tar" else "oci"
    raw = json.loads(_skopeo("inspect", "--raw", f"{transport}:{path}:v1"))
    with open_image(path) as image:
        assert image.format == ("oci-archive" if fmt == "oci_tar" else "oci")
        assert image.ref == "v1"
        assert image.manifest == raw
        assert [(la.digest, la.media_type, la.size) for la in image.layers] == \
            [(d["digest"], d["mediaType"], d["size"]) for d in raw["layers"]]
        assert [la.diff_id for la in image.layers] == saved["inspect"]["RootFS"]["Layers"]
        want = "zstd" if fmt == "zstd" else "gzip"
        assert all(la.media_type.endswith("+" + want) for la in image.layers)
        for la in image.layers:
            with la.open() as f:
                assert diff_id(f) == la.diff_id  # decompressed by magic
            with la.open_decompressed(verify=True) as r:
                assert hashlib.sha256(r.read()).hexdigest() == la.diff_id.split(":")[1]
    with open_image(path, ref="v1", platform="linux/amd64" if Platform.current().architecture
                    == "amd64" else str(Platform.current())) as image:
        assert len(image.layers) == len(saved["inspect"]["RootFS"]["Layers"])


@pytest.mark.parametrize("which", ["d25", "d25_null"])
def test_docker25_archives(saved, which):
    """Docker 25+ writes an OCI layout plus manifest.json; index.json may list no manifests,
    and then manifest.json is the authority."""
    with open_image(saved[which]) as image:
        assert image.format == "docker-archive"
        assert [la.diff_id for la in image.layers] == saved["inspect"]["RootFS"]["Layers"]
        assert [la.digest for la in image.layers] == \
            [d["digest"] for d in saved["d25_manifest"]["layers"]]
        assert image.id == saved["inspect"]["Id"]
        if which == "d25":
            assert image.manifest == saved["d25_manifest"]
            assert image.layers[0].media_type == oi.MT_OCI_LAYER
        else:
            assert image.manifest["RepoTags"] == [TAG]
        image.verify()
    with open_image(saved[which], ref=TAG) as image:  # docker.io/library/X:1 ~ X:1
        assert image.ref == TAG


def _layout_copy(saved, tmp_path):
    dst = str(tmp_path / "layout")
    shutil.copytree(saved["oci"], dst)
    return dst


def _put_blob(layout, obj):
    data = json.dumps(obj).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def _multiplatform(saved, tmp_path):
    """A layout whose index.json nests an index listing amd64, arm64/v8 and an attestation
    (unknown media type) manifest; the arm64 config says arm64 and lacks one blob."""
    layout = _layout_copy(saved, tmp_path)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    amd = index["manifests"][0]
    with open(os.path.join(layout, "blobs", "sha256", amd["digest"][7:])) as f:
        manifest = json.load(f)
    with open(os.path.join(layout, "blobs", "sha256", manifest["config"]["digest"][7:])) as f:
        config = json.load(f)
    arm_config = dict(config, architecture="arm64", variant="v8")
    arm_manifest = copy.deepcopy(manifest)
    arm_manifest["config"].update(_put_blob(layout, arm_config))
    arm_manifest["layers"][-1]["digest"] = "sha256:" + "0" * 64  # a blob not in the layout
    arm = {"mediaType": oi.MT_OCI_MANIFEST, **_put_blob(layout, arm_manifest),
           "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    amd_desc = {"mediaType": oi.MT_OCI_MANIFEST, "digest": amd["digest"], "size": amd["size"],
                "platform": {"os": "linux", "architecture": "amd64"}}
    attest = {"mediaType": "application/vnd.example.attestation+json",
              **_put_blob(layout, {"hello": 1})}
    nested = {"schemaVersion": 2, "mediaType": oi.MT_OCI_INDEX,
              "manifests": [attest, arm, amd_desc]}
    inner = {"mediaType": oi.MT_OCI_INDEX, **_put_blob(layout, nested)}
    outer = {"schemaVersion": 2, "mediaType": oi.MT_OCI_INDEX,
             "manifests": [dict(inner, annotations={oi.REF_ANNOTATION: "multi"})]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(outer, f)
    return layout, config


def test_nested_index_platform_selection(saved, tmp_path):
    layout, config = _multiplatform(saved, tmp_path)
    with open_image(layout, platform="linux/amd64") as image:
        assert image.platform == Platform("linux", "amd64")
        assert image.ref == "multi"
        assert [la.diff_id for la in image.layers] == saved["inspect"]["RootFS"]["Layers"]
        image.verify()
    for plat in ("linux/arm64", "linux/arm64/v8", Platform("linux", "arm64", "v8")):
        with open_image(layout, platform=plat, ref="multi") as image:
            assert image.platform == Platform("linux", "arm64", "v8")
            top = image.layers[-1]
            assert not top.available
            with pytest.raises(MissingBlobError, match="missing") as exc:
                top.open()
            assert exc.value.digest == "sha256:" + "0" * 64
            assert isinstance(exc.value, FileNotFoundError)
            with image.layers[0].open() as f:  # the others are there
                assert diff_id(f) == image.layers[0].diff_id
    with pytest.raises(ImageError, match=r"no image for platform linux/s390x .*linux/amd64"):
        open_image(layout, platform="linux/s390x")
    with pytest.raises(ImageError, match="arm/v7"):
        open_image(layout, platform="linux/arm/v7")
    with pytest.raises(ImageError, match="no image with ref 'other'.*multi"):
        open_image(layout, ref="other")
    assert Platform.parse("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert str(Platform.parse("amd64")) == "linux/amd64"
    with pytest.raises(ValueError):
        Platform.parse("a/b/c/d")


def test_several_images_need_a_ref(saved, tmp_path):
    layout = _layout_copy(saved, tmp_path)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    second = dict(index["manifests"][0], annotations={oi.REF_ANNOTATION: "v2"})
    index["manifests"].append(second)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with pytest.raises(ImageError, match=r"2 images; choose one with a ref \(v1, v2\)"):
        open_image(layout)
    with open_image(layout, ref="v2") as image:
        assert image.ref == "v2"


def test_missing_manifest_and_config_blobs(saved, tmp_path):
    layout = _layout_copy(saved, tmp_path)
    with open_image(layout) as image:
        cfg = image.config_digest
        first = image.layers[0].digest
    os.unlink(os.path.join(layout, "blobs", "sha256", first[7:]))
    with open_image(layout) as image:  # opening works; the blob is missing when opened
        assert not image.layers[0].available
        with pytest.raises(MissingBlobError, match=first):
            image.layers[0].verify()
    os.unlink(os.path.join(layout, "blobs", "sha256", cfg[7:]))
    with pytest.raises(MissingBlobError, match="config blob"):
        open_image(layout)


def test_tampered_blobs(saved, tmp_path):
    # docker-archive: one byte of a layer.tar changed -> the diff ID check fails
    src = saved["legacy"]
    dst = str(tmp_path / "tampered.tar")
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isreg() else None
            if m.name.endswith("layer.tar") and len(data) > 4096:
                data = data[:600] + bytes([data[600] ^ 1]) + data[601:]
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    with open_image(dst) as image:
        with pytest.raises(DiffIDMismatchError, match="the bytes hash to") as exc:
            image.verify()
        assert exc.value.expected in [la.digest for la in image.layers]
    # OCI: a gzip blob with the same length but other bytes -> the digest check fails
    layout = _layout_copy(saved, tmp_path)
    with open_image(layout) as image:
        top = image.layers[-1]
    path = os.path.join(layout, "blobs", "sha256", top.digest[7:])
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[4] ^= 0xFF  # gzip MTIME: still a valid stream, same diff ID, other digest
    with open(path, "wb") as f:
        f.write(data)
    with open_image(layout) as image:
        with pytest.raises(DiffIDMismatchError) as exc:
            image.layers[-1].verify()
        assert exc.value.expected == top.digest
        image.layers[-1].open_decompressed().read()  # without verify: read as is


def _evil_archive(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _docker_archive_members(saved):
    out = []
    with tarfile.open(saved["legacy"]) as tf:
        for m in tf:
            if m.isreg():
                out.append((m.name, tf.extractfile(m).read(), tarfile.REGTYPE, ""))
    return out


@pytest.mark.parametrize("evil", [
    ("../outside", b"x", tarfile.REGTYPE, ""),
    ("/etc/evil", b"x", tarfile.REGTYPE, ""),
    ("a/../../evil", b"x", tarfile.REGTYPE, ""),
])
def test_archive_member_names_that_escape_are_refused(saved, tmp_path, evil):
    members = [*_docker_archive_members(saved), evil]
    path = _evil_archive(str(tmp_path / "evil.tar"), members)
    with pytest.raises(UnsafeImageError, match="outside|absolute"):
        open_image(path)


def test_archive_links_resolve_inside_only(saved, tmp_path):
    """docker save links identical layer.tar files (<id>/layer.tar -> ../<other>/layer.tar):
    followed inside the archive; a link out of it is refused."""
    members = _docker_archive_members(saved)
    manifest = json.loads(next(d for n, d, _, _ in members if n == "manifest.json"))
    layer0 = manifest[0]["Layers"][0]
    renamed = [(("moved/" + n) if n == layer0 else n, d, k, ln) for n, d, k, ln in members]
    good = renamed + [(layer0, b"", tarfile.SYMTYPE, "../moved/" + layer0)]
    with open_image(_evil_archive(str(tmp_path / "linked.tar"), good)) as image:
        image.layers[0].verify()
    hard = renamed + [(layer0, b"", tarfile.LNKTYPE, "moved/" + layer0)]
    with open_image(_evil_archive(str(tmp_path / "hard.tar"), hard)) as image:
        image.layers[0].verify()
    for target in ("../../../../etc/passwd", "/etc/passwd"):
        bad = renamed + [(layer0, b"", tarfile.SYMTYPE, target)]
        with pytest.raises(UnsafeImageError, match="outside|absolute"):
            open_image(_evil_archive(str(tmp_path / "bad.tar"), bad))
    # manifest.json paths are confined too
    evil_manifest = [dict(manifest[0], Layers=["../" * 8 + "etc/passwd",
                                               *manifest[0]["Layers"][1:]])]
    bad = [(n, json.dumps(evil_manifest).encode() if n == "manifest.json" else d, k, ln)
           for n, d, k, ln in members]
    with pytest.raises(UnsafeImageError, match="outside"):
        open_image(_evil_archive(str(tmp_path / "bad-manifest.tar"), bad))


def test_layout_dir_symlink_out_is_refused(saved, tmp_path):
    layout = _layout_copy(saved, tmp_path)
    with open_image(layout) as image:
        first = image.layers[0].digest
    blob = os.path.join(layout, "blobs", "sha256", first[7:])
    os.unlink(blob)
    os.symlink("/etc/passwd", blob)
    with open_image(layout) as image:
        with pytest.raises(UnsafeImageError, match="outside"):
            image.layers[0].open()


def test_streams_and_compressed_archives(saved, tmp_path):
    with open(saved["oci_tar"], "rb") as f:  # a seekable file object works
        with open_image(f) as image:
            image.verify()
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe:
        os.close(w)
        with pytest.raises(ImageError, match="seekable"):
            open_image(pipe)
    gz = str(tmp_path / "x.tar.gz")
    subprocess.run(f"gzip -c {saved['legacy']} > {gz}", shell=True, check=True)
    with pytest.raises(ImageError, match="gzip-compressed archive"):
        open_image(gz)
    with pytest.raises(ImageError, match="not an image"):
        open_image(str(tmp_path))


def test_write_oci_layout_round_trip_through_skopeo_and_docker(saved, tmp_path):
    """Image.save writes an OCI layout skopeo reads; loaded into dockerd it has the same
    diff IDs."""
    out = str(tmp_path / "written")
    with open_image(saved["legacy"]) as image:
        mdigest = image.save(out, compression="gzip", ref="round")
        config = image.config
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{out}:round"))
    assert "sha256:" + hashlib.sha256(json.dumps(raw).encode()).hexdigest() != "" and raw
    with open_image(out, ref="round") as again:
        assert again.manifest_digest == mdigest
        assert again.diff_ids == config["rootfs"]["diff_ids"]
        assert again.config["config"] == config["config"]
        assert {la.media_type for la in again.layers} == {oi.MT_OCI_LAYER_GZIP}
        again.verify()
    archive = str(tmp_path / "written.tar")
    _skopeo("copy", "-q", f"oci:{out}:round", f"docker-archive:{archive}:ovltest-written:1")
    docker = saved["docker"]
    docker.run("load", "-i", archive)
    loaded = docker.inspect("ovltest-written:1")
    assert loaded["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]


def test_write_oci_layout_from_layer_tars(saved, tmp_path):
    """Layers given as paths, file objects and callables; zstd and uncompressed."""
    with open_image(saved["oci"]) as image:
        paths = []
        for i, la in enumerate(image.layers):
            p = str(tmp_path / f"l{i}.tar")
            with la.open_decompressed() as r, open(p, "wb") as f:
                shutil.copyfileobj(r, f)
            paths.append(p)
        want = image.diff_ids
    out = str(tmp_path / "fresh")
    inputs = [paths[0], open(paths[1], "rb"), lambda: open(paths[2], "rb")]
    for compression in ("zstd", "none"):
        write_oci_layout(out, inputs if compression == "zstd" else paths,
                         compression=compression, ref=compression, platform="linux/arm64/v8")
    inputs[1].close()
    for compression, mt in (("zstd", oi.MT_OCI_LAYER_ZSTD), ("none", oi.MT_OCI_LAYER)):
        with open_image(out, ref=compression, platform="linux/arm64") as image:
            assert image.diff_ids == want
            assert image.platform == Platform("linux", "arm64", "v8")
            assert {la.media_type for la in image.layers} == {mt}
            image.verify()
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{out}:none"))
    assert [d["digest"] for d in raw["layers"]] == want  # uncompressed: digest = diff ID


def test_cli_layers_and_diffid(saved, tmp_path):
    def run(*args, input=None):
        return subprocess.run([sys.executable, "-m", "overlayfs", *args], input=input,
                              capture_output=True)

    diff_ids = saved["inspect"]["RootFS"]["Layers"]
    for spec in (saved["legacy"], f"docker-archive:{saved['legacy']}:{TAG}",
                 f"oci:{saved['oci']}:v1", f"oci-archive:{saved['oci_tar']}", saved["zstd"]):
        p = run("layers", spec, "--json")
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        assert [la["diff_id"] for la in data["layers"]] == diff_ids
        assert [la["chain_id"] for la in data["layers"]][-1] == chain_id(diff_ids)
    with open(saved["oci_tar"], "rb") as f:
        p = run("layers", "-", input=f.read())
    assert p.returncode == 0 and p.stdout.decode().count("sha256:") >= 3 * len(diff_ids)
    p = run("layers", f"oci:{saved['oci']}:nope")
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1
    assert b"no image with ref 'nope'" in p.stderr and b"Traceback" not in p.stderr
    p = run("layers", f"oci:{saved['legacy']}")
    assert p.returncode == 1 and b"not a directory" in p.stderr
    with open_image(saved["zstd"]) as image:
        with image.layers[-1].open() as f:
            blob = f.read()
    p = run("diffid", "-", input=blob)
    assert p.returncode == 0 and p.stdout.decode().strip() == diff_ids[-1]
    p = run("diffid", str(tmp_path / "missing"))
    assert p.returncode == 1 and b"No such file" in p.stderr
