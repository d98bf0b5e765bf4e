"""Tests for overlayfs._mount (with _mountopts, _mountinfo, _namespace and _check) and
overlayfs._syscalls: real kernel overlays from Python.

Every mount happens inside ``run_in_private_namespace`` (a forked child with its own
mount namespace and private propagation) under pytest's temporary directories, so nothing
is ever left mounted. Tests that mount skip with the reason when this machine cannot mount
overlays, and fail instead when ``OVERLAYFS_REQUIRE_KERNEL=1``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

sc = importlib.import_module("overlayfs._syscalls")
om = importlib.import_module("overlayfs._mount")
mopts = importlib.import_module("overlayfs._mountopts")
minfo = importlib.import_module("overlayfs._mountinfo")
ns = importlib.import_module("overlayfs._namespace")
chk = importlib.import_module("overlayfs._check")
cli = importlib.import_module("overlayfs.cli")
from overlayfs import Stack  # noqa: E402

REQUIRE_KERNEL = os.environ.get("OVERLAYFS_REQUIRE_KERNEL") == "1"
PAGE_LIMIT = os.sysconf("SC_PAGE_SIZE") - 1
SPECIAL = "sp ace:co,lon\\back"


def in_ns(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return ns.run_in_private_namespace(fn, *args, **kwargs)


# --- views --------------------------------------------------------------------------------

Record = tuple[str, int, int | None, str | None]


def _record(st_mode: int, size: int, content: Callable[[], bytes] | None,
            link: Callable[[], str] | None) -> Record:
    kind = {stat.S_IFDIR: "dir", stat.S_IFREG: "reg", stat.S_IFLNK: "lnk",
            stat.S_IFCHR: "chr", stat.S_IFIFO: "fifo"}.get(stat.S_IFMT(st_mode), "other")
    detail = None
    if kind == "reg" and content is not None:
        detail = hashlib.sha256(content()).hexdigest()
    elif kind == "lnk" and link is not None:
        detail = link()
    return (kind, stat.S_IMODE(st_mode), size if kind in ("reg", "lnk") else None, detail)


def mount_view(root: str) -> dict[str, Record]:
    """Every path under a mounted overlay: type, permission bits, size, sha256/link."""
    view: dict[str, Record] = {}

    def walk(rel: str) -> None:
        for name in sorted(os.listdir(os.path.join(root, rel))):
            path = f"{rel}/{name}" if rel else name
            full = os.path.join(root, path)
            st = os.lstat(full)

            def content(full: str = full) -> bytes:
                with open(full, "rb") as fh:
                    return fh.read()

            view[path] = _record(st.st_mode, st.st_size, content,
                                 lambda full=full: os.readlink(full))
            if stat.S_ISDIR(st.st_mode):
                walk(path)

    walk("")
    return view


def stack_view(stack: Any) -> dict[str, Record]:
    """The same record for every path of an overlayfs.Stack."""
    view: dict[str, Record] = {}

    def walk(rel: str) -> None:
        for name in sorted(os.fsdecode(n) for n in stack.listdir(rel)):
            path = f"{rel}/{name}" if rel else name
            st = stack.lstat(path)

            def content(path: str = path) -> bytes:
                with stack.open(path) as fh:
                    return fh.read()

            view[path] = _record(st.st_mode, st.st_size, content,
                                 lambda path=path: os.fsdecode(stack.readlink(path)))
            if stat.S_ISDIR(st.st_mode):
                walk(path)

    walk("")
    return view


def assert_same_view(kernel_view: dict[str, Record], lowers: list[str], upper: str | None,
                     work: str | None, namespace: str = "trusted") -> None:
    with Stack(lowers, upper, work, xattr_namespace=namespace) as stack:
        ours = stack_view(stack)
    missing = sorted(set(kernel_view) - set(ours))
    extra = sorted(set(ours) - set(kernel_view))
    differ = sorted(p for p in set(ours) & set(kernel_view) if ours[p] != kernel_view[p])
    assert not (missing or extra or differ), (
        f"Stack view differs from the mount: only in the mount {missing[:10]}, only in the "
        f"Stack {extra[:10]}, different {[(p, kernel_view[p], ours[p]) for p in differ[:5]]}")


# --- layer builders -----------------------------------------------------------------------


def write(path: str, data: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(data)


def build_layers(base: str, prefix: str = "", namespace: str = "trusted"
                 ) -> tuple[list[str], str, str, str]:
    """Three lowers (top first) with a whiteout, an opaque dir, a symlink, shadowing; an
    empty upper, a work dir and a mount point. Returns (lowers, upper, work, target)."""
    lowers = [os.path.join(base, f"{prefix}l{i}") for i in (1, 2, 3)]
    upper, work, target = (os.path.join(base, f"{prefix}{n}") for n in ("up", "wk", "mnt"))
    for d in [*lowers, upper, work, target]:
        os.makedirs(d)
    l1, l2, l3 = lowers
    write(f"{l1}/a", "top")
    write(f"{l1}/d/x", "x")
    os.mknod(f"{l1}/gone", stat.S_IFCHR | 0o644, os.makedev(0, 0))
    write(f"{l1}/opq/new", "new")
    os.setxattr(f"{l1}/opq", f"{namespace}.overlay.opaque", b"y")
    write(f"{l2}/a", "middle")
    write(f"{l2}/gone", "hidden")
    write(f"{l2}/opq/old", "hidden")
    write(f"{l2}/d/y", "yy")
    os.symlink("a", f"{l2}/ln")
    write(f"{l3}/b", "bottom")
    write(f"{l3}/d/z", "zzz")
    os.chmod(f"{l3}/b", 0o640)
    return lowers, upper, work, target


EXPECTED_ROOT = ["a", "b", "d", "ln", "opq"]


def check_and_collect(target: str, lowers: list[str], upper: str | None, work: str | None,
                      strategy: mopts.Strategy = "auto", **kwargs: Any) -> dict[str, Any]:
    """(In a namespace child.) Mount, check the union directly, collect the view and the
    mountinfo entry, write through, unmount."""
    cwd = os.getcwd()
    m = om.mount(target, lowers, upper, work, strategy=strategy, **kwargs)
    assert os.getcwd() == cwd, "mounting must never move the interpreter's cwd"
    with m:
        assert m.mounted
        info = [i for i in minfo.mounts() if i.target == target]
        view = mount_view(target)
        names = sorted(os.listdir(target))
        with open(os.path.join(target, "a")) as fh:
            top = fh.read()
        opq = sorted(os.listdir(os.path.join(target, "opq")))
        d = sorted(os.listdir(os.path.join(target, "d")))
        written = None
        if upper is not None:  # a write lands in the upper; removing it leaves no trace
            write(os.path.join(target, "d", "written"), "through")
            with open(os.path.join(upper, "d", "written")) as fh:
                written = fh.read()
            os.unlink(os.path.join(target, "d", "written"))
    return {"strategy": m.strategy, "info": info, "view": view, "names": names, "top": top,
            "opq": opq, "d": d, "written": written, "mounted_after": m.mounted,
            "still_in_mountinfo": any(i.target == target for i in minfo.mounts()),
            "mount_options": m.options}


# =========================================================================================
# _syscalls: numbers and structures
# =========================================================================================


def test_new_mount_api_numbers_are_the_same_on_every_common_architecture() -> None:
    expected = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                "fsmount": 432}
    for machine in ("x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x", "i686"):
        assert sc.new_mount_api_numbers(machine) == expected, machine
    assert sc.new_mount_api_numbers("alpha")["fsopen"] == 540
    assert sc.new_mount_api_numbers("ia64")["fsmount"] == 1456
    assert sc.new_mount_api_numbers("mips64") is None


def test_struct_layouts_match_the_kernel_uapi() -> None:
    assert ctypes.sizeof(sc.StatxTimestamp) == 16
    assert ctypes.sizeof(sc.Statx) == 0x100
    offsets = {"stx_mask": 0, "stx_attributes": 0x8, "stx_nlink": 0x10, "stx_mode": 0x1c,
               "stx_ino": 0x20, "stx_atime": 0x40, "stx_mtime": 0x70, "stx_rdev_major": 0x80,
               "stx_dev_major": 0x88, "stx_mnt_id": 0x90, "stx_dio_mem_align": 0x98}
    for name, offset in offsets.items():
        assert getattr(sc.Statx, name).offset == offset, name
    assert sc.Dirent64.d_reclen.offset == 16
    assert sc.Dirent64.d_type.offset == 18
    assert sc.Dirent64.d_name.offset == 19
    assert ctypes.sizeof(sc.Dirent64) >= 19 + 256
    if ctypes.sizeof(ctypes.c_void_p) == 8:  # x86_64, aarch64, ...
        assert ctypes.sizeof(sc.Dirent64) == 280


def test_statx_mount_id_matches_mountinfo(tmp_path: Any) -> None:
    st = sc.statx(str(tmp_path), sc.STATX_MNT_ID)
    assert st.stx_ino == os.stat(tmp_path).st_ino
    assert st.stx_mode == os.stat(tmp_path).st_mode
    ids = []
    with open("/proc/self/mountinfo") as fh:
        ids = [int(line.split()[0]) for line in fh]
    assert sc.mount_id(str(tmp_path)) in ids


def test_read_dir_types_reports_d_type(tmp_path: Any) -> None:
    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    os.symlink("f", tmp_path / "s")
    types = dict(sc.read_dir_types(str(tmp_path)))
    assert types == {b"f": sc.DT_REG, b"d": sc.DT_DIR, b"s": 10}  # DT_LNK
    with pytest.raises(FileNotFoundError):
        sc.read_dir_types(str(tmp_path / "missing"))


def test_syscall_wrappers_raise_oserror_with_the_call_and_path(tmp_path: Any) -> None:
    with pytest.raises(OSError) as info:
        sc.umount2(str(tmp_path))
    assert info.value.errno in (errno.EINVAL, errno.EPERM)
    assert info.value.filename == str(tmp_path)
    assert str(info.value).startswith(f"[Errno {info.value.errno}] umount2:")
    with pytest.raises(FileNotFoundError):
        sc.statx(str(tmp_path / "missing"), sc.STATX_MNT_ID)


def _mount_through_raw_syscalls(target: str, lowers: list[str], upper: str,
                                work: str) -> tuple[str, list[str]]:
    for name in ("_fsopen", "_fsconfig", "_fsmount", "_move_mount"):
        setattr(sc, name, None)  # as with a C library older than glibc 2.36
    with om.mount(target, lowers, upper, work, strategy="new-api") as m:
        return m.strategy, sorted(os.listdir(target))


def test_raw_syscall_numbers_work_where_libc_has_no_wrapper(mountable: None,
                                                           tmp_path: Any) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))
    strategy, names = in_ns(_mount_through_raw_syscalls, target, lowers, upper, work)
    assert strategy == "new-api-fd" and names == EXPECTED_ROOT


# =========================================================================================
# Arguments: ValueError before any system call
# =========================================================================================


@pytest.fixture
def no_syscalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any mount-related system call (and the on-disk validation) fail the test."""
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a system call was made before the arguments were checked")

    for name in ("fsopen", "fsconfig", "fsmount", "move_mount", "mount", "umount2", "statx"):
        monkeypatch.setattr(sc, name, forbidden)
    monkeypatch.setattr(om, "_validate", forbidden)


