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
import random

import kernel
import pytest
import stackgen
import write_ops
from write_ops import O

import overlayfs
from overlayfs.changes import Change, changes
from overlayfs.store import LayerStore

# ---------------------------------------------------------------------------
# The check against the kernel
# ---------------------------------------------------------------------------


def kernel_views(scratch, layer, lowers, options=(), data_layers=()):
    """(merged, parent): kernel views of *layer* over *lowers*, and of *lowers* alone.

    Both are read-only mounts (nothing is written into the layers); an empty
    bottom layer is added because a read-only overlay needs two lowers.
    """
    pad = os.path.join(os.fsdecode(scratch), "kernel-pad")
    os.makedirs(pad, exist_ok=True)
    lowers = [os.fsdecode(p) for p in lowers]
    merged = kernel.kernel_view([os.fsdecode(layer), *lowers, pad], options=options, data_layers=data_layers)
    parent = (kernel.kernel_view([*lowers, pad], options=options, data_layers=data_layers) if lowers
              else {"paths": {}, "extra": {}})
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


def assert_describes_kernel(scratch, layer, lowers, found, *, options=(), data_layers=(), context=""):
    """Fail with every problem of :func:`describe_problems`, against kernel views."""
    merged, parent = kernel_views(scratch, layer, lowers, options, data_layers)
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
    """Each entry of the layer is added, or changed where the parent's view has the
    path; each whiteout (char 0/0 or xattr) is deleted, a name the parent's view
    lacks too (the layer holds it)."""
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



def apply(tmp_path, how, spec, ops, *, options=(), stack_kwargs=None):
    """Hand-written layers (``write_ops.make_layout``: ``"upper"``, ``"l1"``...) changed by
    *ops* through a kernel mount with *options* (``how="kernel"``) or through a Stack
    with *stack_kwargs* (``how="stack"``); every operation must succeed. Returns the
    layout (the upper is the layer to diff)."""
    layout = write_ops.make_layout(tmp_path, spec)
    if how == "kernel":
        outcomes = write_ops.apply_kernel(layout.lowers, layout.upper, layout.work, ops, options=options)["outcomes"]
    else:
        with overlayfs.Stack(layout.lowers, layout.upper, layout.work, **(stack_kwargs or {})) as st:
            outcomes = write_ops.apply_ops(write_ops.StackFS(st), ops)
    assert all(o.startswith("ok") for o in outcomes), outcomes
    return layout


def upper_xattr(layout, path, name):
    try:
        return os.getxattr(os.path.join(layout.upper, os.fsencode(path)), name, follow_symlinks=False)
    except OSError:
        return None


REDIRECT_DIR = {"options": ("redirect_dir=on",), "stack_kwargs": {"redirect_dir": True}}


@pytest.mark.parametrize("how", ["stack", "kernel"])
def test_a_renamed_dir_reports_its_merged_contents(tmp_path, how):
    """Issue 8 item 3: with redirect_dir, renaming docs (docs/a, docs/sub/b below) to
    manual leaves an upper manual/ holding only a redirect; its merged contents are
    still new at manual/..., so each is added (the redirected dir is opaque: the
    parent's view of manual, had it one, is hidden)."""
    layout = apply(tmp_path, how, {"l1": [("docs/a", "file"), ("docs/sub/b", "file"), ("keep", "file")]},
                   [O("rename", src=b"docs", dst=b"manual")], **REDIRECT_DIR)
    assert upper_xattr(layout, "manual", "trusted.overlay.redirect") == b"docs"
    found = changes(layout.upper, layout.lowers)
    assert found == [Change("deleted", "docs"), Change("added", "manual", opaque=True), Change("added", "manual/a"),
                     Change("added", "manual/sub"), Change("added", "manual/sub/b")]
    assert_describes_kernel(tmp_path, layout.upper, layout.lowers, found, options=("redirect_dir=on",))


