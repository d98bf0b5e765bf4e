"""Diffs of a layer against the layers below it (overlayfs.changes, Stack.diff,
LayerStore.diff), each checked against the kernel.

The rule every diff must keep (:func:`describe_problems`): applied to the
parent's view, it describes the merged view, as kernel mounts show them (the
layer over its lowers, and the lowers alone, both mounted read-only):

* every path of the merged view that the parent's view lacks is ``added``;
  every path of both views that is a different object there (metadata,
  content, target, xattrs, or another inode) is ``changed`` (a path that is
  the same in both may be reported ``changed`` too, never ``added``);
* every path of the parent's view missing from the merged view is
  ``deleted``, or lies under a path reported ``deleted``, under an ``opaque``
  directory, or under a path that became a non-directory;
* nothing else: ``added``/``changed`` paths are in the merged view,
  ``deleted`` ones are not; each path once, sorted by components.

The targeted tests pin the expected list too, so a rule both the diff and
this check got wrong still fails.

Needs root and overlayfs for the kernel (fails instead of skipping under
``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import os
import sys

import pytest

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # conftest does this too
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel  # noqa: E402
import stackgen  # noqa: E402

import overlayfs  # noqa: E402
from overlayfs.changes import Change, changes  # noqa: E402
from overlayfs.store import LayerStore  # noqa: E402


# ---------------------------------------------------------------------------
# The check against the kernel
# ---------------------------------------------------------------------------


def kernel_views(scratch, layer, lowers, options=()):
    """(merged, parent): kernel views of *layer* over *lowers*, and of *lowers* alone.

    Both are read-only mounts (nothing is written into the layers); an empty
    bottom layer is added because a read-only overlay needs two lowers.
    """
    pad = os.path.join(os.fsdecode(scratch), "kernel-pad")
    os.makedirs(pad, exist_ok=True)
    lowers = [os.fsdecode(p) for p in lowers]
    merged = kernel.kernel_view([os.fsdecode(layer), *lowers, pad], options=options)
    parent = kernel.kernel_view([*lowers, pad], options=options) if lowers else {"paths": {}, "extra": {}}
    return merged, parent


def _present(view, path):
    """The path exists in the view (its lookup may fail with an error other than
    ENOENT: a damaged entry the kernel lists, still there)."""
    rec = view["paths"].get(path)
    return rec is not None and rec["lstat"].get("errno") != "ENOENT"


def _is_dir(view, path):
    rec = view["paths"].get(path)
    return rec is not None and rec["lstat"].get("type") == "dir"


def _signature(view, path, layer_offset):
    """What makes the object at *path* this object: lstat, content (regular files),
    target, xattrs, and which layer object's inode it reports (renumbered so that
    both views number the lowers alike)."""
    rec = view["paths"][path]
    sig = {"lstat": rec["lstat"], "readlink": rec.get("readlink"), "xattrs": rec.get("xattrs")}
    if rec["lstat"].get("type") == "reg":
        sig["sha256"] = rec.get("sha256")
    ino = rec.get("ino")
    if ino and ":" in ino and ino.split(":", 1)[0].isdigit():
        index, rest = ino.split(":", 1)
        ino = "%d:%s" % (int(index) - layer_offset, rest)
    sig["ino"] = ino
    return sig


def _ancestors(path):
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def describe_problems(found, merged, parent) -> list[str]:
    """How the diff *found* fails to describe *merged* as a change of *parent*
    (kernel views from :func:`kernel_views`); empty if it does."""
    out = []
    by_path = {}
    for c in found:
        if c.path in by_path:
            out.append("%s reported twice: %s and %s" % (c.path, by_path[c.path], c))
        by_path[c.path] = c
    if list(found) != sorted(found, key=lambda c: c.path.split("/")):
        out.append("not sorted by path components")
    for path in sorted(merged["paths"]):
        if not path or not _present(merged, path):
            continue
        got = by_path.get(path)
        kind = got.kind if got else None
        if not _present(parent, path):
            if kind != "added":
                out.append("%s: only in the merged view, reported %s" % (path, got))
        elif _signature(merged, path, 1) != _signature(parent, path, 0):
            if kind != "changed":
                out.append("%s: differs from the parent's, reported %s" % (path, got))
        elif kind not in (None, "changed"):
            out.append("%s: the same in both views, reported %s" % (path, got))
    for path in sorted(parent["paths"]):
        if not path or not _present(parent, path) or _present(merged, path):
            continue
        covered = [q for q in _ancestors(path) + [path] if q in by_path and (
            by_path[q].kind == "deleted" or by_path[q].opaque
            or (q != path and not _is_dir(merged, q)))]
        if not covered:
            out.append("%s: gone from the merged view, reported %s" % (path, by_path.get(path)))
    for c in found:
        if c.kind == "deleted":
            if _present(merged, c.path):
                out.append("%s: reported deleted but in the merged view" % (c,))
        elif not _present(merged, c.path):
            out.append("%s: not in the merged view" % (c,))
        if c.opaque and not _is_dir(merged, c.path):
            out.append("%s: opaque but not a directory in the merged view" % (c,))
    return out


def assert_describes_kernel(scratch, layer, lowers, found, *, options=(), context=""):
    """Fail with every problem of :func:`describe_problems`, against kernel views."""
    merged, parent = kernel_views(scratch, layer, lowers, options)
    problems = describe_problems(found, merged, parent)
    assert not problems, "the diff does not describe the kernel's merged view%s:\n  %s\ndiff: %s" % (
        " (%s)" % context if context else "", "\n  ".join(problems[:40]), found)


@pytest.fixture(autouse=True)
def _kernel():
    kernel.skip_unless_mountable()


def build(tmp_path, spec, nlowers=None):
    """Hand-written layers (``stackgen.populate`` entries): ``"layer"`` is the diffed
    layer, ``"l1"`` (top) ... its lowers. Returns (layer, lowers) as str paths."""
    if nlowers is None:
        nlowers = max([int(k[1:]) for k in spec if k.startswith("l") and k[1:].isdigit()] + [0])
    full = {"layer": [], **{"l%d" % i: [] for i in range(1, nlowers + 1)}, **spec}
    stackgen.populate(tmp_path, full)
    return str(tmp_path / "layer"), [str(tmp_path / ("l%d" % i)) for i in range(1, nlowers + 1)]


def diff_and_check(tmp_path, spec, expected, *, options=(), **kwargs):
    layer, lowers = build(tmp_path, spec)
    found = changes(layer, lowers, **kwargs)
    assert found == expected
    assert_describes_kernel(tmp_path, layer, lowers, found, options=options)
    return found


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


def test_entries_are_added_or_changed_and_whiteouts_deleted(tmp_path):
    diff_and_check(tmp_path, {
        "l1": [("keep", "file"), ("mod", "file"), ("del", "file"), ("xdel", "file"), ("sub/x", "file")],
        "layer": [("mod", "file", b"changed"), ("new", "file"), ("del", "whiteout"), ("xdel", "xwhiteout"),
                  ("sub/y", "file"), ("newdir/z", "file"), ("never-existed", "whiteout")],
    }, [Change("deleted", "del"), Change("changed", "mod"), Change("deleted", "never-existed"),
        Change("added", "new"), Change("added", "newdir"), Change("added", "newdir/z"),
        Change("changed", "sub"), Change("added", "sub/y"), Change("deleted", "xdel")])


def test_inside_an_opaque_dir_a_name_the_parent_has_is_changed(tmp_path):
    """Issue 8 item 2 (seen for etc/apt/sources.list in a container): base dd/f and
    dd/g, an opaque dd holding a new dd/f. dd/f is changed (the parent's view has it),
    dd/g deleted."""
    diff_and_check(tmp_path, {"l1": [("dd/f", "file"), ("dd/g", "file")],
                              "layer": [("dd/f", "file", b"new"), ("dd", "xattr", "X.opaque", "y")]},
                   [Change("changed", "dd", opaque=True), Change("changed", "dd/f"), Change("deleted", "dd/g")])


def test_below_an_opaque_dir_the_parents_names_it_lacks_are_deleted(tmp_path):
    """Deeper in an opaque directory the layer's directories are all there is too:
    names the parent's view has there and the layer lacks are deleted (once, whether
    or not the layer holds a whiteout for them), names it has are changed, the rest
    added; the parent's name lists count, not its layers'."""
    diff_and_check(tmp_path, {
        "l2": [("dd/sub/gone2", "file"), ("dd/sub/deep/z", "file")],
        "l1": [("dd/sub/keep", "file"), ("dd/sub/gone", "file"), ("dd/sub/hidden", "whiteout"),
               ("dd/file", "file")],
        "layer": [("dd/sub/keep", "file", b"new"), ("dd/sub/deep/new", "file"), ("dd/sub/hidden", "file"),
                  ("dd/file/x", "file"), ("dd/sub/gone", "whiteout"), ("dd", "xattr", "X.opaque", "y")],
    }, [Change("changed", "dd", opaque=True), Change("changed", "dd/file"), Change("added", "dd/file/x"),
        Change("changed", "dd/sub"), Change("changed", "dd/sub/deep"), Change("added", "dd/sub/deep/new"),
        Change("deleted", "dd/sub/deep/z"), Change("deleted", "dd/sub/gone"), Change("deleted", "dd/sub/gone2"),
        Change("added", "dd/sub/hidden"), Change("changed", "dd/sub/keep")])


def test_a_base_layer_is_all_added(tmp_path):
    diff_and_check(tmp_path, {"layer": [("a/b", "file"), ("c", "symlink", "a/b")]},
                   [Change("added", "a"), Change("added", "a/b"), Change("added", "c")])


def test_the_diff_is_deterministic(tmp_path):
    layer, lowers = build(tmp_path, {"l1": [("d/%d" % i, "file") for i in range(40)],
                                     "layer": [("d/%d" % i, "file") for i in range(0, 40, 3)]
                                     + [("d/w%d" % i, "whiteout") for i in range(10)]})
    first = changes(layer, lowers)
    assert first == sorted(first, key=lambda c: c.path.split("/"))
    assert all(changes(layer, lowers) == first for _ in range(3))


# ---------------------------------------------------------------------------
# The API: Stack.diff, LayerStore.diff, Change
# ---------------------------------------------------------------------------


def test_change_is_one_class_everywhere():
    assert overlayfs.Change is Change is overlayfs.store.Change


def test_stack_diff_is_the_diff_of_its_upper(tmp_path):
    layer, lowers = build(tmp_path, {"l1": [("a", "file"), ("b", "file")], "layer": [("a", "file", b"new")]})
    work = tmp_path / "work"
    work.mkdir()
    with overlayfs.Stack(lowers, layer, str(work)) as st:
        st.unlink("b")
        assert st.diff() == changes(layer, lowers) == [Change("changed", "a"), Change("deleted", "b")]
    with overlayfs.Stack([os.fsencode(p) for p in lowers], os.fsencode(layer), bytes(work)) as st:
        assert st.diff() == [Change("changed", "a"), Change("deleted", "b")]  # str paths for bytes layers


def test_stack_diff_needs_an_upper_and_an_open_stack(tmp_path):
    layer, lowers = build(tmp_path, {"l1": [("a", "file")]})
    with overlayfs.Stack(lowers) as st:
        with pytest.raises(ValueError, match="needs an upper layer"):
            st.diff()
    st = overlayfs.Stack(lowers, layer, str(tmp_path / "layer"))
    st.close()
    with pytest.raises(ValueError, match="closed"):
        st.diff()


def test_layer_store_diff_is_the_diff_of_its_layer(tmp_path):
    store = LayerStore(tmp_path / "store", durable=False, xattr_namespace="trusted")
    base = store.create("base").diff
    stackgen.populate(base, {"": [("a", "file"), ("b", "file")]})
    top = store.create("top", "base").diff
    stackgen.populate(top, {"": [("a", "file", b"new"), ("b", "whiteout")]})
    assert store.diff("top") == changes(top, [base]) == [Change("changed", "a"), Change("deleted", "b")]
    assert store.diff("base") == [Change("added", "a"), Change("added", "b")]


# ---------------------------------------------------------------------------
# The check itself
# ---------------------------------------------------------------------------


def test_check_catches_wrong_diffs(tmp_path):
    """describe_problems flags a missing, a wrongly kinded, an invented, a duplicated
    and an unsorted change, and a deletion nothing covers."""
    layer, lowers = build(tmp_path, {"l1": [("keep", "file"), ("mod", "file"), ("gone", "file"), ("d/x", "file")],
                                     "layer": [("mod", "file", b"new"), ("new", "file"), ("gone", "whiteout"),
                                               ("d", "dir"), ("d", "xattr", "X.opaque", "y")]})
    right = changes(layer, lowers)
    assert right == [Change("changed", "d", opaque=True), Change("deleted", "d/x"), Change("deleted", "gone"),
                     Change("changed", "mod"), Change("added", "new")]
    merged, parent = kernel_views(tmp_path, layer, lowers)
    assert describe_problems(right, merged, parent) == []
    def srt(found):
        return sorted(found, key=lambda c: c.path.split("/"))

    wrong = {
        "missing": [c for c in right if c.path != "new"],
        "kind": [c._replace(kind="added") if c.path == "mod" else c for c in right],
        "invented": srt(right + [Change("added", "zzz")]),
        "same reported added": srt(right + [Change("added", "keep")]),
        "twice": right + [right[-1]],
        "uncovered deletion": [c._replace(opaque=False) if c.path == "d" else c for c in right if c.path != "d/x"],
        "deleted but there": srt([c for c in right if c.path != "new"] + [Change("deleted", "new")]),
    }
    for name, found in wrong.items():
        problems = describe_problems(found, merged, parent)
        assert problems and "not sorted by path components" not in problems, "the check missed: %s" % name
    assert describe_problems(right[::-1], merged, parent) == ["not sorted by path components"]
