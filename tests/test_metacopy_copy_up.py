"""Data copy-up of upper metacopy files (copy_up.c:``ovl_copy_up_meta_inode_data``), against the kernel.

An upper metacopy file (``<ns>.overlay.metacopy``, its size set, its data in a
lower or data-only layer) is "up" for a metadata change, but writing or
truncating it needs its data first: the kernel copies the data below into the
existing upper file, fsyncs it (unless volatile), puts a file capability back
(the writes drop it), then removes the metacopy xattr; the redirect, the
origin and the new mtime/ctime stay.  With ``O_TRUNC`` nothing is copied
(the open truncates).  chmod, chown, utime and setxattr need nothing more.

The metacopy files are made the way the kernel makes them: a mount with
``metacopy=on,redirect_dir=on`` chmods (and renames) lower files; two are
written by hand (an upper metacopy whose data is missing, and one redirected
into a data-only layer).  Then the same operations run through a kernel mount
and through ``Stack(metacopy=True)`` on identical copies, and the outcomes
(with the content read back through the fd), the upper layers
(``write_ops.dump_upper``) and the merged views are compared.  Not among the
operations: a read-only open of a metacopy file (the Stack's fd is the data
file's, whose fstat is not the overlay inode's), and in the views a metacopy
file without data (the kernel's readdir drops it, the Stack lists it; see
the README).

Needs root and overlayfs (fails instead of skipping under
``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading

import copyup_helpers as H
import dumps
import kernel
import pytest
import util
import write_ops
from write_ops import O

import overlayfs

MC_OPTIONS = ("metacopy=on", "redirect_dir=on")
MC_KWARGS = {"metacopy": True, "redirect_dir": True}
XMETACOPY = "trusted.overlay.metacopy"
XREDIRECT = "trusted.overlay.redirect"
MiB = 1 << 20

RDWR, WRONLY, RDONLY = ["O_RDWR"], ["O_WRONLY"], ["O_RDONLY"]


@pytest.fixture(autouse=True)
def _kernel():
    kernel.skip_unless_mountable()



def _sparse(path, size, pieces):
    """A file of *size* bytes, all hole but *pieces* ``{offset: data}``."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces.items():
            f.seek(off)
            f.write(data)


def _data_map(path):
    st = os.stat(path)
    return dumps.data_map(path, st.st_size)


def _xattrs(path):
    return set(os.listxattr(path, follow_symlinks=False))


#: Lower files the kernel turns into upper metacopy files (chmod to this mode).
CHMODS = {"f": 0o640, "sparse": 0o600, "trunc": 0o640, "trunc2": 0o640, "cap": 0o755, "empty": 0o600,
          "suid": 0o4755, "keep": 0o600, "keep2": 0o600, "keep3": 0o600, "d/g": 0o640, "ren": 0o600,
          "big": 0o600}


def build(tmp):
    """l1 with the files, and upper metacopy files made by a kernel mount."""
    layout = write_ops.make_layout(tmp, {"l1": [
        ("f", "file", b"hello world data\n"),
        ("sparse", "sparse", 3 * MiB),
        ("trunc", "file", b"0123456789"),
        ("trunc2", "file", b"0123456789"),
        ("cap", "file", b"#!/bin/true\n"), ("cap", "xattr", "security.capability", H.CAP_NET_RAW_V2),
        ("cap", "xattr", "user.kept", b"yes"),
        ("empty", "file", b""),
        ("suid", "file", b"set-id"),
        ("keep", "file", b"keep me"), ("keep2", "file", b"keep2"), ("keep3", "file", b"keep3"),
        ("d/g", "file", b"nested file"),
        ("ren", "file", b"renamed data"),
        ("big", "file", os.urandom(2 * MiB + 123)),
    ]})
    l1 = os.fsdecode(layout.lowers[0])
    st = os.stat(os.path.join(l1, "sparse"))
    _sparse(os.path.join(l1, "sparse"), 3 * MiB, {1500000: b"mid", 3 * MiB - 5: b"tail!"})
    os.utime(os.path.join(l1, "sparse"), ns=(st.st_atime_ns, st.st_mtime_ns))
    prep = [O("chmod", path=p.encode(), mode=m) for p, m in CHMODS.items()]
    prep.append(O("rename", src=b"ren", dst=b"ren2"))
    res = write_ops.apply_kernel(layout.lowers, layout.upper, layout.work, prep, options=MC_OPTIONS)
    assert res["outcomes"] == ["ok"] * len(prep), res
    upper = os.fsdecode(layout.upper)
    for p in list(CHMODS) + ["ren2"]:
        if p == "ren":
            continue
        assert XMETACOPY in _xattrs(os.path.join(upper, p)), p
    assert os.getxattr(os.path.join(upper, "ren2"), XREDIRECT) == b"ren"
    return layout