def test_501_lowers_is_a_value_error_before_any_syscall(no_syscalls: None) -> None:
    lowers = [f"/nonexistent/{i}" for i in range(501)]
    with pytest.raises(ValueError, match=r"501 lower layers.*at most 500"):
        om.mount("/nonexistent/t", lowers, "/nonexistent/u", "/nonexistent/w")
    with pytest.raises(ValueError, match=r"at most 500"):
        om.mount("/nonexistent/t", lowers[:499], options={"data_layers": lowers[:2]})


def test_500_lowers_pass_the_argument_check(tmp_path: Any) -> None:
    lowers = [str(tmp_path / f"missing{i}") for i in range(500)]
    with pytest.raises(FileNotFoundError) as info:
        om.mount(str(tmp_path), lowers)
    assert info.value.step == "validate"
    assert "lowerdir #1" in str(info.value)
    assert info.value.filename == lowers[0]


def test_read_only_overlay_needs_two_lowers(no_syscalls: None) -> None:
    with pytest.raises(ValueError, match="read-only overlay .* at least 2 lower layers, got 1"):
        om.mount("/t", ["/only"])
    spec = mopts._build_spec("/t", ["/l"], None, None, False, {"data_layers": ["/d"]})
    assert spec.lowers == ("/l",) and spec.data_layers == ("/d",)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lowers": "/a"}, "sequence of paths, not a single path"),
    ({"lowers": []}, "at least one lower"),
    ({"lowers": ["/a", ""]}, "empty path"),
    ({"upper": "/u"}, "upper and work must be given together"),
    ({"options": {"bogus": 1}}, "unknown overlay option"),
    ({"options": {"xino": "sometimes"}}, "'xino' takes one of off, auto, on"),
    ({"options": {"volatile": "yes"}}, "'volatile' is a flag"),
    ({"options": {"userxattr": True, "metacopy": True}}, "userxattr forces metacopy=off"),
    ({"options": {"metacopy": "on", "redirect_dir": "off"}}, "metacopy=on needs redirect_dir"),
    ({"options": {"nfs_export": "on", "index": "off"}}, "nfs_export=on needs index=on"),
    ({"strategy": "fastest"}, "strategy must be one of"),
    ({"readonly": "yes"}, "readonly must be a bool"),
])
def test_bad_arguments_are_value_errors(no_syscalls: None, kwargs: dict[str, Any],
                                        message: str) -> None:
    args: dict[str, Any] = {"lowers": ["/a", "/b"]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        om.mount("/t", **args)


def test_options_are_normalised_and_userxattr_is_automatic_in_a_user_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mopts, "_in_user_namespace", lambda: False)
    spec = mopts._build_spec("/t", ["/a", "/b"], "/u", "/w", False, {
        "index": False, "xino": "AUTO", "volatile": True, "metacopy": None})
    assert spec.options == (("index", "off"), ("xino", "auto"), ("volatile", None))
    assert not spec.userxattr
    monkeypatch.setattr(mopts, "_in_user_namespace", lambda: True)
    assert mopts._build_spec("/t", ["/a", "/b"], None, None, False, None).userxattr
    assert not mopts._build_spec("/t", ["/a", "/b"], None, None, False,
                                 {"userxattr": False}).userxattr


