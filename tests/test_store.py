"""Tests for overlayfs.store.LayerStore: Docker overlay2's on-disk layout, atomic and
concurrent creation, crash repair, diffs, and reference-counted kernel mounts.

Mounts happen only inside ``run_in_private_namespace`` children under pytest's temporary
directories. Mount tests skip where overlays cannot be mounted (fail under
``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import stat
from typing import Any

import pytest

om = importlib.import_module("overlayfs._mount")
minfo = importlib.import_module("overlayfs._mountinfo")
ns = importlib.import_module("overlayfs._namespace")
ostore = importlib.import_module("overlayfs.store")
Change, LayerStore = ostore.Change, ostore.LayerStore
stack_from_layer_dir = ostore.stack_from_layer_dir
overlayfs = importlib.import_module("overlayfs")

SHORT = re.compile(r"[A-Z2-7]{26}\Z")


def in_ns(fn: Any, *args: Any) -> Any:
    return ns.run_in_private_namespace(fn, *args)


# --- helpers ------------------------------------------------------------------------------


def write(path: str, data: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(data)


def whiteout(path: str) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def tree(root: str) -> dict[str, str]:
    """path -> content (files), "<dir>" or "-> target", for comparing views."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = "-> " + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "<dir>"
            else:
                with open(full) as fh:
                    out[rel] = fh.read()
    return out