@pytest.fixture
def layout(tmp_path):
    return build(tmp_path)


#: The operations compared; the comments say what each upper file must become.
OPS = [
    O("os_open", path=b"f", flags=RDWR),  # data copied: same content, fresh mtime
    O("os_open", path=b"sparse", flags=WRONLY + ["O_APPEND"], data=b"appended"),
    O("os_open", path=b"trunc", flags=RDONLY + ["O_TRUNC"]),  # nothing copied, emptied
    O("os_open", path=b"trunc2", flags=WRONLY + ["O_TRUNC"], data=b"new"),
    O("truncate", path=b"ren2", length=5),  # keeps its redirect
    O("os_open", path=b"cap", flags=RDWR),  # the capability survives the copy
    O("os_open", path=b"suid", flags=WRONLY, data=b"S", offset=0),
    O("os_open", path=b"empty", flags=WRONLY),
    O("os_open", path=b"d/g", flags=RDWR, data=b"NE", offset=2),
    O("os_open", path=b"big", flags=RDWR, data=b"end", offset=2 * MiB + 120),
    O("chmod", path=b"keep", mode=0o644),  # metadata only: stays metacopy
    O("utime", path=b"keep2", ns=(1, 2)),
    O("setxattr", path=b"keep3", name=b"user.x", value=b"v"),
    O("os_open", path=b"f", flags=RDWR),  # a second open finds the data up
]


def compare_ops(tmp, layout, ops, *, options=MC_OPTIONS, stack_kwargs=MC_KWARGS, data_layers=()):
    """Outcomes and upper dumps of *ops* through the kernel and a Stack on two
    copies of *layout* (no views: for what a view cannot take, a second
    volatile mount, a data-only layer, a name the kernel's readdir drops).
    *data_layers* are paths relative to the layout's root."""
    tmp = os.fsencode(tmp)
    a, b = layout.clone(tmp + b"/A"), layout.clone(tmp + b"/B")
    kres = write_ops.apply_kernel(a.lowers, a.upper, a.work, ops, options=options,
                                  data_layers=[a.root + b"/" + d for d in data_layers])
    kw = dict(stack_kwargs)
    if data_layers:
        kw["data_layers"] = [b.root + b"/" + d for d in data_layers]
    sres = write_ops.apply_stack(overlayfs.Stack, b.lowers, b.upper, b.work, ops, stack_kwargs=kw)
    assert sres["error"] is None, sres["error"]
    assert kres["outcomes"] == sres["outcomes"], (kres["outcomes"], sres["outcomes"])
    kd = write_ops.dump_upper(a.upper, kres["window"])
    sd = write_ops.dump_upper(b.upper, sres["window"])
    diffs = dumps.compare_dumps(kd, sd, dumps.WRITE_RULES)
    assert not diffs, diffs
    return kres["outcomes"], kd, b


