"""apply_layer on hostile and broken tars: every test puts the target in a
directory next to a sentinel tree and checks that nothing outside the target
changed (a failed layer-mode apply leaves nothing at all, not even its temp
dir), then the documented outcome (csrc/apply.c, csrc/tar.c)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import time
import zlib

import pytest
from applyutil import (
    END,
    dir_,
    entry,
    file,
    gnu_long,
    hardlink,
    header,
    pad,
    pax,
    snapshot,
    symlink,
    tar,
)

from overlayfs import errors
from overlayfs.apply import apply_layer

pytestmark = pytest.mark.usefixtures("require_root")  # skip_or_fail when not root


@pytest.fixture
def box(tmp_path):
    """base/{sentinel/secret, outside}; the target is base/target."""
    base = tmp_path / "base"
    (base / "sentinel").mkdir(parents=True)
    (base / "sentinel" / "secret").write_bytes(b"secret")
    os.chmod(base / "sentinel" / "secret", 0o644)
    (base / "outside").write_bytes(b"outside")

    class Box:
        root = base
        target = base / "target"
        sentinel = base / "sentinel"
        before = snapshot(base, exclude=["target"])

        def apply(self, data: bytes, **kw):
            if kw.get("mode") == "rootfs":
                self.target.mkdir(exist_ok=True)
            return apply_layer(io.BytesIO(data), self.target, **kw)

        def untouched(self):
            assert snapshot(base, exclude=["target"]) == self.before

        def nothing_left(self):
            assert not self.target.exists()
            self.untouched()

    return Box()


def _raises(box, exc, data, entry=None, **kw):
    with pytest.raises(exc) as ei:
        box.apply(data, **kw)
    if entry is not None:
        assert ei.value.entry == entry
    if kw.get("mode", "layer") == "layer":
        box.nothing_left()
    else:
        box.untouched()
    return ei.value


# --- names ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["layer", "rootfs"])
@pytest.mark.parametrize("name", [b"../x", b"a/../../x", b"/../x", b"./../sentinel/secret",
                                  b"a/b/../../../x"])
def test_escaping_names_refused(box, mode, name):
    data = tar(file(b"ok", b"1"), file(name, b"pwned"))
    _raises(box, errors.UnsafeArchiveError, data, name.decode(), mode=mode)


def test_empty_name_refused(box):
    _raises(box, errors.UnsafeArchiveError, tar(file(b"", b"x")), "")


def test_absolute_name_is_relative_to_root(box):
    abs_secret = os.fsencode(box.sentinel / "secret")
    box.apply(tar(file(abs_secret, b"pwned"), file(b"/etc/x", b"y")))
    box.untouched()
    assert (box.target / os.fsdecode(abs_secret.lstrip(b"/"))).read_bytes() == b"pwned"
    assert (box.target / "etc/x").read_bytes() == b"y"


def test_inner_dotdot_is_cleaned(box):
    box.apply(tar(file(b"a/b/../c", b"1")))
    assert (box.target / "a/c").read_bytes() == b"1"
    assert not (box.target / "a/b").exists()  # cleaned lexically first, as moby does


def test_pax_path_escape_refused(box):
    data = tar(file(b"innocent", b"x", records={b"path": b"../../sentinel/secret"}))
    _raises(box, errors.UnsafeArchiveError, data, "../../sentinel/secret")


def test_gnu_long_name_escape_refused(box):
    name = b"a/" * 80 + b"../" * 90 + b"x"
    data = tar(gnu_long(name) + header(b"short", size=1) + pad(b"x"))
    _raises(box, errors.UnsafeArchiveError, data, name.decode())


def test_long_names_applied(box):
    name = b"d" * 200 + b"/" + b"f" * 200
    link = b"L" * 150
    data = tar(gnu_long(name) + header(b"short", size=2) + pad(b"hi"),
               entry(b"x", type=b"2", records={b"path": link, b"linkpath": name}))
    box.apply(data)
    assert (box.target / name.decode()).read_bytes() == b"hi"
    assert os.readlink(box.target / link.decode()) == name.decode()


# --- symlinks in parents -------------------------------------------------------

@pytest.mark.parametrize("mode", ["layer", "rootfs"])
def test_absolute_symlink_parent_stays_inside(box, mode):
    target = os.fsencode(box.sentinel)
    box.apply(tar(symlink(b"l", target), file(b"l/secret", b"pwned"), file(b"l/new", b"n")),
              mode=mode)
    box.untouched()
    inside = box.target / os.fsdecode(target.lstrip(b"/"))
    assert (inside / "secret").read_bytes() == b"pwned"
    assert (inside / "new").read_bytes() == b"n"


@pytest.mark.parametrize("mode", ["layer", "rootfs"])
def test_relative_symlink_parent_stays_inside(box, mode):
    box.apply(tar(symlink(b"l", b"../../../../../../../sentinel"), file(b"l/secret", b"pwned")),
              mode=mode)
    box.untouched()
    assert (box.target / "sentinel/secret").read_bytes() == b"pwned"


def test_two_step_symlink_plant_rootfs(box):
    """CVE-2025-45582 shape: layer 1 plants x -> ../../sentinel, layer 2 writes x/secret."""
    box.apply(tar(symlink(b"x", b"../../sentinel")), mode="rootfs")
    box.apply(tar(file(b"x/secret", b"pwned"), dir_(b"x/d")), mode="rootfs")
    box.untouched()
    assert (box.target / "sentinel/secret").read_bytes() == b"pwned"
    assert os.readlink(box.target / "x") == "../../sentinel"


def test_symlink_replaced_by_file_not_followed(box):
    abs_secret = os.fsencode(box.sentinel / "secret")
    box.apply(tar(symlink(b"s", abs_secret), file(b"s", b"replaced", mode=0o4777)))
    box.untouched()
    assert (box.target / "s").read_bytes() == b"replaced"
    assert stat.S_IMODE(os.lstat(box.target / "s").st_mode) == 0o4777


# --- hardlinks -----------------------------------------------------------------

@pytest.mark.parametrize("target", [b"../sentinel/secret", b"../../sentinel/secret", b"a/../../x"])
def test_hardlink_escape_refused(box, target):
    data = tar(file(b"a", b"1"), hardlink(b"h", target))
    _raises(box, errors.UnsafeArchiveError, data, "h")


def test_hardlink_empty_target_refused(box):
    _raises(box, errors.UnsafeArchiveError, tar(hardlink(b"h", b"")), "h")


def test_hardlink_absolute_target_is_inside(box):
    abs_secret = os.fsencode(box.sentinel / "secret")
    with pytest.raises(FileNotFoundError) as ei:
        box.apply(tar(hardlink(b"h", abs_secret)))
    assert ei.value.filename == "h"
    box.nothing_left()
    box.apply(tar(file(b"etc/passwd", b"p"), hardlink(b"h", b"/etc/passwd")))
    assert os.path.samefile(box.target / "h", box.target / "etc/passwd")


def test_hardlink_through_symlinked_parent_stays_inside(box):
    data = tar(symlink(b"l", os.fsencode(box.root)), hardlink(b"h", b"l/sentinel/secret"))
    with pytest.raises(FileNotFoundError):
        box.apply(data)
    box.nothing_left()


def test_hardlink_to_symlink_then_chmod(box):
    """CVE-2021-32760: a hardlink to a symlink pointing outside, then metadata
    on the link name: nothing may follow the symlink."""
    abs_secret = os.fsencode(box.sentinel / "secret")
    data = tar(symlink(b"s", abs_secret),
               hardlink(b"h", b"s", mode=0o4777, uid=1234),
               hardlink(b"h2", b"s", mode=0o777),
               dir_(b"s2", mode=0o777))
    box.apply(data, mode="rootfs")
    box.untouched()
    st = os.lstat(box.sentinel / "secret")
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert os.path.islink(box.target / "h") and os.readlink(box.target / "h") == os.fsdecode(abs_secret)


# --- whiteouts -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["layer", "rootfs"])
@pytest.mark.parametrize("name", [b".wh.", b"d/.wh..", b"d/.wh...", b".wh..wh.foo"])
def test_invalid_whiteouts(box, mode, name):
    _raises(box, errors.InvalidWhiteoutError, tar(dir_(b"d"), file(name)), name.decode(), mode=mode)


def test_whiteout_prefix_dir_component_is_a_plain_name(box):
    box.apply(tar(file(b".wh.a/b", b"x")))
    assert (box.target / ".wh.a/b").read_bytes() == b"x"


def test_whiteout_through_symlink_layer(box):
    data = tar(symlink(b"l", os.fsencode(box.sentinel)), file(b"l/.wh.secret"))
    box.apply(data)
    box.untouched()
    wh = box.target / os.fsdecode(os.fsencode(box.sentinel).lstrip(b"/")) / "secret"
    st = os.lstat(wh)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_whiteout_through_symlink_rootfs(box):
    data = tar(symlink(b"l", os.fsencode(box.sentinel)), file(b"l/.wh.secret"),
               symlink(b"m", b"../sentinel"), file(b"m/.wh.secret"), dir_(b"d"), file(b"d/.wh..wh..opq"),
               symlink(b"o", os.fsencode(box.root)), file(b"o/.wh..wh..opq"))
    box.apply(data, mode="rootfs")
    box.untouched()


def test_char_00_device_refused(box):
    _raises(box, errors.InvalidWhiteoutError, tar(entry(b"c", type=b"3")), "c")


def test_root_opaque_without_lowers_refused(box):
    e = _raises(box, errors.InvalidWhiteoutError, tar(file(b"a"), file(b".wh..wh..opq")))
    assert "lowers" in str(e)


# --- xattrs ---------------------------------------------------------------------

def test_injected_overlay_xattrs_escaped(box):
    recs = {b"SCHILY.xattr.trusted.overlay.opaque": b"y",
            b"SCHILY.xattr.trusted.overlay.redirect": b"/etc",
            b"SCHILY.xattr.user.overlay.whiteout": b"",
            b"SCHILY.xattr.trusted.overlay.overlay.x": b"1",
            b"SCHILY.xattr.user.bin": b"\x00\xff\n=\x00",
            b"SCHILY.xattr.security.capability": bytes.fromhex("0100000200200000000000000000000000000000")}
    box.apply(tar(dir_(b"d", records=recs), file(b"f", records={b"SCHILY.xattr.user.overlay.opaque": b"y"})))
    got = {n: os.getxattr(box.target / "d", n) for n in os.listxattr(box.target / "d")}
    assert got == {"trusted.overlay.overlay.opaque": b"y",
                   "trusted.overlay.overlay.redirect": b"/etc",
                   "user.overlay.overlay.whiteout": b"",
                   "trusted.overlay.overlay.overlay.x": b"1",
                   "user.bin": b"\x00\xff\n=\x00",
                   "security.capability": recs[b"SCHILY.xattr.security.capability"]}
    assert os.listxattr(box.target / "f") == ["user.overlay.overlay.opaque"]


# --- duplicates and type changes --------------------------------------------------

@pytest.mark.parametrize("mode", ["layer", "rootfs"])
def test_duplicates_last_wins(box, mode):
    data = tar(file(b"f", b"1"), file(b"f", b"2", mode=0o600),
               dir_(b"d", mode=0o700), file(b"d/keep", b"k"), dir_(b"d", mode=0o751, uid=7),
               dir_(b"x"), file(b"x/child"), file(b"x", b"now a file"),
               file(b"y", b"file"), dir_(b"y", mode=0o711),
               symlink(b"z", b"f"), file(b"z", b"zz"),
               file(b"w", b"w"), symlink(b"w", b"f"))
    box.apply(data, mode=mode)
    t = box.target
    assert (t / "f").read_bytes() == b"2" and stat.S_IMODE(os.stat(t / "f").st_mode) == 0o600
    st = os.stat(t / "d")
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_uid == 7 and (t / "d/keep").exists()
    assert (t / "x").read_bytes() == b"now a file"
    assert (t / "y").is_dir() and stat.S_IMODE(os.stat(t / "y").st_mode) == 0o711
    assert not (t / "z").is_symlink() and (t / "z").read_bytes() == b"zz"
    assert os.readlink(t / "w") == "f"
    box.untouched()


def test_non_utf8_names(box):
    name = b"caf\xe9/\xff\xfe"
    box.apply(tar(file(name, b"x"), symlink(b"\x80l", name)))
    root = os.fsencode(box.target)
    assert open(root + b"/" + name, "rb").read() == b"x"
    assert os.readlink(root + b"/\x80l") == name


def test_huge_ids(box):
    box.apply(tar(file(b"a", uid=4_000_000_000, gid=3_000_000_000),
                  file(b"b", records={b"uid": b"4294967294", b"gid": b"65534"})))
    st = os.lstat(box.target / "a")
    assert (st.st_uid, st.st_gid) == (4_000_000_000, 3_000_000_000)
    assert os.lstat(box.target / "b").st_uid == 4294967294
    shutil_rm(box.target)
    for bad in (2**32 - 1, 2**40):
        _raises(box, errors.CorruptArchiveError, tar(file(b"c", uid=bad)), "c")
    _raises(box, errors.CorruptArchiveError, tar(file(b"c", records={b"uid": b"99999999999"})), "c")


def shutil_rm(p):
    import shutil
    shutil.rmtree(p)


# --- sizes ------------------------------------------------------------------------

def test_sparse_1gib_stays_sparse(box, tmp_path):
    src = tmp_path / "sp"
    with open(src, "wb") as f:
        f.truncate(1 << 30)
        f.seek(123 << 20)
        f.write(b"data")
        f.seek((1 << 30) - 1)
        f.write(b"!")
    for fmt in ("gnu", "posix"):
        t = tmp_path / f"sparse-{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-S", "-cf", t, "-C", tmp_path, "sp"], check=True)
        assert t.stat().st_size < 1 << 20
        t0 = time.monotonic()
        r = apply_layer(t, box.target)
        assert time.monotonic() - t0 < 10
        st = os.stat(box.target / "sp")
        assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20
        with open(box.target / "sp", "rb") as f:
            f.seek(123 << 20)
            assert f.read(4) == b"data"
            f.seek((1 << 30) - 1)
            assert f.read() == b"!"
        assert r.files == 1
        shutil_rm(box.target)
    box.untouched()


def test_gzip_bomb_vs_max_size(box):
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    big = 256 << 20
    parts = [comp.compress(header(b"bomb", size=big))]
    zero = b"\0" * (1 << 20)
    for _ in range(big >> 20):
        parts.append(comp.compress(zero))
    parts.append(comp.compress(END))
    parts.append(comp.flush())
    blob = b"".join(parts)
    assert len(blob) < 1 << 20
    e = _raises(box, errors.ArchiveTooLargeError, blob, max_size=16 << 20)
    assert e.entry == "bomb"


# --- broken archives ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["layer", "rootfs"])
def test_corrupt_header_mid_archive(box, mode):
    data = tar(file(b"a", b"1"), dir_(b"b"), header(b"c", checksum_delta=1), file(b"d", b"2"))
    _raises(box, errors.CorruptArchiveError, data, mode=mode) if mode == "layer" else None
    if mode == "rootfs":
        with pytest.raises(errors.CorruptArchiveError):
            box.apply(data, mode=mode)
        box.untouched()


def test_truncated(box):
    full = tar(file(b"a", b"x" * 3000), file(b"b", b"y"))
    for cut in (100, 512, 700, 512 + 3000, len(full) - 1024 - 512 + 10):
        _raises(box, errors.TruncatedArchiveError, full[:cut])


def test_clean_end_without_zero_blocks(box):
    r = box.apply(file(b"a", b"x"))
    assert (box.target / "a").read_bytes() == b"x" and r.entries == 1


def test_trailing_zeros_fine_garbage_refused(box):
    import hashlib
    data = tar(file(b"a", b"x")) + b"\0" * 10240
    r = box.apply(data)
    assert r.diff_id == "sha256:" + hashlib.sha256(data).hexdigest() and r.size == len(data)
    shutil_rm(box.target)
    _raises(box, errors.CorruptArchiveError, tar(file(b"a", b"x")) + b"\0" * 600 + b"garbage")
    # one zero block, then a header: corrupt (Go's rule)
    _raises(box, errors.CorruptArchiveError, file(b"a", b"x") + b"\0" * 512 + file(b"b", b"y") + END)


def test_pax_global_header_ignored(box):
    data = tar(pax({b"path": b"../../evil", b"uid": b"666"}, glob=True), file(b"a", b"x"),
               pax({b"path": b"evil2"}, glob=True), dir_(b"d"))
    box.apply(data)
    assert sorted(os.listdir(box.target)) == ["a", "d"]
    assert os.lstat(box.target / "a").st_uid == 0
    box.untouched()


def test_gzip_layer_and_digests(box):
    import hashlib
    data = tar(file(b"a", b"x" * 10000), dir_(b"d"))
    blob = gzip.compress(data[:5000]) + gzip.compress(data[5000:])  # two members
    r = box.apply(blob)
    assert r.compression == "gzip"
    assert r.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert r.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert (box.target / "a").read_bytes() == b"x" * 10000


def test_corrupt_gzip(box):
    blob = gzip.compress(tar(file(b"a", b"x" * 10000)))
    _raises(box, errors.CorruptArchiveError, blob[:-30])


def test_diff_id_mismatch_leaves_nothing(box):
    data = tar(file(b"a", b"x"))
    with pytest.raises(errors.DiffIDMismatchError):
        box.apply(data, expect_diff_id="sha256:" + "0" * 64)
    box.nothing_left()


def test_dest_exists_refused(box):
    box.target.mkdir()
    with pytest.raises(FileExistsError):
        apply_layer(io.BytesIO(tar(file(b"a"))), box.target)
    assert os.listdir(box.target) == []
    box.untouched()


def test_devices_flag(box):
    data = tar(entry(b"null", type=b"3", devmajor=1, devminor=3, mode=0o666),
               entry(b"blk", type=b"4", devmajor=7, devminor=0), entry(b"p", type=b"6", mode=0o600))
    r = box.apply(data, devices=False)
    assert sorted(os.listdir(box.target)) == ["p"] and r.skipped == 2
    shutil_rm(box.target)
    r = box.apply(data)
    st = os.lstat(box.target / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and stat.S_IMODE(st.st_mode) == 0o666
    box.untouched()
