"""export_layer: a layer dir (kernel form) to an OCI layer tar, checked entry by entry
with tarfile and GNU tar, byte-for-byte determinism, SOURCE_DATE_EPOCH, compression,
the redirect/metacopy refusal and its naive-diff fallback, big and odd names, and a
1 GiB sparse file.  Root only (char 0:0 whiteouts, trusted.* xattrs, chown)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys

import pytest
import tarcmp

from overlayfs import Stack
from overlayfs.export import ExportResult, UnsupportedLayerError, export_layer

pytestmark = pytest.mark.usefixtures("require_root")  # skip_or_fail when not root

T = 1_700_000_000
CAP_V2 = bytes.fromhex("01000002") + bytes.fromhex("00200000") + bytes(12)
CAP_V3 = bytes.fromhex("01000003") + bytes.fromhex("00200000") + bytes(12) + bytes.fromhex("e8030000")


def _file(path, data=b"", mode=0o644, uid=0, gid=0):
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _times(root):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (T, T + 1), follow_symlinks=False)
    os.utime(root, (T, T))


def make_layer(root) -> str:
    """A layer with every kind of entry the export converts or keeps."""
    L = os.fsencode(os.path.join(root, "layer"))
    os.makedirs(L + b"/etc/sub")
    _file(L + b"/etc/passwd", b"root:x:0:0\n")
    _file(L + b"/etc/shadow", b"secret", mode=0o640, uid=0, gid=42)
    os.link(L + b"/etc/passwd", L + b"/etc/passwd-link")
    os.symlink(b"../etc/passwd", L + b"/etc/sub/rel")
    os.symlink(b"/abs/target", L + b"/etc/sub/abs")
    _file(L + b"/suid", b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000)
    _file(L + b"/sgid-sticky", b"", mode=0o3777)
    os.mkfifo(L + b"/fifo")
    os.mknod(L + b"/tty", stat.S_IFCHR | 0o620, os.makedev(5, 0))
    os.mknod(L + b"/loop", stat.S_IFBLK | 0o660, os.makedev(7, 3))
    os.mknod(L + b"/gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    os.mkdir(L + b"/opq")
    os.setxattr(L + b"/opq", "trusted.overlay.opaque", b"y")
    _file(L + b"/opq/new", b"fresh")
    os.mkdir(L + b"/xdir")
    os.setxattr(L + b"/xdir", "trusted.overlay.opaque", b"x")
    _file(L + b"/xdir/xwh")
    os.setxattr(L + b"/xdir/xwh", "trusted.overlay.whiteout", b"")
    _file(L + b"/plain-xwh")  # not in an opaque=x dir: still a whiteout for lookups
    os.setxattr(L + b"/plain-xwh", "trusted.overlay.whiteout", b"")
    _file(L + b"/cap2", b"bin", mode=0o755)
    os.setxattr(L + b"/cap2", "security.capability", CAP_V2)
    _file(L + b"/cap3", b"bin", mode=0o755)
    os.setxattr(L + b"/cap3", "security.capability", CAP_V3)
    _file(L + b"/user-x", b"u")
    os.setxattr(L + b"/user-x", "user.note", b"\x00\xffbinary")
    os.setxattr(L + b"/user-x", "trusted.overlay.overlay.origin", b"escaped")
    os.setxattr(L + b"/user-x", "trusted.overlay.impure", b"y")  # private
    _file(L + b"/caf\xc3\xa9 \xff\n", b"odd name")
    deep = L + b"/" + b"/".join([b"d" * 60] * 5)
    os.makedirs(deep)
    _file(deep + b"/" + b"n" * 255, b"long")
    os.mkdir(L + b"/empty", 0o700)
    _times(L)
    return os.fsdecode(L)


@pytest.fixture
def layer(tmp_path):
    return make_layer(str(tmp_path))


def test_entries(layer, tmp_path):
    out = tmp_path / "l.tar"
    r = export_layer(layer, out)
    assert isinstance(r, ExportResult)
    data = out.read_bytes()
    assert r.size == len(data) and len(data) % 512 == 0
    assert r.diff_id == r.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    order: list = []
    recs = tarcmp.records(data, order=order)
    assert r.entries == len(order)
    assert recs[b"etc/passwd"]["sha256"] == hashlib.sha256(b"root:x:0:0\n").hexdigest()
    assert recs[b"etc/shadow"] == {**recs[b"etc/shadow"], "mode": "0o640", "gid": 42}
    assert recs[b"etc/passwd-link"]["linked"]
    assert recs[b"etc/sub/rel"]["target"] == b"../etc/passwd".hex()
    assert recs[b"suid"]["mode"] == "0o4755" and recs[b"suid"]["uid"] == 1000
    assert recs[b"sgid-sticky"]["mode"] == "0o3777"
    assert recs[b"fifo"]["type"] == "fifo"
    assert recs[b"tty"] == {**recs[b"tty"], "type": "chr", "dev": [5, 0]}
    assert recs[b"loop"] == {**recs[b"loop"], "type": "blk", "dev": [7, 3]}
    # whiteouts: moby's ConvertWrite form
    for wh in (b".wh.gone", b"xdir/.wh.xwh", b".wh.plain-xwh"):
        assert recs[wh] == {"type": "file", "mode": "0o600", "uid": 0, "gid": 0, "mtime": T + 1,
                            "size": 0, "sha256": hashlib.sha256(b"").hexdigest(), "xattrs": {}}
    assert b"gone" not in recs and b"xdir/xwh" not in recs
    assert b"plain-xwh" not in recs and recs[b".wh.plain-xwh"]["mode"] == "0o600"
    # opaque: the marker right after the dir, mode = the dir's permission bits
    assert order[order.index(b"opq") + 1] == b"opq/.wh..wh..opq"
    assert recs[b"opq/.wh..wh..opq"]["mode"] == "0o755"
    assert b"xdir/.wh..wh..opq" not in recs  # opaque=x is not opaque
    # xattrs: capability only (v3 -> v2), never overlay ones
    assert recs[b"cap2"]["xattrs"] == {"security.capability": CAP_V2.hex()}
    assert recs[b"cap3"]["xattrs"] == {"security.capability": CAP_V3[:20].replace(b"\x03", b"\x02", 1).hex()}
    assert recs[b"user-x"]["xattrs"] == {}
    assert recs[b"opq"]["xattrs"] == {}
    assert recs[b"caf\xc3\xa9 \xff\n"]["sha256"] == hashlib.sha256(b"odd name").hexdigest()
    long = b"/".join([b"d" * 60] * 5) + b"/" + b"n" * 255
    assert recs[long]["sha256"] == hashlib.sha256(b"long").hexdigest()
    assert recs[b"empty"] == {**recs[b"empty"], "type": "dir", "mode": "0o700", "mtime": T + 1}
    # depth first, parents first, names in byte order within a directory
    for i, name in enumerate(order):
        parent = name.rstrip(b"/").rpartition(b"/")[0]
        if parent:
            assert parent in order[:i]
    top = [n for n in order if b"/" not in n]
    assert top == sorted(top, key=lambda n: n[4:] if n.startswith(b".wh.") else n)


def test_all_xattrs(layer, tmp_path):
    recs = tarcmp.records(_export(layer, xattrs="all"))
    assert recs[b"user-x"]["xattrs"] == {"user.note": b"\x00\xffbinary".hex(),
                                         "trusted.overlay.origin": b"escaped".hex()}
    assert recs[b"opq"]["xattrs"] == {}
    assert recs[b"xdir/.wh.xwh"]["xattrs"] == {}


def _export(layer, **kw) -> bytes:
    buf = io.BytesIO()
    export_layer(layer, buf, **kw)
    return buf.getvalue()


def test_deterministic_and_sde(layer, tmp_path):
    a = _export(layer)
    assert _export(layer) == a
    # a copy made at another time, same metadata: same bytes (GNU tar --sort? not needed)
    b = _export(layer, source_date_epoch=T)
    recs = tarcmp.records(b)
    # opaque markers carry no time (moby's extra header): 0
    assert {r["mtime"] for n, r in recs.items() if not n.endswith(b".wh..wh..opq")} == {T}
    assert b != a
    assert tarcmp.strip(tarcmp.records(a), "mtime") == tarcmp.strip(recs, "mtime")


def test_gnu_tar_extracts_the_same_tree(layer, tmp_path):
    tar = tmp_path / "l.tar"
    export_layer(layer, tar, xattrs="all")
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tar), "-C", str(dest)],
                   check=True)
    again = tmp_path / "again.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", str(again), "-C", str(dest),
                    "."], check=True)
    ours = tarcmp.records(tar.read_bytes())
    gnu = tarcmp.records(again.read_bytes())
    # GNU tar keeps the .wh. files as files: the same entries, the same attributes.
    assert tarcmp.strip(gnu, "linked") == tarcmp.strip(ours, "linked")


def test_compression(layer, tmp_path):
    plain = _export(layer)
    out = tmp_path / "l.tar.gz"
    r = export_layer(layer, out, compression="gzip")
    blob = out.read_bytes()
    assert gzip.decompress(blob) == plain
    assert r.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert r.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and r.size == len(blob)
    with pytest.raises(ValueError):
        export_layer(layer, io.BytesIO(), compression="lz4")  # type: ignore[arg-type]


def test_stream_to_pipe(layer):
    r, w = os.pipe()
    proc = subprocess.Popen(["sha256sum"], stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    with os.fdopen(w, "wb", buffering=0) as f:
        res = export_layer(layer, f)
    out, _ = proc.communicate()
    assert res.diff_id == "sha256:" + out.split()[0].decode()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        export_layer(tmp_path / "missing", tmp_path / "o.tar")
    assert not (tmp_path / "o.tar").exists()  # a failed export leaves no file
    with pytest.raises(FileNotFoundError):
        export_layer(tmp_path / "missing", os.devnull)
    assert os.path.exists(os.devnull)  # ...but never removes what is not a regular file
    with pytest.raises(ValueError):
        export_layer(tmp_path, io.BytesIO(), xattrs="some")  # type: ignore[arg-type]


def _redirect_layers(root):
    """lower: d/f; upper: d renamed to e with redirect_dir=on (a redirect xattr)."""
    lower, upper, work = (os.path.join(root, n) for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        os.mkdir(d)
    os.makedirs(os.path.join(lower, "d"))
    _file(os.path.join(lower, "d", "f"), b"data")
    _file(os.path.join(lower, "keep"), b"k")
    with Stack([lower], upper, work, redirect_dir=True) as st:
        st.rename("d", "e")
    assert os.getxattr(os.path.join(upper, "e"), "trusted.overlay.redirect")
    return lower, upper


def test_redirect_refused_and_fallback(tmp_path):
    lower, upper = _redirect_layers(str(tmp_path))
    with pytest.raises(UnsupportedLayerError) as ei:
        export_layer(upper, tmp_path / "r.tar")
    assert ei.value.path == "e" and ei.value.reason == "redirect" and "e" in str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert not (tmp_path / "r.tar").exists()
    r = export_layer(upper, tmp_path / "r.tar", lowers=[lower])
    recs = tarcmp.records((tmp_path / "r.tar").read_bytes())
    assert set(recs) == {b"e", b"e/.wh..wh..opq", b"e/f", b".wh.d"}
    assert recs[b"e/f"]["sha256"] == hashlib.sha256(b"data").hexdigest()
    assert r.entries == 4


def test_metacopy_refused(tmp_path):
    lower, upper, work = (os.path.join(tmp_path, n) for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        os.mkdir(d)
    _file(os.path.join(lower, "f"), b"data")
    # What chmod through a metacopy=on mount leaves: metadata up, data below.
    up = os.path.join(upper, "f")
    with open(up, "wb") as f:
        f.truncate(4)
    os.chmod(up, 0o600)
    os.setxattr(up, "trusted.overlay.metacopy", b"")
    with pytest.raises(UnsupportedLayerError, match="metacopy"):
        export_layer(upper, io.BytesIO())
    buf = io.BytesIO()
    export_layer(upper, buf, lowers=[lower])
    recs = tarcmp.records(buf.getvalue())
    assert recs[b"f"]["mode"] == "0o600" and recs[b"f"]["sha256"] == hashlib.sha256(b"data").hexdigest()


def test_sparse_1g(tmp_path):
    L = tmp_path / "big"
    L.mkdir()
    with open(L / "sparse", "wb") as f:
        f.truncate(1 << 30)
        f.seek(123456789)
        f.write(b"x")
    sink = _Sink()
    r = export_layer(L, sink)
    assert r.size == 512 + (1 << 30) + 1024
    assert sink.head[:6] == b"sparse" and int(sink.head[124:135], 8) == 1 << 30


class _Sink(io.RawIOBase):
    """Counts what is written, keeps the first header."""

    def __init__(self):
        self.n = 0
        self.head = b""

    def writable(self):
        return True

    def write(self, b):
        if not self.head:
            self.head = bytes(b[:512])
        self.n += len(b)
        return len(b)


def test_cli(layer, tmp_path):
    py = [sys.executable, "-m", "overlayfs"]
    p = subprocess.run([*py, "diff", layer, "-o", "-", "--json"], capture_output=True, check=True)
    summary = json.loads(p.stderr)
    assert summary["diff_id"] == "sha256:" + hashlib.sha256(p.stdout).hexdigest()
    assert summary["entries"] == len(tarcmp.records(p.stdout)) and summary["size"] == len(p.stdout)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(T - 5))
    p = subprocess.run([*py, "diff", layer, "-o", str(tmp_path / "o.tar.gz"), "--compress", "gzip", "--json"],
                       capture_output=True, check=True, env=env)
    got = json.loads(p.stdout)
    recs = tarcmp.records(gzip.decompress((tmp_path / "o.tar.gz").read_bytes()))
    assert {r["mtime"] for n, r in recs.items() if not n.endswith(b".wh..wh..opq")} == {T - 5}
    assert got["digest"] != got["diff_id"]
    p = subprocess.run([*py, "diff", str(tmp_path / "nope"), "-o", str(tmp_path / "x.tar")], capture_output=True)
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1 and b"Traceback" not in p.stderr
