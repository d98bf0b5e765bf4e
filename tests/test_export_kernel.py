"""flatten and squash against the kernel: random stacks (stackgen) mounted by the
kernel and archived by GNU tar, against our flatten of a Stack over the same layers;
and squash of the top layers, extracted into a layer dir and mounted over the layers
below, against the mount of the original stack."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import kernel
import pytest
import stackgen
import tarcmp

from overlayfs import Stack
from overlayfs.export import flatten, squash

pytestmark = pytest.mark.usefixtures("require_kernel")


def _gnu_tar_of_mount(tmp_path, lowers, name) -> dict:
    out = os.path.join(tmp_path, name)
    res = kernel.run_in_mount(tarcmp.gnu_tar_worker, {"out": out}, lowers, chroot=False,
                              options=("redirect_dir=follow",))
    # The kernel lists some xattr whiteouts whose lookup fails: GNU tar warns (exit 1).
    problems = [line for line in res["stderr"].splitlines() if "File removed before we read it" not in line]
    assert res["rc"] in (0, 1) and not problems, res["stderr"]
    return tarcmp.records(out)


def _build(tmp_path, seed, **kw):
    kw.setdefault("redirects", False)  # invalid ones would fail both (damaged entries)
    lowers, _, _ = stackgen.make_stack(os.path.join(tmp_path, "stack"), seed, 3 + seed % 3, upper=False, **kw)
    return lowers


@pytest.mark.parametrize("seed", range(8))
def test_flatten_matches_gnu_tar_of_a_mount(tmp_path, seed):
    lowers = _build(tmp_path, seed)
    buf = io.BytesIO()
    with Stack(lowers) as st:
        r = flatten(st, buf, xattrs="all")
    ours = tarcmp.records(buf.getvalue())
    assert r.diff_id == "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    gnu = _gnu_tar_of_mount(tmp_path, lowers, "gnu.tar")
    # Sockets: GNU tar skips them too.  Hardlinks are resolved by tarcmp.
    assert tarcmp.strip(ours, "linked") == tarcmp.strip(gnu, "linked")


def test_flatten_hardlink_modified_later(tmp_path):
    """ggcr#2002: a hardlink pair in one layer, a later layer rewrites one name."""
    low, top = tmp_path / "low", tmp_path / "top"
    low.mkdir()
    top.mkdir()
    (low / "a").write_bytes(b"old")
    os.link(low / "a", low / "b")
    (top / "a").write_bytes(b"new")
    with Stack([str(top), str(low)]) as st:
        buf = io.BytesIO()
        st.export(buf)
    recs = tarcmp.records(buf.getvalue())
    assert recs[b"a"]["sha256"] == hashlib.sha256(b"new").hexdigest()
    assert recs[b"b"]["sha256"] == hashlib.sha256(b"old").hexdigest()
    assert "linked" not in recs[b"a"] and "linked" not in recs[b"b"]


def _squash_roundtrip(tmp_path, lowers, k, below_given):
    """Squash lowers[:k], extract it as a layer, mount it over lowers[k:]."""
    out = os.path.join(tmp_path, f"sq{k}{below_given}.tar")
    squash(lowers[:k], out, below=lowers[k:] if below_given else None, xattrs="all")
    layer = os.path.join(tmp_path, f"squashed{k}{below_given}")
    os.mkdir(layer)
    tarcmp.extract_layer(out, layer)
    return _gnu_tar_of_mount(tmp_path, [layer, *lowers[k:]], f"sq-view{k}{below_given}.tar"), out


@pytest.mark.parametrize("seed", range(8))
def test_squash_then_mount_equals_the_stack(tmp_path, seed):
    lowers = _build(tmp_path, seed)
    want = _gnu_tar_of_mount(tmp_path, lowers, "orig.tar")
    for k in range(1, len(lowers)):
        for below_given in (False, True):
            got, out = _squash_roundtrip(tmp_path, lowers, k, below_given)
            # Directory mtimes and modes come from the squashed dir: the same as the
            # merged view's.  Everything must match.
            assert tarcmp.strip(got, "linked") == tarcmp.strip(want, "linked"), (k, below_given)
    # With the layers below given, only whiteouts over something there remain.
    with Stack(lowers[1:]) as below:
        for name in tarcmp.records(os.path.join(tmp_path, "sq1True.tar")):
            d, _, base = name.rpartition(b"/")
            if base.startswith(b".wh.") and base != b".wh..wh..opq":
                assert below.lexists(d + b"/" + base[4:] if d else base[4:]), name


def test_squash_whiteout_dir_then_recreate(tmp_path):
    """A dir deleted in one layer and made again above: the squash shows the new dir
    alone (opaque), over a base that still has the old one."""
    base, mid, top = (tmp_path / n for n in ("base", "mid", "top"))
    for d in (base, mid, top):
        d.mkdir()
    (base / "d").mkdir()
    (base / "d" / "old").write_bytes(b"o")
    (base / "f").write_bytes(b"f")
    os.mknod(mid / "d", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(mid / "f", stat.S_IFCHR, os.makedev(0, 0))
    (top / "d").mkdir()
    (top / "d" / "new").write_bytes(b"n")
    buf = io.BytesIO()
    squash([str(top), str(mid)], buf, below=[str(base)])
    order: list = []
    recs = tarcmp.records(buf.getvalue(), order=order)
    assert order == [b"d", b"d/.wh..wh..opq", b"d/new", b".wh.f"]
    assert set(recs) == {b"d", b"d/.wh..wh..opq", b"d/new", b".wh.f"}
    # With a base lacking f, its whiteout is not needed.
    os.unlink(base / "f")
    buf = io.BytesIO()
    squash([str(top), str(mid)], buf, below=[str(base)])
    assert b".wh.f" not in tarcmp.records(buf.getvalue())


def test_cli_export_and_squash(tmp_path):
    import json
    import subprocess
    import sys

    lowers = _build(tmp_path, 3)
    py = [sys.executable, "-m", "overlayfs"]
    out = tmp_path / "flat.tar"
    p = subprocess.run([*py, "export", "--upper", lowers[0], *lowers[1:], "-o", str(out), "--json"],
                       capture_output=True, check=True)
    summary = json.loads(p.stdout)
    assert summary["diff_id"] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    with Stack(lowers) as st:
        buf = io.BytesIO()
        assert flatten(st, buf).diff_id == summary["diff_id"]
    p = subprocess.run([*py, "squash", *lowers[:2], "--below", lowers[2], "-o", "-"], capture_output=True,
                       check=True)
    buf = io.BytesIO()
    squash(lowers[:2], buf, below=lowers[2:3])
    assert p.stdout == buf.getvalue()
    p = subprocess.run([*py, "export", "-o", "-"], capture_output=True)
    assert p.returncode != 0 and b"Traceback" not in p.stderr