@pytest.mark.parametrize("how", ["stack", "kernel"])
def test_a_dir_renamed_over_one_the_parent_has_compares_path_by_path(tmp_path, how):
    """Each name under the redirected dir is changed where the parent's view has that
    same path (whatever it holds there), added where not; the parent's names there
    that the merged dir lacks are deleted; changes made after the rename show."""
    layout = apply(tmp_path, how,
                   {"l1": [("docs/a", "file", b"docs a"), ("docs/b", "file"), ("docs/gone", "file"),
                           ("manual/a", "file", b"manual a"), ("manual/old", "file")]},
                   [O("unlink", path=b"manual/a"), O("unlink", path=b"manual/old"), O("rmdir", path=b"manual"),
                    O("rename", src=b"docs", dst=b"manual"), O("unlink", path=b"manual/gone"),
                    O("os_open", path=b"manual/new", flags=["O_WRONLY", "O_CREAT"], mode=0o644, data=b"n")],
                   **REDIRECT_DIR)
    found = changes(layout.upper, layout.lowers)
    assert found == [Change("deleted", "docs"), Change("changed", "manual", opaque=True), Change("changed", "manual/a"),
                     Change("added", "manual/b"), Change("deleted", "manual/gone"), Change("added", "manual/new"),
                     Change("deleted", "manual/old")]
    assert_describes_kernel(tmp_path, layout.upper, layout.lowers, found, options=("redirect_dir=on",))


@pytest.mark.parametrize("how", ["stack", "kernel"])
def test_absolute_redirects_and_renamed_parents(tmp_path, how):
    """A dir moved to another parent gets an absolute redirect; its old parent, moved
    next, a redirect too, and a whiteout where the first one was."""
    layout = apply(tmp_path, how, {"l1": [("a/b/c/f", "file"), ("a/b/k", "file"), ("dst/keep", "file")],
                                   "l2": [("a/b/c/deep", "file")]},
                   [O("rename", src=b"a/b/c", dst=b"dst/c2"), O("rename", src=b"a/b", dst=b"top")], **REDIRECT_DIR)
    assert upper_xattr(layout, "dst/c2", "trusted.overlay.redirect") == b"/a/b/c"
    found = changes(layout.upper, layout.lowers)
    assert found == [Change("changed", "a"), Change("deleted", "a/b"), Change("changed", "dst"),
                     Change("added", "dst/c2", opaque=True), Change("added", "dst/c2/deep"), Change("added", "dst/c2/f"),
                     Change("added", "top", opaque=True), Change("deleted", "top/c"), Change("added", "top/k")]
    assert_describes_kernel(tmp_path, layout.upper, layout.lowers, found, options=("redirect_dir=on",))


def test_metacopy_files_are_changed_and_renamed_ones_added(tmp_path):
    """With metacopy=on a chmod copies only metadata up: the upper file's data stays
    below, the path is changed. A renamed metacopy file gets a redirect to its data:
    the new name is added (with the old name's data), the old one deleted."""
    layout = apply(tmp_path, "kernel", {"l1": [("f", "file", b"data f"), ("g", "file", b"data g"),
                                               ("d/h", "file", b"data h")]},
                   [O("chmod", path=b"f", mode=0o600), O("chmod", path=b"g", mode=0o600),
                    O("rename", src=b"g", dst=b"d/g2"), O("chown", path=b"d/h", uid=5, gid=5)],
                   options=("metacopy=on",))
    for name in ("f", "d/g2", "d/h"):
        assert upper_xattr(layout, name, "trusted.overlay.metacopy") is not None, name
    assert upper_xattr(layout, "d/g2", "trusted.overlay.redirect") == b"/g"
    found = changes(layout.upper, layout.lowers)
    assert found == [Change("changed", "d"), Change("added", "d/g2"), Change("changed", "d/h"),
                     Change("changed", "f"), Change("deleted", "g")]
    assert_describes_kernel(tmp_path, layout.upper, layout.lowers, found, options=("metacopy=on",))