def test_data_copy_up_matches_the_kernel(tmp_path, layout):
    report = write_ops.run_case(tmp_path, layout, OPS, options=MC_OPTIONS, stack_kwargs=MC_KWARGS)
    assert not report.diffs, report.format()
    out = report.a.outcomes
    # The kernel's result, pinned (so a rule both sides got wrong still fails).
    assert out[0].startswith("ok reg size=17 mode=640 sha=")
    assert out[2].startswith("ok reg size=0 mode=640 sha=")
    kdump, sdump = report.a.upper_dump, report.b.upper_dump
    for p in ("f", "sparse", "trunc", "trunc2", "ren2", "cap", "suid", "empty", "d/g", "big"):
        for dump in (kdump, sdump):
            assert XMETACOPY not in dump[p].get("xattrs", {}), p
    for p in ("keep", "keep2", "keep3"):
        for dump in (kdump, sdump):
            assert XMETACOPY in dump[p]["xattrs"], p
    for dump in (kdump, sdump):
        assert dump["ren2"]["xattrs"][XREDIRECT] == b"ren".hex()
        assert dump["cap"]["xattrs"]["security.capability"] == H.CAP_NET_RAW_V2.hex()
        assert dump["f"]["mtime"] == "fresh" and dump["empty"]["mtime"] != "fresh"
    # The content read back through a new Stack, too.
    b = tmp_path / "B"
    with overlayfs.Stack([b / "l1"], b / "upper", b / "work", metacopy=True) as st:
        with st.open("f") as f:
            assert f.read() == b"hello world data\n"
        with st.open("sparse") as f:
            data = f.read()
        assert (len(data), data[1500000:1500003], data[-13:]) == (3 * MiB + 8, b"mid", b"tail!appended")
        with st.open("d/g") as f:
            assert f.read() == b"neNEed file"


def test_sparse_lower_keeps_its_holes(tmp_path, layout):
    """Only the data extents of the lower file are written into the upper one:
    its holes stay holes (the kernel, splicing 1 MiB chunks, may allocate a
    little more; ``dumps.WRITE_RULES``)."""
    lower = os.path.join(os.fsdecode(layout.lowers[0]), "sparse")
    upper = os.path.join(os.fsdecode(layout.upper), "sparse")
    want = _data_map(lower)
    assert _data_map(upper) == []  # a metacopy file holds no data
    with overlayfs.Stack(layout.lowers, layout.upper, layout.work, **MC_KWARGS) as st:
        with st.open("sparse", "r+b") as f:
            assert f.read(4) == b"\0" * 4
    assert XMETACOPY not in _xattrs(upper)
    assert _data_map(upper) == want
    with open(upper, "rb") as f, open(lower, "rb") as g:
        assert f.read() == g.read()


def test_stack_api_open_truncate_copy_up(layout):
    """Stack.open(r+), truncate and copy_up on metacopy files: reads see the
    old data, then the written data; the upper file holds it all."""
    upper = os.fsdecode(layout.upper)
    with overlayfs.Stack(layout.lowers, layout.upper, layout.work, **MC_KWARGS) as st:
        with st.open("f", "r+b") as f:
            assert f.read() == b"hello world data\n"
            f.seek(6)
            f.write(b"WORLD")
        with st.open("f") as f:
            assert f.read() == b"hello WORLD data\n"
        st.truncate("trunc", 4)
        with st.open("trunc") as f:
            assert f.read() == b"0123"
        assert st.copy_up("d/g").path == os.path.join(upper, "d/g")
        with open(os.path.join(upper, "d/g"), "rb") as f:
            assert f.read() == b"nested file"
        assert st.copy_up("d/g") == overlayfs.CopyUp(os.path.join(upper, "d/g"), "none")
        st.chmod("keep", 0o644)
        assert XMETACOPY in _xattrs(os.path.join(upper, "keep"))
        with st.open("big", "ab") as f:
            f.write(b"!")
        assert st.lstat("big").st_size == 2 * MiB + 124
    for p in ("f", "trunc", "d/g", "big"):
        assert XMETACOPY not in _xattrs(os.path.join(upper, p)), p
    with overlayfs.Stack(layout.lowers, layout.upper, layout.work, metacopy=True) as st:
        with st.open("f") as f:
            assert f.read() == b"hello WORLD data\n"
        with st.open("big") as f, open(os.path.join(os.fsdecode(layout.lowers[0]), "big"), "rb") as g:
            assert f.read() == g.read() + b"!"