def test_paths_become_absolute_and_bytes_are_accepted(tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = mopts._build_spec(b"t", [b"a", tmp_path / "b"], None, None, False, None)
    assert spec.target == str(tmp_path / "t")
    assert spec.lowers == (str(tmp_path / "a"), str(tmp_path / "b"))


# =========================================================================================
# The legacy option string
# =========================================================================================


def test_escape_legacy_and_split_round_trip() -> None:
    names = ["/plain", "/with space", "/co:lon", "/com,ma", "/back\\slash", "/a\\:b,\\,c",
             "rel/ative"]
    data = ["/data:1", "/data,2"]
    text = om.legacy_options(names, "/up:per", "/wo,rk", data, [("xino", "off"),
                                                                 ("volatile", None)])
    assert text.startswith("lowerdir=/plain:/with space:/co\\:lon:/com\\,ma:/back\\\\slash:")
    assert text.endswith("::/data\\:1::/data\\,2,upperdir=/up\\:per,workdir=/wo\\,rk,"
                         "xino=off,volatile")
    lowerdir = text.split(",upperdir=")[0][len("lowerdir="):]
    assert minfo.split_legacy_lowerdir(lowerdir) == (names, data)
    assert minfo.split_legacy_lowerdir("/a") == (["/a"], [])


MOUNTINFO = (
    b"22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"69 22 0:39 / /tmp/m\\040x rw,relatime - overlay overlay rw,lowerdir+=/l/a\\040b,"
    b"lowerdir+=/l/c:d,lowerdir+=/l/e\\054f,lowerdir+=/l/g\\134h,datadir+=/l/data,"
    b"upperdir=/u\\054p,workdir=/w,uuid=on,userxattr\n"
    b"76 22 0:41 / /tmp/leg ro,relatime shared:5 master:2 - overlay none rw,"
    b"lowerdir=/x/c\\134:d:/x/e\\134\\054f:/x/g\\134\\134h::/x/d1::/x/d\\134:2,"
    b"upperdir=/x/u\\134\\134p\\134\\054,workdir=/x/w,redirect_dir=nofollow\n"
    b"80 22 0:50 / /tmp/fuse rw - fuse.fuse-overlayfs fuse-overlayfs rw,lowerdir=/q\n"
)


def test_mounts_decodes_mountinfo(tmp_path: Any) -> None:
    path = tmp_path / "mountinfo"
    path.write_bytes(MOUNTINFO)
    new, legacy = minfo.mounts(path)
    assert (new.mount_id, new.parent_id, new.target, new.source) == (69, 22, "/tmp/m x",
                                                                     "overlay")
    assert new.lowers == ("/l/a b", "/l/c:d", "/l/e,f", "/l/g\\h")
    assert new.data_layers == ("/l/data",)
    assert (new.upper, new.work) == ("/u,p", "/w")
    assert new.options == {"uuid": "on", "userxattr": True}
    assert not new.readonly
    assert legacy.lowers == ("/x/c:d", "/x/e,f", "/x/g\\h")
    assert legacy.data_layers == ("/x/d1", "/x/d:2")
    assert (legacy.upper, legacy.work) == ("/x/u\\p,", "/x/w") and legacy.readonly
    assert legacy.options == {"redirect_dir": "nofollow"}
    assert legacy.mount_options == "ro,relatime"


def _first_option_value(text: str) -> str:
    """The value of the first option of a legacy data string (up to an unescaped comma)."""
    assert text.startswith("lowerdir=")
    i = len("lowerdir=")
    start = i
    while i < len(text) and text[i] != ",":
        i += 2 if text[i] == "\\" else 1
    return text[start:i]


def _capture_legacy(spec: mopts._Spec, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run _mount_legacy with mount(2) replaced by a recorder that also checks that every
    layer name in the data resolves from the cwd the call runs in."""
    seen: dict[str, Any] = {}

    def fake_mount(source: str, target: str, fstype: str, flags: int, data: bytes) -> None:
        lowers, _ = minfo.split_legacy_lowerdir(_first_option_value(os.fsdecode(data)))
        seen.update(data=data, cwd=os.getcwd(), lowers=lowers,
                    resolved=[os.path.realpath(p) for p in lowers])

    monkeypatch.setattr(sc, "mount", fake_mount)
    seen["strategy"] = om._mount_legacy(spec)
    return seen


def test_legacy_string_is_shortened_and_never_passes_a_page(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = os.getcwd()
    long_name = "n" * 200
    # ~20 x 215 bytes: too long absolute, fits relative to the common directory.
    base = tmp_path / ("b" * 150)
    few = [str(base / f"{i:03d}{long_name[:170]}") for i in range(20)]
    for p in few:
        os.makedirs(p)
    spec = mopts._build_spec(str(tmp_path), few, None, None, False, None)
    assert len(om.legacy_options(few).encode()) > PAGE_LIMIT
    seen = _capture_legacy(spec, monkeypatch)
    assert seen["strategy"] == "legacy-relative"
    assert seen["cwd"] == str(base)
    assert len(seen["data"]) <= PAGE_LIMIT
    assert seen["resolved"] == few
    # 500 layers with 200+ character names: only short links fit.
    many = [str(tmp_path / f"{i:03d} {SPECIAL} {long_name}") for i in range(500)]
    for p in many:
        os.mkdir(p)
    spec = mopts._build_spec(str(tmp_path), many, None, None, False, {"xino": "off"})
    seen = _capture_legacy(spec, monkeypatch)
    assert seen["strategy"] == "legacy-links"
    assert len(seen["data"]) <= PAGE_LIMIT
    assert seen["resolved"] == many
    assert not os.path.exists(seen["cwd"]), "the link directory must be removed afterwards"
    assert os.getcwd() == cwd, "the interpreter's cwd must never change"


def test_call_in_dir_leaves_the_interpreter_cwd_alone(tmp_path: Any) -> None:
    cwd = os.getcwd()
    assert om._call_in_dir(str(tmp_path), os.getcwd) == str(tmp_path)
    assert os.getcwd() == cwd
    with pytest.raises(ZeroDivisionError):
        om._call_in_dir(str(tmp_path), lambda: 1 // 0)


# =========================================================================================
# Private namespaces
# =========================================================================================


def _mount_tmpfs_and_report(path: str) -> bool:
    sc.mount("tmpfs", path, "tmpfs", 0, b"size=1m")
    return any(line.split()[4] == path for line in open("/proc/self/mountinfo"))


def _raise_oserror() -> None:
    raise OSError(errno.ENOENT, "from the child", "/some/file")


def test_run_in_private_namespace_isolates_mounts_and_returns_results(
        mountable: None, tmp_path: Any) -> None:
    assert in_ns(_mount_tmpfs_and_report, str(tmp_path)) is True
    with open("/proc/self/mountinfo") as fh:
        assert not any(line.split()[4] == str(tmp_path) for line in fh)
    assert in_ns(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
    with pytest.raises(FileNotFoundError) as info:
        in_ns(_raise_oserror)
    assert info.value.filename == "/some/file"
    assert any("private mount namespace child" in note for note in info.value.__notes__)


def _whoami() -> tuple[str, bool]:
    with open("/proc/self/uid_map") as fh:
        return fh.read().split()[0], ns._in_user_namespace()


def test_run_in_user_namespace_maps_us_to_root(mountable: None) -> None:
    assert ns.run_in_user_namespace(_whoami) == ("0", True)


# =========================================================================================
# Kernel mounts
# =========================================================================================

STRATEGIES = ["new-api", "new-api-path", "legacy"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mount_shows_the_union_and_writes_to_the_upper(mountable: None, tmp_path: Any,
                                                      strategy: mopts.Strategy) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))
    got = in_ns(check_and_collect, target, lowers, upper, work, strategy)
    assert got["strategy"] == {"new-api": "new-api-fd", "new-api-path": "new-api-path",
                               "legacy": "legacy"}[strategy]
    assert got["names"] == EXPECTED_ROOT
    assert got["top"] == "top"
    assert got["opq"] == ["new"]
    assert got["d"] == ["x", "y", "z"]
    assert got["view"]["ln"][0] == "lnk" and got["view"]["ln"][3] == "a"
    assert got["view"]["b"][:3] == ("reg", 0o640, 6)
    (info,) = got["info"]
    assert info.lowers == tuple(lowers)
    assert (info.upper, info.work) == (upper, work)
    assert info.source == "overlay"
    assert not got["mounted_after"] and not got["still_in_mountinfo"]
    assert got["written"] == "through"
    assert not os.path.exists(os.path.join(upper, "d", "written"))
    assert os.listdir(target) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mounted_view_matches_stack(mountable: None, tmp_path: Any,
                                    strategy: mopts.Strategy) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))
    got = in_ns(check_and_collect, target, lowers, upper, work, strategy)
    assert_same_view(got["view"], lowers, upper, work)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paths_with_special_characters_and_200_plus_characters(
        mountable: None, tmp_path: Any, strategy: mopts.Strategy) -> None:
    base = tmp_path / f"{SPECIAL} {'p' * 210}"
    base.mkdir()
    lowers, upper, work, target = build_layers(str(base), prefix=f"{SPECIAL} ")
    assert all(len(p) > 200 for p in lowers)
    got = in_ns(check_and_collect, target, lowers, upper, work, strategy)
    assert got["names"] == EXPECTED_ROOT and got["opq"] == ["new"]
    (info,) = got["info"]
    assert info.target == target
    if strategy == "new-api-path":  # strings over 255 bytes go relative to an ancestor
        shown = [*info.lowers, info.upper, info.work]
        for real, name in zip([*lowers, upper, work], shown):
            assert not name.startswith("/") and real.endswith("/" + name), (real, name)
            assert len(os.fsencode(name)) <= om.FSCONFIG_VALUE_MAX
    else:
        assert info.lowers == tuple(lowers), "mountinfo must decode back to the same paths"
        assert (info.upper, info.work) == (upper, work)
    assert_same_view(got["view"], lowers, upper, work)


def _many_layers(base: str, count: int, name_length: int = 200) -> list[str]:
    lowers = []
    for i in range(count):
        layer = os.path.join(base, f"{i:03d} {SPECIAL} {'q' * name_length}")
        os.mkdir(layer)
        write(os.path.join(layer, f"f{i:03d}"), str(i))
        write(os.path.join(layer, "shared"), str(i))
        lowers.append(layer)
    return lowers


def _mount_many(target: str, lowers: list[str], upper: str, work: str,
                strategy: mopts.Strategy) -> dict[str, Any]:
    with om.mount(target, lowers, upper, work, strategy=strategy) as m:
        names = sorted(os.listdir(target))
        with open(os.path.join(target, "shared")) as fh:
            shared = fh.read()
        with open(os.path.join(target, "f499")) as fh:
            bottom = fh.read()
        (info,) = [i for i in minfo.mounts() if i.target == target]
        view = mount_view(target)
    return {"strategy": m.strategy, "names": names, "shared": shared, "bottom": bottom,
            "layers": len(info.lowers), "view": view, "mounted": m.mounted}


@pytest.mark.parametrize("strategy", ["new-api", "legacy"])
def test_500_layers_with_long_paths(mountable: None, tmp_path: Any,
                                    strategy: mopts.Strategy) -> None:
    lowers = _many_layers(str(tmp_path), 500)
    upper, work, target = (str(tmp_path / n) for n in ("up", "wk", "mnt"))
    for d in (upper, work, target):
        os.mkdir(d)
    assert sum(len(p) + 1 for p in lowers) > 30 * PAGE_LIMIT
    got = in_ns(_mount_many, target, lowers, upper, work, strategy)
    assert got["strategy"] == {"new-api": "new-api-fd", "legacy": "legacy-links"}[strategy]
    assert got["names"] == sorted([*(f"f{i:03d}" for i in range(500)), "shared"])
    assert got["shared"] == "0" and got["bottom"] == "499"
    assert got["layers"] == 500 and not got["mounted"]
    assert_same_view(got["view"], lowers, upper, work)


@pytest.mark.parametrize("strategy", ["new-api", "legacy"])
def test_data_only_layers(mountable: None, tmp_path: Any, strategy: mopts.Strategy) -> None:
    top, data, target = (str(tmp_path / n) for n in ("top:1", "data,1", "mnt"))
    for d in (top, data, target):
        os.mkdir(d)
    write(f"{top}/visible", "v")
    write(f"{data}/objects/abc", "payload")

    def body() -> tuple[list[str], tuple[str, ...], tuple[str, ...], bool]:
        with om.mount(target, [top], options={"data_layers": [data]}, strategy=strategy):
            (info,) = [i for i in minfo.mounts() if i.target == target]
            return sorted(os.listdir(target)), info.lowers, info.data_layers, info.readonly

    names, shown_lowers, shown_data, readonly = in_ns(body)
    assert names == ["visible"], "data-only layers are never searched by name"
    assert (shown_lowers, shown_data, readonly) == ((top,), (data,), True)


def _readonly_checks(target: str, lowers: list[str], upper: str, work: str) -> list[Any]:
    results: list[Any] = []
    for kwargs in ({}, {"upper": upper, "work": work, "readonly": True}):
        with om.mount(target, lowers, **kwargs):
            try:
                write(os.path.join(target, "new"), "x")
                results.append("written")
            except OSError as exc:
                results.append(exc.errno)
            (info,) = [i for i in minfo.mounts() if i.target == target]
            results.append(info.readonly)
    return results


def test_read_only_mounts(mountable: None, tmp_path: Any) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))
    assert in_ns(_readonly_checks, target, lowers, upper, work) == [errno.EROFS, True,
                                                                   errno.EROFS, True]


def test_new_api_path_strings_over_255_bytes(mountable: None, tmp_path: Any) -> None:
    deep = tmp_path / ("r" * 250) / ("s" * 20)
    deep.mkdir(parents=True)
    lowers, upper, work, target = build_layers(str(deep))
    assert all(len(os.fsencode(p)) > om.FSCONFIG_VALUE_MAX for p in lowers)
    got = in_ns(check_and_collect, target, lowers, upper, work, "new-api-path")
    assert got["strategy"] == "new-api-path"
    assert got["names"] == EXPECTED_ROOT
    assert_same_view(got["view"], lowers, upper, work)


def _validation_errors(base: str) -> dict[str, OSError]:
    lowers, upper, work, target = build_layers(base)
    errors: dict[str, OSError] = {}
    inner = os.path.join(upper, "work-inside")
    os.mkdir(inner)
    cases: dict[str, Callable[[], object]] = {
        "nested": lambda: om.mount(target, lowers, upper, inner),
        "missing": lambda: om.mount(target, [lowers[0], base + "/nope"]),
        "duplicate": lambda: om.mount(target, [lowers[0], lowers[1], lowers[0]]),
        "file": lambda: om.mount(target, [lowers[0], lowers[1] + "/d/y"]),
    }
    bind = os.path.join(base, "bound-work")
    os.mkdir(bind)
    sc.mount(work, bind, None, sc.MS_BIND, None)  # same filesystem, another mount
    cases["bind"] = lambda: om.mount(target, lowers, upper, bind)
    for name, call in cases.items():
        try:
            call()
        except OSError as exc:
            errors[name] = exc
    sc.umount2(bind)
    return errors


def test_layout_errors_are_caught_before_mounting(mountable: None, tmp_path: Any) -> None:
    errors = in_ns(_validation_errors, str(tmp_path))
    assert set(errors) == {"nested", "missing", "duplicate", "file", "bind"}
    for exc in errors.values():
        assert exc.step == "validate"
        assert str(exc).startswith(f"[Errno {exc.errno}] validate: ")
    assert errors["nested"].errno == errno.EINVAL
    assert "workdir and upperdir must be separate subtrees" in str(errors["nested"])
    assert isinstance(errors["missing"], FileNotFoundError)
    assert errors["missing"].filename.endswith("/nope")
    assert errors["duplicate"].errno == errno.ELOOP
    assert "same directory as lowerdir #1" in str(errors["duplicate"])
    assert errors["file"].errno == errno.ENOTDIR
    assert errors["bind"].errno == errno.EINVAL
    assert "must be on the same mount" in str(errors["bind"])


def _kernel_refusals(base: str, strategy: mopts.Strategy) -> dict[str, OSError]:
    lowers, upper, work, target = build_layers(base)
    errors: dict[str, OSError] = {}
    om.mount(target, lowers, upper, work, options={"volatile": True},
             strategy=strategy).unmount()
    try:  # the volatile "dirty" marker left in workdir makes the next mount fail
        om.mount(target, lowers, upper, work, strategy=strategy)
    except OSError as exc:
        errors["volatile"] = exc
    try:  # a lower inside the upper: only the kernel checks overlaps
        om.mount(target, [os.path.join(lowers[0], "d"), lowers[0]], strategy=strategy)
    except OSError as exc:
        errors["overlap"] = exc
    return errors


@pytest.mark.parametrize("strategy", ["new-api", "legacy"])
def test_kernel_refusals_carry_the_step_and_the_kernels_words(
        mountable: None, tmp_path: Any, strategy: mopts.Strategy) -> None:
    errors = in_ns(_kernel_refusals, str(tmp_path), strategy)
    assert set(errors) == {"volatile", "overlap"}
    step = "fsconfig(create)" if strategy == "new-api" else "mount(2)"
    volatile, overlap = errors["volatile"], errors["overlap"]
    assert (volatile.errno, volatile.step) == (errno.EINVAL, step)
    assert (overlap.errno, overlap.step) == (errno.ELOOP, step)
    assert str(volatile).startswith(f"[Errno 22] {step}: Invalid argument")
    if os.access("/dev/kmsg", os.R_OK):
        assert "incompat feature 'volatile'" in str(volatile), str(volatile)
        assert "overlapping lowerdir path" in str(overlap), str(overlap)
        assert volatile.kernel_messages
    else:
        assert "overlapping or duplicate layer" in str(overlap)


def _fs_context_message(base: str) -> OSError:
    lowers, upper, work, target = build_layers(base)
    spec = mopts._Spec(target, tuple(lowers), (), upper, work, False, (("bogus", "1"),))
    try:
        om._mount_new_api(spec, use_fds=True)
    except OSError as exc:
        return exc
    raise AssertionError("the kernel accepted an unknown parameter")


def test_fs_context_messages_are_read_into_the_exception(mountable: None, tmp_path: Any) -> None:
    exc = in_ns(_fs_context_message, str(tmp_path))
    assert exc.errno == errno.EINVAL
    assert exc.step == "fsconfig(bogus=1)"
    assert "Unknown parameter 'bogus'" in str(exc)


def _busy_and_lazy(target: str, lowers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = om.mount(target, lowers)
    fh = open(os.path.join(target, "a"))
    try:
        om.unmount(target)
    except OSError as exc:
        out["busy"] = exc
    with m:  # __exit__ detaches a busy mount lazily
        pass
    out["after_exit"] = m.mounted
    fh.close()
    m.unmount()  # idempotent
    try:
        om.unmount(target)
    except OSError as exc:
        out["not_mounted"] = exc
    with pytest.raises(KeyError):
        with om.mount(target, lowers):
            raise KeyError("boom")
    out["after_error"] = any(i.target == target for i in minfo.mounts())
    return out


def test_unmount_busy_lazy_idempotent(mountable: None, tmp_path: Any) -> None:
    lowers, _, _, target = build_layers(str(tmp_path))
    out = in_ns(_busy_and_lazy, target, lowers)
    assert out["busy"].errno == errno.EBUSY and "lazy=True" in str(out["busy"])
    assert out["after_exit"] is False
    assert out["not_mounted"].errno == errno.EINVAL
    assert "not a mount point" in str(out["not_mounted"])
    assert out["after_error"] is False


def _auto_without_new_api(target: str, lowers: list[str], upper: str, work: str,
                          error: int | None) -> str:
    om._api_support_cache = None
    if error is None:  # fsopen works but the kernel predates lowerdir+ (5.2 - 6.7)
        om._api_support_cache = om._ApiSupport(True, False, False)
    else:
        def fsopen(name: str, flags: int = 1) -> int:
            raise OSError(error, "fsopen: simulated")
        sc.fsopen = fsopen  # the child exits afterwards: no need to restore
    with om.mount(target, lowers, upper, work) as m:
        assert sorted(os.listdir(target)) == EXPECTED_ROOT
        return m.strategy


@pytest.mark.parametrize("error", [errno.ENOSYS, None])
def test_auto_falls_back_to_mount2_on_older_kernels(mountable: None, tmp_path: Any,
                                                    error: int | None) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))
    assert in_ns(_auto_without_new_api, target, lowers, upper, work, error) == "legacy"


def _userns_whiteout_and_opaque(target: str, lowers: list[str], upper: str,
                                work: str) -> dict[str, Any]:
    with om.mount(target, lowers, upper, work) as m:
        shutil.rmtree(os.path.join(target, "d"))  # merged dir: whiteout
        os.mkdir(os.path.join(target, "d"))  # over a whiteout: opaque
        (info,) = [i for i in minfo.mounts() if i.target == target]
        return {"options": m.options, "info_options": info.options,
                "opaque": os.getxattr(os.path.join(upper, "d"), "user.overlay.opaque"),
                "listing": os.listdir(os.path.join(target, "d")),
                "view": mount_view(target)}


def test_user_namespace_mounts_use_userxattr_automatically(mountable: None,
                                                           tmp_path: Any) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path), namespace="user")
    got = ns.run_in_user_namespace(_userns_whiteout_and_opaque, target, lowers, upper, work)
    assert got["options"] == {"userxattr": True}
    assert got["info_options"]["userxattr"] is True
    assert got["opaque"] == b"y" and got["listing"] == []
    assert "trusted.overlay.opaque" not in os.listxattr(os.path.join(upper, "d"))
    # the whiteouts and opaque dir the kernel wrote, read back
    assert_same_view(got["view"], lowers, upper, work, namespace="user")


USERNS_SCRIPT = r"""
import importlib, json, os, sys
om = importlib.import_module("overlayfs._mount")
ns = importlib.import_module("overlayfs._namespace")
target, upper, work, *lowers = sys.argv[1:]
with om.mount(target, lowers, upper, work) as m:
    with open(os.path.join(target, "a")) as fh:
        top = fh.read()
    names = sorted(os.listdir(target))
print(json.dumps({"strategy": m.strategy, "options": m.options, "top": top, "names": names,
                  "userns": ns._in_user_namespace()}))
"""


def test_unprivileged_mount_under_unshare_Urm(mountable: None, tmp_path: Any) -> None:
    if shutil.which("unshare") is None:
        if REQUIRE_KERNEL:
            pytest.fail("OVERLAYFS_REQUIRE_KERNEL=1 but util-linux unshare is not installed", pytrace=False)
        pytest.skip("util-linux unshare is not installed")
    lowers, upper, work, target = build_layers(str(tmp_path), namespace="user")
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(om.__file__)))
    env = dict(os.environ, PYTHONPATH=package_parent)
    proc = subprocess.run(["unshare", "-Urm", sys.executable, "-c", USERNS_SCRIPT, target,
                           upper, work, *lowers], capture_output=True, text=True, env=env,
                          timeout=60)
    if proc.returncode and "unshare failed" in proc.stderr and not REQUIRE_KERNEL:
        pytest.skip(f"user namespaces are not available: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["userns"] is True
    assert got["options"] == {"userxattr": True}
    assert got["top"] == "top" and got["names"] == EXPECTED_ROOT


def test_mount_stack_property_gives_the_same_view(mountable: None, tmp_path: Any) -> None:
    lowers, upper, work, target = build_layers(str(tmp_path))

    def body() -> tuple[dict[str, Record], dict[str, Record]]:
        with om.mount(target, lowers, upper, work) as m, m.stack as stack:
            assert type(stack) is Stack
            return mount_view(target), stack_view(stack)

    mounted, stacked = in_ns(body)
    assert mounted == stacked


def test_mount_stack_reads_the_layers_as_the_kernel_does(mountable: None, tmp_path: Any) -> None:
    """The layers of a kernel mount are in the kernel's whiteout form: a file named
    .wh.victim is a file there, and hides nothing in Mount.stack either."""
    lowers, upper, work, target = build_layers(str(tmp_path))
    for layer, name in ((lowers[0], ".wh.victim"), (lowers[-1], "victim")):
        with open(os.path.join(layer, name), "w") as fh:
            fh.write(name)

    def body() -> tuple[dict[str, Record], dict[str, Record]]:
        with om.mount(target, lowers, upper, work) as m, m.stack as stack:
            return mount_view(target), stack_view(stack)

    mounted, stacked = in_ns(body)
    assert {"victim", ".wh.victim"} <= set(mounted)
    assert mounted == stacked


# =========================================================================================
# check()
# =========================================================================================


def test_check_reports_this_machine(mountable: None, tmp_path: Any) -> None:
    report = chk.check(tmp_path)
    assert report.path == str(tmp_path)
    assert report.kernel_release == os.uname().release
    assert report.kernel_version >= (4, 0, 0)
    assert report.overlay_in_proc_filesystems
    assert report.backing_fstype  # e.g. ext4, tmpfs, xfs
    assert report.d_type is True
    assert report.o_tmpfile is not None and report.rename_whiteout is not None
    assert report.can_mount and report.mount_strategy and report.mount_error is None
    assert report.ok
    if report.kernel_version >= (6, 13, 0):
        assert report.new_mount_api and report.lowerdir_plus and report.lowerdir_fd
    assert os.listdir(tmp_path) == [], "the scratch directory must be removed"
    text = str(report)
    assert "d_type" in text and "can mount  " in text and text.endswith("OK")
    json.dumps(report.as_dict())


def test_check_explains_missing_d_type_on_xfs(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Any) -> None:
    monkeypatch.setattr(sc, "read_dir_types", lambda path: [(b"f", 0), (b"d", 0)])
    monkeypatch.setattr(chk, "_fstype_of", lambda path: "xfs")
    monkeypatch.setattr(chk, "run_in_private_namespace", lambda *a: "new-api-fd")
    monkeypatch.setattr(chk, "run_in_user_namespace", lambda *a: "new-api-fd")
    report = chk.check(tmp_path)
    assert report.d_type is False and not report.ok
    assert any("ftype=1" in p for p in report.problems)


def test_main_check_prints_the_report(mountable: None, tmp_path: Any, capsys: Any) -> None:
    assert cli.main(["check", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["path"] == str(tmp_path)
    assert cli.main(["check", str(tmp_path)]) == 0
    assert "overlay in /proc/filesystems" in capsys.readouterr().out