def test_kernel_format_layers_have_no_oci_whiteouts(tmp_path):
    """In kernel-format layers a file named .wh.victim is a file: it is added, and
    victim is not deleted; a .wh. file below is a file of the parent's view too."""
    found = diff_and_check(tmp_path, {"l2": [("victim", "file"), ("old", "file"), ("d/x", "file")],
                                      "l1": [(".wh.old", "file"), ("d/.wh..wh..opq", "file")],
                                      "layer": [(".wh.victim", "file"), ("old", "file", b"new"), ("d/x", "file")]},
                           [Change("added", ".wh.victim"), Change("changed", "d"), Change("changed", "d/x"),
                            Change("changed", "old")])
    store = LayerStore(tmp_path / "store", durable=False, xattr_namespace="trusted")
    for src, layer_id, parent in (("l2", "base", None), ("l1", "mid", "base"), ("layer", "top", "mid")):
        diff = store.create(layer_id, parent).diff
        os.rmdir(diff)
        stackgen.copy_layer(tmp_path / src, diff)
    assert store.diff("top") == found


def test_damaged_entries_are_reported_and_nothing_below_them(tmp_path):
    """A directory with an invalid redirect (EINVAL) or a metacopy file without data
    (EIO) is in the merged view, damaged: it is reported, and nothing the layer holds
    under it, which the merged view cannot show either."""
    diff_and_check(tmp_path, {
        "l1": [("bad/below", "file"), ("meta", "file", b"data")],
        "layer": [("bad/x", "file"), ("bad", "xattr", "X.redirect", "a/b"), ("nodata", "sparse", 4),
                  ("nodata", "xattr", "X.metacopy", ""), ("meta", "sparse", 4), ("meta", "xattr", "X.metacopy", "")],
    }, [Change("changed", "bad"), Change("changed", "meta"), Change("added", "nodata")], options=("metacopy=on",))


def test_redirects_in_a_dir_with_nothing_below(tmp_path):
    """In a new (or opaque) directory a relative redirect, even an invalid one, finds
    no lower directory to look in and changes nothing; an absolute one starts again
    from the root and shows what is there."""
    diff_and_check(tmp_path, {
        "l1": [("src/below", "file"), ("op/old", "file")],
        "layer": [("new/rel/y", "file"), ("new/rel", "xattr", "X.redirect", "src"), ("new/bad", "dir"),
                  ("new/bad", "xattr", "X.redirect", ".."), ("new/abs/z", "file"),
                  ("new/abs", "xattr", "X.redirect", "/src"), ("op/rel", "dir"), ("op/rel", "xattr", "X.redirect", "old"),
                  ("op", "xattr", "X.opaque", "y")],
    }, [Change("added", "new"), Change("added", "new/abs", opaque=True), Change("added", "new/abs/below"),
        Change("added", "new/abs/z"), Change("added", "new/bad"), Change("added", "new/rel"),
        Change("added", "new/rel/y"), Change("changed", "op", opaque=True), Change("deleted", "op/old"),
        Change("added", "op/rel")])


# ---------------------------------------------------------------------------
# Random layers and random changes, against the kernel
# ---------------------------------------------------------------------------

#: Random layer stacks per kind, and random operation sequences per mount option set.
N_RANDOM_STACKS = 16
N_RANDOM_SEQUENCES = 20

#: kind -> (stackgen.make_stack keywords, mount options, changes() keywords). The
#: layer is the top lower of a stack without an upper (so it may hold directory
#: redirects, invalid ones too, metacopy files, user.* forms), or the upper.
RANDOM_KINDS = {
    "lowers": ({"upper": False}, (), {}),
    "metacopy": ({"upper": False, "metacopy": True, "redirect_follow": True}, ("metacopy=on",), {}),
    "user": ({"upper": False, "xattr_ns": "user", "redirect_follow": False}, ("userxattr",),
             {"xattr_namespace": "user"}),
    "upper": ({"upper": True}, (), {}),
}