def test_readers_never_see_a_torn_file(layout):
    """Threads reading a metacopy file while another opens it for writing
    (without writing) read the same bytes before, during and after the
    data copy-up."""
    lower = os.path.join(os.fsdecode(layout.lowers[0]), "big")
    with open(lower, "rb") as f:
        want = f.read()
    bad, stop = [], threading.Event()
    with overlayfs.Stack(layout.lowers, layout.upper, layout.work, **MC_KWARGS) as st:
        def reader():
            while not stop.is_set():
                try:
                    with st.open("big") as f:
                        got = f.read()
                except OSError as e:
                    bad.append(repr(e))
                    return
                if got != want:
                    bad.append("torn read of %d bytes" % len(got))
                    return

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            fd = st.os_open("big", os.O_RDWR)
            os.close(fd)
            for _ in range(20):
                st.lstat("big")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert st.lstat("big").st_size == len(want)
    assert not bad, bad
    assert XMETACOPY not in _xattrs(os.path.join(os.fsdecode(layout.upper), "big"))


def test_missing_data_is_the_kernels_error(tmp_path, layout):
    """An upper metacopy file with nothing below: EIO for a write, a
    truncate, a copy_up, and the file stays as it was."""
    util.metacopy(os.path.join(os.fsdecode(layout.upper), "nodata"), size=5)
    ops = [O("os_open", path=b"nodata", flags=RDWR), O("os_open", path=b"nodata", flags=WRONLY + ["O_TRUNC"]),
           O("truncate", path=b"nodata", length=1), O("chmod", path=b"nodata", mode=0o600)]
    outcomes, kd, b = compare_ops(tmp_path, layout, ops)
    assert outcomes == ["EIO"] * 4
    assert XMETACOPY in kd["nodata"]["xattrs"]
    with overlayfs.Stack(b.lowers, b.upper, b.work, **MC_KWARGS) as st:
        util.expect_errno(errno.EIO, st.copy_up, "nodata")
        util.expect_errno(errno.EIO, st.open, "nodata", "r+b")


def test_data_layer_reached_by_an_absolute_redirect(tmp_path):
    """A lower metacopy file redirected (absolute) into a data-only layer,
    chmodded through a kernel mount: an upper metacopy file over it, whose
    data is copied from the data layer, holes kept.  A missing data file gives
    the kernel's error (ENOENT: the lazy data lookup) for any copy-up of the
    lower metacopy file."""
    orig = tmp_path / "orig"
    l1, d1, upper, work = (orig / n for n in ("l1", "d1", "upper", "work"))
    for p in (l1, d1 / "objects", upper, work):
        p.mkdir(parents=True)
    util.mkfile(str(l1 / "topfile"), "x")
    _sparse(str(d1 / "objects/abc"), 2 * MiB, {0: b"head", MiB + 7: b"object data"})
    util.metacopy(str(l1 / "obj"), size=2 * MiB, redirect_to="/objects/abc", mode=0o644)
    util.metacopy(str(l1 / "obj2"), size=2 * MiB, redirect_to="/objects/abc", mode=0o644)
    util.metacopy(str(l1 / "missing"), size=6, redirect_to="/objects/nope", mode=0o644)
    for p in ("obj", "obj2", "missing"):
        os.utime(l1 / p, ns=(10**18, 10**18))
    prep = [O("chmod", path=b"obj", mode=0o640), O("chmod", path=b"obj2", mode=0o600),
            O("chmod", path=b"missing", mode=0o600)]
    res = write_ops.apply_kernel([l1], upper, work, prep, options=MC_OPTIONS, data_layers=[d1])
    # Even a metadata copy-up needs the data found (ovl_verify_lowerdata).
    assert res["outcomes"] == ["ok", "ok", "ENOENT"], res
    for p in ("obj", "obj2"):
        assert XMETACOPY in _xattrs(upper / p), p
    layout = write_ops.Layout(orig, [l1], upper, work)
    ops = [O("os_open", path=b"obj", flags=RDWR, data=b"OB", offset=0),
           O("truncate", path=b"obj2", length=MiB + 10),
           O("os_open", path=b"missing", flags=WRONLY),
           O("truncate", path=b"missing", length=1),
           O("os_open", path=b"obj", flags=RDONLY)]
    outcomes, kd, b = compare_ops(tmp_path, layout, ops, data_layers=[b"d1"])
    assert outcomes[0].startswith("ok reg size=%d mode=640 sha=" % (2 * MiB))
    assert outcomes[2] == outcomes[3] == "ENOENT"
    assert XMETACOPY not in kd["obj"].get("xattrs", {})
    assert kd["obj"].get("xattrs", {}).get(XREDIRECT) == kd["obj2"].get("xattrs", {}).get(XREDIRECT)
    assert "missing" not in kd
    with open(b.upper + b"/obj", "rb") as f:
        data = f.read()
    assert data[:4] == b"OBad" and data[MiB + 7:MiB + 18] == b"object data"
    assert _data_map(b.upper + b"/obj2")[-1][0] < MiB + 10