def stack_tree(stack: Any, rel: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for name in sorted(os.fsdecode(n) for n in stack.listdir(rel)):
        path = f"{rel}/{name}" if rel else name
        mode = stack.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            out[path] = "-> " + os.fsdecode(stack.readlink(path))
        elif stat.S_ISDIR(mode):
            out[path] = "<dir>"
            out.update(stack_tree(stack, path))
        else:
            with stack.open(path) as fh:
                out[path] = fh.read().decode()
    return out


def three_layers(root: str, **kwargs: Any) -> LayerStore:
    """base <- mid <- top (top uncommitted), with shadowing and a whiteout."""
    store = LayerStore(root, durable=False, **kwargs)
    base = store.create("base")
    write(f"{base.diff}/etc/os-release", "base")
    write(f"{base.diff}/bin/sh", "sh")
    write(f"{base.diff}/tmp/scratch", "scratch")
    mid = store.create("mid", "base")
    write(f"{mid.diff}/etc/os-release", "mid")
    whiteout(f"{mid.diff}/tmp")
    top = store.create("top", "mid")
    write(f"{top.diff}/app/run", "run")
    return store


TOP_VIEW = {"app": "<dir>", "app/run": "run", "bin": "<dir>", "bin/sh": "sh", "etc": "<dir>",
            "etc/os-release": "mid"}


# =========================================================================================
# Layout
# =========================================================================================


def test_layout_is_docker_overlay2(tmp_path: Any) -> None:
    root = str(tmp_path / "overlay2")
    store = LayerStore(root, durable=False)
    assert stat.S_IMODE(os.stat(os.path.join(root, "l")).st_mode) == 0o700
    base = store.create("a" * 64)
    child = store.create("b" * 64, "a" * 64)
    grandchild = store.create(("b" * 64) + "-init", "b" * 64)
    assert store.layers() == ["a" * 64, "b" * 64, "b" * 64 + "-init"]
    assert sorted(os.listdir(base.path)) == ["committed", "diff", "link"]
    assert sorted(os.listdir(child.path)) == ["committed", "diff", "link", "lower", "work"]
    assert sorted(os.listdir(grandchild.path)) == ["diff", "link", "lower", "work"]
    for layer in (base, child, grandchild):
        assert layer.link is not None and SHORT.match(layer.link)
        with open(os.path.join(layer.path, "link")) as fh:
            assert fh.read() == layer.link  # no newline, as moby writes it
        assert os.readlink(os.path.join(root, "l", layer.link)) == f"../{layer.id}/diff"
        assert stat.S_IMODE(os.stat(layer.diff).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(child.work).st_mode) == 0o700
    with open(os.path.join(grandchild.path, "lower")) as fh:
        assert fh.read() == f"l/{child.link}:l/{base.link}"
    assert grandchild.lower == (f"l/{child.link}", f"l/{base.link}")
    assert store.get(base.id).committed and not store.get(grandchild.id).committed
    assert store.parent(grandchild.id) == child.id
    assert store.parent(base.id) is None
    assert store.chain(grandchild.id) == [grandchild.id, child.id, base.id]
    assert store.children(base.id) == [child.id]
    assert store.lower_dirs(grandchild.id) == [child.diff, base.diff]
    assert grandchild.id in store and "nope" not in store and "l" not in store
    index = os.path.exists("/sys/module/overlay/parameters/index")  # as moby decides
    assert store.mount_options == {**({"index": "off"} if index else {}),
                                   "userxattr": store.xattr_namespace == "user"}


@pytest.mark.parametrize("bad", ["", "l", ".hidden", "../up", "a/b", "x" * 300, "-dash"])
def test_invalid_ids_are_value_errors(tmp_path: Any, bad: str) -> None:
    store = LayerStore(tmp_path, durable=False)
    with pytest.raises(ValueError, match="invalid layer id"):
        store.create(bad)


def test_duplicates_and_missing_parents(tmp_path: Any) -> None:
    store = LayerStore(tmp_path, durable=False)
    store.create("a")
    with pytest.raises(FileExistsError, match="layer 'a' already exists"):
        store.create("a")
    with pytest.raises(FileNotFoundError, match="no layer 'ghost'"):
        store.create("b", "ghost")
    with pytest.raises(FileNotFoundError):
        store.get("ghost")
    assert store.layers() == ["a"]


def test_depth_is_capped_at_the_kernels_500(tmp_path: Any) -> None:
    store = LayerStore(tmp_path, durable=False)
    parent = None
    for i in range(501):
        parent = store.create(f"layer{i:03d}", parent).id
    assert len(store.get("layer500").lower) == 500
    with pytest.raises(ValueError, match="max depth exceeded.*501 layers below.*500"):
        store.create("too-deep", "layer500")
    assert "too-deep" not in store


# =========================================================================================
# Atomic and concurrent creation, removal, repair
# =========================================================================================


def leftovers(root: str) -> list[str]:
    return [n for n in os.listdir(root) if n.startswith((".tmp-", ".trash-"))]


def test_failure_mid_create_leaves_no_partial_layer(tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = LayerStore(tmp_path, durable=False)
    store.create("base")
    links_before = sorted(os.listdir(tmp_path / "l"))

    def fail(layer_id: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "_before_publish", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.create("child", "base")
    real_write = ostore._write_file

    def fail_on_lower(path: str, *args: Any) -> None:
        if path.endswith("/lower"):
            raise OSError(errno.ENOSPC, "no space", path)
        real_write(path, *args)

    monkeypatch.undo()
    monkeypatch.setattr(ostore, "_write_file", fail_on_lower)
    with pytest.raises(OSError, match="no space"):
        store.create("child", "base")
    assert store.layers() == ["base"]
    assert not os.path.exists(tmp_path / "child")
    assert leftovers(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path / "l")) == links_before


def test_a_concurrent_creator_of_the_same_id_gets_a_clear_error(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LayerStore(tmp_path, durable=False)
    rival = LayerStore(tmp_path, durable=False)
    winner: list[str] = []

    def rival_publishes_first(layer_id: str) -> None:
        winner.append(rival.create(layer_id).link or "")

    monkeypatch.setattr(store, "_before_publish", rival_publishes_first)
    with pytest.raises(FileExistsError, match="'x' was created concurrently") as info:
        store.create("x")
    assert info.value.errno == errno.EEXIST
    assert store.get("x").link == winner[0]
    assert os.listdir(tmp_path / "l") == winner, "the loser must remove its own link"
    assert leftovers(str(tmp_path)) == []


def test_racing_processes_exactly_one_wins(tmp_path: Any) -> None:
    read_end, write_end = os.pipe()
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 3
            try:
                os.close(write_end)
                os.read(read_end, 1)  # wait for the start signal
                LayerStore(tmp_path, durable=False).create("same")
                code = 0
            except FileExistsError:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(read_end)
    os.write(write_end, b"go!!")
    os.close(write_end)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids)
    assert codes == [0, 1, 1, 1]
    store = LayerStore(tmp_path, durable=False)
    assert store.layers() == ["same"]
    assert os.listdir(tmp_path / "l") == [store.get("same").link]
    assert leftovers(str(tmp_path)) == []


def test_remove(tmp_path: Any) -> None:
    store = LayerStore(tmp_path, durable=False)
    base = store.create("base")
    store.create("child", "base")
    with pytest.raises(OSError, match="'base' is the parent of 'child'") as info:
        store.remove("base")
    assert info.value.errno == errno.EBUSY
    store.remove("child")
    assert store.layers() == ["base"]
    assert os.listdir(tmp_path / "l") == [base.link]
    store.remove("base")
    assert store.layers() == [] and os.listdir(tmp_path / "l") == []
    assert leftovers(str(tmp_path)) == []
    with pytest.raises(FileNotFoundError):
        store.remove("base")


def test_repair_after_a_crash(tmp_path: Any) -> None:
    store = three_layers(str(tmp_path))
    links = {i: store.get(i).link for i in store.layers()}
    os.unlink(tmp_path / "l" / links["base"])  # lost link: recreated under the same name
    os.unlink(tmp_path / "mid" / "link")  # lost link file: recovered from its l/ entry
    os.symlink("../gone/diff", tmp_path / "l" / "DANGLING")
    (tmp_path / ".tmp-half-abc123").mkdir()  # an interrupted create
    (tmp_path / ".tmp-half-abc123" / "diff").mkdir()
    busy = tmp_path / ".tmp-busy-xyz789"  # a create still in progress elsewhere
    busy.mkdir()
    os.symlink("../busy/diff", tmp_path / "l" / "INPROGRESS")
    lock = ostore._lock_dir(str(busy), blocking=True)
    try:
        assert store.chain("top") == ["top", "mid", "base"]  # resolvable through link files
        actions = store.repair()
    finally:
        os.close(lock)
    assert f"linked l/{links['base']} -> ../base/diff" in actions
    assert f"wrote mid/link ({links['mid']})" in actions
    assert "removed the abandoned .tmp-half-abc123" in actions
    assert "removed the stale l/DANGLING -> ../gone/diff" in actions
    assert {i: store.get(i).link for i in store.layers()} == links
    assert store.chain("top") == ["top", "mid", "base"]
    assert busy.exists() and (tmp_path / "l" / "INPROGRESS").is_symlink()
    actions = store.repair()  # the lock is gone: now it is abandoned
    assert actions == ["removed the abandoned .tmp-busy-xyz789",
                       "removed the stale l/INPROGRESS -> ../busy/diff"]
    assert store.repair() == []


def test_repair_is_a_no_op_on_a_healthy_store(tmp_path: Any) -> None:
    store = three_layers(str(tmp_path))
    assert store.repair() == []


def test_commit(tmp_path: Any) -> None:
    store = three_layers(str(tmp_path))
    assert not store.get("top").committed
    store.commit("top")
    assert store.get("top").committed
    assert os.path.exists(tmp_path / "top" / "committed")


# =========================================================================================
# Docker trees
# =========================================================================================


def docker_tree(root: str) -> dict[str, str]:
    """Lay out a tree the way dockerd does: an image of two layers, the container's
    ``-init`` layer and the container layer (work and merged dirs, no committed)."""
    ids = {"img1": "1" * 64, "img2": "2" * 64, "init": "3" * 64 + "-init", "ctr": "3" * 64}
    shorts = {"img1": "AAAAAAAAAAAAAAAAAAAAAAAAA1", "img2": "BBBBBBBBBBBBBBBBBBBBBBBBB2",
              "init": "CCCCCCCCCCCCCCCCCCCCCCCCC3", "ctr": "DDDDDDDDDDDDDDDDDDDDDDDDD4"}
    os.makedirs(os.path.join(root, "l"), mode=0o700)
    order = ["img1", "img2", "init", "ctr"]
    for i, key in enumerate(order):
        layer = os.path.join(root, ids[key])
        os.makedirs(os.path.join(layer, "diff"))
        with open(os.path.join(layer, "link"), "w") as fh:
            fh.write(shorts[key])
        os.symlink(f"../{ids[key]}/diff", os.path.join(root, "l", shorts[key]))
        below = [f"l/{shorts[k]}" for k in reversed(order[:i])]
        if below:
            with open(os.path.join(layer, "lower"), "w") as fh:
                fh.write(":".join(below))
            os.mkdir(os.path.join(layer, "work"))
        if key != "ctr":
            open(os.path.join(layer, "committed"), "w").close()
    os.mkdir(os.path.join(root, ids["ctr"], "merged"))
    d = {k: os.path.join(root, v, "diff") for k, v in ids.items()}
    write(f"{d['img1']}/etc/passwd", "root:x:0:0")
    write(f"{d['img1']}/usr/bin/tool", "v1")
    write(f"{d['img2']}/usr/bin/tool", "v2")
    write(f"{d['init']}/etc/hostname", "")
    write(f"{d['ctr']}/data/log", "hello")
    os.mkdir(f"{d['ctr']}/etc")
    whiteout(f"{d['ctr']}/etc/passwd")
    return ids


DOCKER_VIEW = {"data": "<dir>", "data/log": "hello", "etc": "<dir>", "etc/hostname": "",
               "usr": "<dir>", "usr/bin": "<dir>", "usr/bin/tool": "v2"}


def test_open_docker_reads_the_tree_and_refuses_changes(tmp_path: Any) -> None:
    ids = docker_tree(str(tmp_path))
    store = LayerStore.open_docker(tmp_path)
    assert store.readonly
    assert store.layers() == sorted(ids.values())
    assert store.chain(ids["ctr"]) == [ids["ctr"], ids["init"], ids["img2"], ids["img1"]]
    assert store.parent(ids["img1"]) is None
    for call in (lambda: store.create("new"), lambda: store.remove(ids["ctr"]),
                 lambda: store.commit(ids["ctr"]), store.repair):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
    with pytest.raises(ValueError, match="pass target="):
        store.mount(ids["ctr"])
    with pytest.raises(FileNotFoundError, match="not an overlay2 layer store"):
        LayerStore.open_docker(tmp_path / ids["ctr"])


def test_stack_from_layer_dir(tmp_path: Any) -> None:
    ids = docker_tree(str(tmp_path))
    with stack_from_layer_dir(tmp_path / ids["ctr"]) as stack:
        assert type(stack) is overlayfs.Stack
        assert stack_tree(stack) == DOCKER_VIEW
    with overlayfs.Stack.from_layer_dir(tmp_path / ids["ctr"]) as stack:
        assert type(stack) is overlayfs.Stack
        assert stack_tree(stack) == DOCKER_VIEW
    with LayerStore.open_docker(tmp_path).stack(ids["img2"]) as stack:
        assert type(stack) is overlayfs.Stack
        assert stack_tree(stack) == {"etc": "<dir>", "etc/passwd": "root:x:0:0",
                                     "usr": "<dir>", "usr/bin": "<dir>",
                                     "usr/bin/tool": "v2"}


# =========================================================================================
# diff
# =========================================================================================


def test_diff_reports_added_changed_deleted_whiteouts_and_opaque_dirs(
        tmp_path: Any) -> None:
    store = LayerStore(tmp_path, durable=False, xattr_namespace="trusted")
    p = store.create("parent").diff
    for name in ("keep", "mod", "del", "xdel", "op/a", "op/b", "sub/x"):
        write(f"{p}/{name}", name)
    c = store.create("child", "parent").diff
    write(f"{c}/mod", "changed")
    write(f"{c}/new", "new")
    whiteout(f"{c}/del")
    write(f"{c}/xdel")
    os.setxattr(f"{c}/xdel", "trusted.overlay.whiteout", b"")
    write(f"{c}/op/b", "replaced")
    os.setxattr(f"{c}/op", "trusted.overlay.opaque", b"y")
    write(f"{c}/sub/y", "y")
    write(f"{c}/newdir/z", "z")
    whiteout(f"{c}/never-existed")
    assert store.diff("child") == [
        Change("deleted", "del"), Change("changed", "mod"), Change("deleted", "never-existed"),
        Change("added", "new"),
        Change("added", "newdir"), Change("added", "newdir/z"),
        Change("changed", "op", opaque=True), Change("deleted", "op/a"),
        Change("changed", "op/b"), Change("changed", "sub"), Change("added", "sub/y"),
        Change("deleted", "xdel")]
    assert store.diff("parent") == sorted(
        [Change("added", n) for n in ("keep", "mod", "del", "xdel", "op", "op/a", "op/b",
                                      "sub", "sub/x")], key=lambda c: c.path.split("/"))


# =========================================================================================
# Mounts
# =========================================================================================


def _mount_refcount(root: str) -> dict[str, Any]:
    store = LayerStore(root, durable=False)
    out: dict[str, Any] = {}
    out["base"] = store.mount("base")
    first = store.mount("top")
    second = store.mount("top")
    out["same_path"] = first == second == os.path.join(root, "top", "merged")
    out["count"] = store.mount_count("top")
    out["view"] = tree(first)
    write(os.path.join(first, "app", "new"), "through")
    (info,) = [i for i in minfo.mounts() if i.target == first]
    out["info"] = info
    store.unmount("top")
    out["after_one"] = ostore._is_mount_point(first)
    with pytest.raises(OSError) as busy:
        store.remove("top")
    out["remove_busy"] = busy.value.errno
    with pytest.raises(OSError) as busy:
        store.commit("top")
    out["commit_busy"] = busy.value.errno
    store.unmount("top")
    out["after_two"] = ostore._is_mount_point(first)
    out["merged_removed"] = not os.path.exists(first)
    return out


def test_mount_is_reference_counted_and_writes_to_the_layer(mountable: None,
                                                           tmp_path: Any) -> None:
    store = three_layers(str(tmp_path))
    out = in_ns(_mount_refcount, str(tmp_path))
    assert out["base"] == store.get("base").diff, "a base layer is used in place, as moby"
    assert out["same_path"] and out["count"] == 2
    assert out["view"] == TOP_VIEW
    assert out["info"].upper == store.get("top").diff
    assert out["after_one"] is True and out["after_two"] is False and out["merged_removed"]
    assert out["remove_busy"] == errno.EBUSY and out["commit_busy"] == errno.EBUSY
    with open(tmp_path / "top" / "diff" / "app" / "new") as fh:
        assert fh.read() == "through"


def _mounted_tree(root: str, layer_id: str) -> dict[str, str]:
    """The tree of a store layer's own mount (run in a private namespace)."""
    store = LayerStore(root, durable=False)
    point = store.mount(layer_id)
    try:
        return tree(point)
    finally:
        store.unmount(layer_id)


def test_mounted_view_matches_store_stack(mountable: None,
                                          tmp_path: Any) -> None:
    store = three_layers(str(tmp_path))

    with store.stack("top") as stack:
        assert in_ns(_mounted_tree, str(tmp_path), "top") == stack_tree(stack) == TOP_VIEW


def test_store_views_read_the_layers_as_the_kernel_does(mountable: None, tmp_path: Any) -> None:
    """overlay2 layers are in the kernel's whiteout form: a file named .wh.sh is a file
    in a mount, and hides nothing in LayerStore.stack or Stack.from_layer_dir either."""
    store = three_layers(str(tmp_path))
    write(f"{store.get('mid').diff}/bin/.wh.sh", "not a whiteout")

    mounted = in_ns(_mounted_tree, str(tmp_path), "top")
    assert mounted == {**TOP_VIEW, "bin/.wh.sh": "not a whiteout"}
    with store.stack("top") as stack, stack_from_layer_dir(tmp_path / "top") as from_dir:
        assert stack_tree(stack) == stack_tree(from_dir) == mounted


def _committed_and_relinked(root: str) -> dict[str, Any]:
    store = LayerStore(root, durable=False)
    store.commit("top")
    os.unlink(os.path.join(root, "l", store.get("base").link or ""))  # as after a crash
    point = store.mount("top")
    out: dict[str, Any] = {"view": tree(point)}
    try:
        write(os.path.join(point, "x"), "x")
    except OSError as exc:
        out["write"] = exc.errno
    (info,) = [i for i in minfo.mounts() if i.target == point]
    out["upper"], out["lowers"] = info.upper, len(info.lowers)
    store.unmount("top")
    return out


def test_committed_layers_mount_read_only_and_lost_links_are_recreated(
        mountable: None, tmp_path: Any) -> None:
    three_layers(str(tmp_path))
    out = in_ns(_committed_and_relinked, str(tmp_path))
    assert out["view"] == TOP_VIEW
    assert out["write"] == errno.EROFS
    assert out["upper"] is None and out["lowers"] == 3


def _docker_mounts(root: str, ids: dict[str, str], target: str) -> dict[str, Any]:
    store = LayerStore.open_docker(root)
    out: dict[str, Any] = {}
    for key in ("ctr", "img1"):
        point = store.mount(ids[key], target)
        out[key] = tree(point)
        try:
            write(os.path.join(point, "x"), "x")
        except OSError as exc:
            out[key + "_write"] = exc.errno
        store.unmount(ids[key], target)
        out[key + "_after"] = ostore._is_mount_point(target)
    return out


def test_docker_layers_mount_read_only_at_a_chosen_target(mountable: None,
                                                          tmp_path: Any) -> None:
    root = str(tmp_path / "overlay2")
    ids = docker_tree(root)
    target = str(tmp_path / "view")
    os.mkdir(target)
    out = in_ns(_docker_mounts, root, ids, target)
    assert out["ctr"] == DOCKER_VIEW
    assert out["img1"] == {"etc": "<dir>", "etc/passwd": "root:x:0:0", "usr": "<dir>",
                           "usr/bin": "<dir>", "usr/bin/tool": "v1"}
    assert out["ctr_write"] == out["img1_write"] == errno.EROFS
    assert not out["ctr_after"] and not out["img1_after"]
    assert os.listdir(os.path.join(root, ids["ctr"], "merged")) == []


def _deep_mount(root: str, top: str, legacy: bool) -> dict[str, Any]:
    if legacy:  # as on a kernel before 6.8
        om._api_support_cache = om._ApiSupport(True, False, False)
    store = LayerStore(root, durable=False)
    point = store.mount(top)
    try:
        (info,) = [i for i in minfo.mounts() if i.target == point]
        with open(os.path.join(point, "shared")) as fh:
            shared = fh.read()
        return {"names": len(os.listdir(point)), "shared": shared, "lowers": info.lowers,
                "upper": info.upper}
    finally:
        store.unmount(top)


@pytest.mark.parametrize("legacy", [False, True], ids=["new-api", "legacy"])
def test_deep_stores_mount_with_overlay2_style_strings(mountable: None, tmp_path: Any,
                                                       legacy: bool) -> None:
    root = str(tmp_path / ("long-store-root-" + "r" * 180))
    store = LayerStore(root, durable=False)
    parent = None
    for i in range(130):  # over moby's 128; absolute l/ paths would pass a page
        layer = store.create(f"layer{i:03d}", parent)
        write(f"{layer.diff}/f{i:03d}", str(i))
        write(f"{layer.diff}/shared", str(i))
        parent = layer.id
    out = in_ns(_deep_mount, root, "layer129", legacy)
    assert out["names"] == 131 and out["shared"] == "129"
    lowers = store.get("layer129").lower
    if legacy:  # exactly the relative strings dockerd's mountFrom uses
        assert out["lowers"] == lowers and out["upper"] == "layer129/diff"
    else:
        assert out["lowers"] == tuple(store.lower_dirs("layer129"))


def _userns_store(root: str) -> dict[str, Any]:
    store = LayerStore(root, durable=False)
    point = store.mount("top")
    try:
        (info,) = [i for i in minfo.mounts() if i.target == point]
        return {"ns": store.xattr_namespace, "userxattr": info.options.get("userxattr"),
                "view": tree(point)}
    finally:
        store.unmount("top")


def test_user_namespace_stores_use_user_xattrs(mountable: None, tmp_path: Any) -> None:
    three_layers(str(tmp_path))
    out = ns.run_in_user_namespace(_userns_store, str(tmp_path))
    assert out == {"ns": "user", "userxattr": True, "view": TOP_VIEW}