def random_layers(root, kind, seed):
    """(layer, lowers) of the random stack (kind, seed) built under *root*."""
    build, _, _ = RANDOM_KINDS[kind]
    lowers, upper, _ = stackgen.make_stack(os.path.join(root, "stack"), seed, 2 + seed % 4, **build)
    return (upper, lowers) if upper else (lowers[0], lowers[1:])


@pytest.mark.parametrize("kind,seed", [(k, s) for k in RANDOM_KINDS for s in range(N_RANDOM_STACKS)])
def test_random_layers(tmp_path, kind, seed):
    layer, lowers = random_layers(tmp_path, kind, seed)
    _, options, kwargs = RANDOM_KINDS[kind]
    found = changes(layer, lowers, **kwargs)
    assert_describes_kernel(tmp_path, layer, lowers, found, options=options, context="%s seed %d" % (kind, seed))


@pytest.mark.parametrize("kind,seed", [("upper", s) for s in range(0, N_RANDOM_STACKS, 2)]
                         + [("user", s) for s in range(1, N_RANDOM_STACKS, 3)])
def test_random_layers_in_oci_form_give_the_same_diff(tmp_path, kind, seed):
    """The OCI form of the same layers (.wh.NAME, .wh..wh..opq) gives the same diff."""
    layer, lowers = random_layers(tmp_path, kind, seed)
    kwargs = RANDOM_KINDS[kind][2]
    converted = stackgen.to_oci([layer, *lowers], os.path.join(tmp_path, "oci"),
                                xattr_ns=kwargs.get("xattr_namespace", "trusted"))
    want = changes(layer, lowers, **kwargs)
    assert want and changes(converted[0], converted[1:], whiteouts="oci", **kwargs) == want
    assert changes(converted[0], converted[1:], whiteouts="auto", **kwargs) == want


#: Mount options of the kernel that applies the operations (and of the read-only
#: mounts that check the diff), and the seeds used with them.
SEQUENCE_OPTIONS = {"default": ((), 7000), "redirect_dir": (("redirect_dir=on",), 7100),
                    "metacopy": (("metacopy=on",), 7200)}


def dir_renames(seed, view, count):
    """*count* renames of random directories of *view* to fresh names in random
    directories (some fail: into themselves, EXDEV without redirect_dir...)."""
    rng = random.Random("diff-renames:%d" % seed)
    dirs = sorted(os.fsencode(p) for p, rec in view["paths"].items() if p and rec["lstat"].get("type") == "dir")
    ops = []
    for _ in range(count if dirs else 0):
        parent = rng.choice([b""] + dirs)
        name = rng.choice(write_ops.FRESH_NAMES)
        ops.append(O("rename", src=rng.choice(dirs), dst=parent + b"/" + name if parent else name))
    return ops


@pytest.mark.parametrize("options,seed", [(o, s) for o in SEQUENCE_OPTIONS for s in range(N_RANDOM_SEQUENCES)])
def test_random_sequences_through_the_kernel(tmp_path, options, seed):
    """A random stack changed through a kernel mount (with redirect_dir=on or
    metacopy=on, or neither) by two rounds of random operations (write_ops: every
    kind of change), each round ending with renames of random directories, so that
    the second round also changes what the first moved; then its upper is diffed."""
    mount_options, first_seed = SEQUENCE_OPTIONS[options]
    seed += first_seed
    case = write_ops.random_case(seed)
    layout = write_ops.build_random(tmp_path, seed)
    done = []
    for round_seed in (seed, seed + 10**6):
        view = write_ops.initial_view(tmp_path, layout)
        ops = write_ops.make_ops(round_seed, view, case["n_ops"], layers=layout.layers) + dir_renames(round_seed, view, 3)
        outcomes = write_ops.apply_kernel(layout.lowers, layout.upper, layout.work, ops, umask=case["umask"],
                                          options=mount_options)["outcomes"]
        done += ["%s -> %s" % (write_ops.format_op(op), out) for op, out in zip(ops, outcomes)]
    found = changes(layout.upper, layout.lowers)
    assert_describes_kernel(tmp_path, layout.upper, layout.lowers, found, options=mount_options,
                            context="%s seed %d after:\n    %s" % (options, seed, "\n    ".join(done)))


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
    os.mkdir(tmp_path / "work")
    st = overlayfs.Stack(lowers, layer, str(tmp_path / "work"))
    st.close()
    with pytest.raises(ValueError, match="closed"):
        st.diff()


