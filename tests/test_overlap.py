"""Layers that overlap are refused as the kernel refuses to mount them
(super.c:ovl_get_workdir, ovl_setup_trap, ovl_check_overlapping_layers), so a
Stack can never turn a lower's only copy of a file into a whiteout, or show its
own work dir in the merged view.  Every rule is checked against mount(2) of the
same directories in a private mount namespace.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

import overlayfs
import overlayfs._namespace as ns
from overlayfs import LayerStore, _syscalls

pytestmark = pytest.mark.usefixtures("mountable")

# name: (lowers, upper, work), directory names under one root holding a/in, b, u/in, w/in.
CASES = {
    "lower is the upper": (["a", "b"], "a", "w"),
    "lower is the work dir": (["a", "b"], "u", "a"),
    "upper is the work dir": (["a", "b"], "u", "u"),
    "work dir inside the upper": (["a", "b"], "u", "u/in"),
    "upper inside the work dir": (["a", "b"], "w/in", "w"),
    "lower inside the upper": (["u/in", "b"], "u", "w"),
    "lower inside the work dir": (["w/in", "b"], "u", "w"),
    "lower inside a lower": (["a/in", "a"], "u", "w"),
    "lower inside a lower, read-only": (["a/in", "a"], None, None),
    "lower given twice": (["a", "b", "a"], "u", "w"),
    "lower given twice, read-only": (["a", "a"], None, None),
}


def _layout(root: str) -> None:
    for d in ("a/in", "b", "u/in", "w/in", "m"):
        os.makedirs(os.path.join(root, d))
    with open(os.path.join(root, "a", "f"), "w") as fh:
        fh.write("the only copy")


def _kernel_errno(root: str, lowers: list[str], upper: str | None, work: str | None) -> int:
    """mount(2) of the layers (paths relative to root), 0 if it mounted."""
    os.chdir(root)
    data = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        data += f",upperdir={upper},workdir={work}"
    try:
        _syscalls.mount("overlay", "m", "overlay", 0, data.encode())
    except OSError as exc:
        return exc.errno or -1
    _syscalls.umount2("m")
    return 0


@pytest.mark.parametrize("case", CASES)
def test_overlapping_layers_are_refused_like_the_kernel(tmp_path, case):
    lowers, upper, work = CASES[case]
    root = str(tmp_path)
    _layout(root)
    want = ns.run_in_private_namespace(_kernel_errno, root, lowers, upper, work)
    assert want in (errno.ELOOP, errno.EINVAL), f"the kernel mounted {case!r}"
    before = sorted(os.listdir(os.path.join(root, "a")))

    def p(name):
        return None if name is None else os.path.join(root, name)

    with pytest.raises(OSError) as info:
        overlayfs.Stack([p(n) for n in lowers], p(upper), p(work))
    assert info.value.errno == want
    # Both directories are named, and the message says which rule.
    assert info.value.filename and info.value.filename2
    if want == errno.EINVAL:
        assert "separate subtrees" in str(info.value)
    else:  # the kernel's two words for it
        rule = "overlapping" if "inside" in case else "conflicting"
        assert f"{rule} lowerdir path" in str(info.value)
    # Nothing was made in the layers (no work/work in a lower).
    assert sorted(os.listdir(os.path.join(root, "a"))) == before


def _trap_lookups(root: str) -> dict[str, object]:
    """The kernel's answers for an upper and a work dir that lie inside the lower."""
    os.chdir(root)
    _syscalls.mount("overlay", "m", "overlay", 0,
                    b"lowerdir=a,upperdir=a/in/up,workdir=a/in/wk")
    try:
        out: dict[str, object] = {"listing": sorted(os.listdir("m/in"))}
        for name in ("in/up", "in/wk", "f"):
            try:
                out[name] = stat.S_IFMT(os.lstat(f"m/{name}").st_mode)
            except OSError as exc:
                out[name] = exc.errno
        return out
    finally:
        _syscalls.umount2("m")


def test_an_upper_inside_a_lower_is_a_trap_as_in_the_kernel(tmp_path):
    """The kernel mounts it, and a lookup that reaches the upper or work dir
    through the lower fails with ELOOP ("caught in a trap")."""
    root = str(tmp_path)
    _layout(root)
    os.makedirs(os.path.join(root, "a/in/up"))
    os.makedirs(os.path.join(root, "a/in/wk"))
    want = ns.run_in_private_namespace(_trap_lookups, root)
    assert want["in/up"] == want["in/wk"] == errno.ELOOP
    with overlayfs.Stack([f"{root}/a"], f"{root}/a/in/up", f"{root}/a/in/wk") as st:
        got: dict[str, object] = {"listing": sorted(st.listdir("in"))}
        for name in ("in/up", "in/wk", "f"):
            try:
                got[name] = stat.S_IFMT(st.lstat(name).st_mode)
            except OSError as exc:
                got[name] = exc.errno
        with pytest.raises(OSError) as info:
            st.unlink("in/up")
        assert info.value.errno == errno.ELOOP
    assert got == want


def test_store_layers_that_name_themselves_are_refused(tmp_path):
    """A layer store whose lower file names the layer itself (a damaged or hostile
    store) gives the same error from stack(), from_layer_dir() and mount()."""
    store = LayerStore(str(tmp_path / "store"), durable=False)
    store.create("base")
    top = store.create("top", "base")
    link = store.get("top").link
    with open(os.path.join(top.path, "lower"), "w") as fh:
        fh.write(f"l/{link}")
    for opener in (lambda: store.stack("top"),
                   lambda: overlayfs.Stack.from_layer_dir(top.path)):
        with pytest.raises(OSError) as info:
            opener()
        assert info.value.errno == errno.ELOOP
        assert "conflicting lowerdir path" in str(info.value)

    def mount_it():
        try:
            LayerStore(str(tmp_path / "store"), durable=False).mount("top")
        except OSError as exc:
            return exc.errno
        return 0

    assert ns.run_in_private_namespace(mount_it) == errno.ELOOP