@pytest.mark.parametrize("volatile", [False, True])
def test_volatile(tmp_path, layout, volatile):
    """The same upper as the kernel's with ``volatile``; the data is fsynced
    before the metacopy xattr goes, unless volatile."""
    if shutil.which("strace") is None:
        kernel.skip_or_fail("strace is not installed (.ci/run installs it)")
    ops = [O("os_open", path=b"f", flags=RDWR), O("truncate", path=b"ren2", length=3)]
    compare_ops(tmp_path, layout, ops, options=MC_OPTIONS + (("volatile",) if volatile else ()),
                stack_kwargs=dict(MC_KWARGS, volatile=volatile))
    # strace: fsync(upper fd) comes before fremovexattr(metacopy), or not at all.
    c = layout.clone(tmp_path / "C")
    code = ("import os, sys, overlayfs\n"
            "st = overlayfs.Stack([sys.argv[1]], sys.argv[2], sys.argv[3], metacopy=True, volatile=%r)\n"
            "print('MARK', flush=True)\n"
            "os.close(st.os_open('f', os.O_RDWR))\n" % volatile)
    out = tmp_path / "strace.out"
    res = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,fremovexattr,write",
                          "-o", str(out), sys.executable, "-c", code, c.lowers[0], c.upper, c.work],
                         capture_output=True)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    calls = out.read_text(errors="replace").split("MARK", 1)[1].splitlines()
    names = [line.split("(", 1)[0].split()[-1] for line in calls if "(" in line]
    names = [n for n in names if n in ("fsync", "fdatasync", "fremovexattr")]
    assert names == (["fremovexattr"] if volatile else ["fsync", "fremovexattr"]), calls


def test_rename_and_link_of_a_metacopy_file_keep_its_data(tmp_path, layout):
    """The kernel gives a renamed or linked upper metacopy file a redirect to
    its data; the Stack copies the data up instead (README).  The merged
    trees are the same, and every name reads the original data."""
    ops = [O("rename", src=b"keep", dst=b"moved"), O("link", src=b"keep2", dst=b"d/alias"),
           O("rename", src=b"d/g", dst=b"g2")]
    tmp = os.fsencode(tmp_path)
    a, b = layout.clone(tmp + b"/A"), layout.clone(tmp + b"/B")
    kres = write_ops.apply_kernel(a.lowers, a.upper, a.work, ops, options=MC_OPTIONS)
    sres = write_ops.apply_stack(overlayfs.Stack, b.lowers, b.upper, b.work, ops, stack_kwargs=MC_KWARGS)
    assert sres["error"] is None, sres["error"]
    assert kres["outcomes"] == sres["outcomes"] == ["ok"] * 3
    kview = write_ops.normalize_view(kernel.kernel_view(a.lowers, a.upper, a.work, options=MC_OPTIONS),
                                     kres["window"])
    with overlayfs.Stack(b.lowers, b.upper, b.work, **MC_KWARGS) as st:
        sview = write_ops.normalize_view(kernel.stack_view(st), sres["window"])
        for name, data in ((b"moved", b"keep me"), (b"keep2", b"keep2"), (b"d/alias", b"keep2"),
                           (b"g2", b"nested file")):
            with st.open(name, "rb") as f:
                assert f.read() == data, name
    assert not kernel.compare_views(kview, sview, ignore=("ino", "blocks")), \
        kernel.compare_views(kview, sview, ignore=("ino", "blocks"))
    # The Stack's copies are whole files: nothing left that needs a redirect.
    for p in (b"moved", b"keep2", b"d/alias", b"g2"):
        assert XMETACOPY not in _xattrs(os.path.join(b.upper, p)), p