def test_stack_diff_reads_the_upper_in_the_stacks_whiteout_form(tmp_path):
    """Stack.diff reads the upper as the Stack does: with whiteouts="oci" the .wh.NAME
    and .wh..wh..opq files its changes left are the deletions and the opaque dir the
    kernel form of the same changes gives; with "auto" a plain file named .wh.victim
    hides victim, as in the Stack's view; with "kernel" (the default) it is a file."""
    spec = {"l1": [("a", "file"), ("d/x", "file"), ("d/y", "file"), ("e/z", "file")]}
    ops = [O("unlink", path=b"a"), O("unlink", path=b"d/x"), O("unlink", path=b"e/z"), O("rmdir", path=b"e"),
           O("mkdir", path=b"e"), O("symlink", target=b"t", path=b"e/new")]
    want = [Change("deleted", "a"), Change("changed", "d"), Change("deleted", "d/x"),
            Change("changed", "e", opaque=True), Change("added", "e/new"), Change("deleted", "e/z")]
    by_form, uppers = {}, {}
    for form in ("kernel", "oci", "auto"):
        layout = apply(tmp_path / form, "stack", spec, ops, stack_kwargs={"whiteouts": form})
        with overlayfs.Stack(layout.lowers, layout.upper, layout.work, whiteouts=form) as st:
            by_form[form] = st.diff()
        uppers[form] = sorted(os.fsdecode(os.path.relpath(os.path.join(d, n), layout.upper))
                              for d, dirs, files in os.walk(layout.upper) for n in dirs + files)
        if form == "kernel":
            assert_describes_kernel(tmp_path / form, layout.upper, layout.lowers, by_form[form])
    assert uppers["oci"] == [".wh.a", "d", "d/.wh.x", "e", "e/.wh..wh..opq", "e/new"]
    assert uppers["kernel"] == uppers["auto"] == ["a", "d", "d/x", "e", "e/new"]
    assert by_form == {"kernel": want, "oci": want, "auto": want}

    layer, lowers = build(tmp_path / "plain", {"l1": [("victim", "file")], "layer": [(".wh.victim", "file")],
                                               "work": []})
    for form, diff in (("auto", [Change("deleted", "victim")]), ("kernel", [Change("added", ".wh.victim")])):
        with overlayfs.Stack(lowers, layer, str(tmp_path / "plain" / "work"), whiteouts=form) as st:
            assert st.diff() == diff
            assert st.exists("victim") is (form == "kernel")


def test_stack_diff_follows_metacopy_data_into_data_layers(tmp_path):
    """A layer's metacopy file over a lower metacopy file whose data is in a
    data-only layer (reached by the lower one's absolute redirect) is changed; both
    views read the data layers."""
    data = b"object data"
    layer, lowers = build(tmp_path, {
        "d1": [("objects/abc", "file", data)],
        "l1": [("f", "sparse", len(data)), ("f", "xattr", "X.metacopy", ""), ("f", "xattr", "X.redirect", "/objects/abc")],
        "layer": [("f", "sparse", len(data)), ("f", "xattr", "X.metacopy", ""), ("f", "mode", 0o600)]},
        nlowers=1)
    data_layers = [str(tmp_path / "d1")]
    work = tmp_path / "work"
    work.mkdir()
    with overlayfs.Stack(lowers, layer, str(work), data_layers=data_layers, metacopy=True) as st:
        with st.open("f") as fh:
            assert fh.read() == data
        found = st.diff()
    assert found == changes(layer, lowers, data_layers=data_layers) == [Change("changed", "f")]
    assert_describes_kernel(tmp_path, layer, lowers, found, data_layers=data_layers)


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
