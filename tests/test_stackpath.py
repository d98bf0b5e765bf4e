"""Stack.path(): overlayfs.path.StackPath, pathlib-style and a Traversable.

Parity: iterdir, glob, rglob, read_bytes/read_text, stat/lstat, the is_*
tests, exists, readlink and resolve of every path of random stacks (and
of odd extra paths) equal pathlib.Path's over a kernel mount of the same
layers (chrooted, so "/" is the union root).  Then the Traversable protocol
through importlib.resources, the pure parts, the write side and pickling.
"""

from __future__ import annotations

import errno
import importlib.resources
import importlib.resources.abc
import os
import pickle
import stat

import iface_views
import kernel
import pytest
import stackgen

import overlayfs
from overlayfs.path import StackPath

FOLLOW = kernel.kernel_redirect_follow()
SEEDS = [(s, s % 3 == 2) for s in range(8)]


def union_paths(st) -> list[str]:
    out = []
    for top, dirs, files in st.walk():
        out.extend(f"{top}/{n}" if top else n for n in dirs + files)
    return out


@pytest.mark.usefixtures("require_kernel")
@pytest.mark.parametrize(("seed", "upper"), SEEDS, ids=[f"seed{s}-{'upper' if u else 'ro'}" for s, u in SEEDS])
def test_random_stack_matches_pathlib_over_mount(tmp_path, seed, upper):
    lowers, up, work = stackgen.make_stack(str(tmp_path / "stack"), 100 + seed, 2 + seed % 4, upper=upper,
                                           redirect_follow=FOLLOW)
    with overlayfs.Stack(lowers, up, work, redirect_follow=FOLLOW) as st:
        paths = [""] + union_paths(st)
    paths += [os.fsdecode(p) for p in stackgen.extra_paths(seed, [up, *lowers]) if not p.startswith(b"/")]
    paths = list(dict.fromkeys(paths))
    kview = kernel.decode_json(kernel.run_in_mount(
        iface_views.kernel_path_worker, {"paths": paths}, lowers, up, work))
    with overlayfs.Stack(lowers, up, work, redirect_follow=FOLLOW) as st:
        sview = kernel.decode_json(kernel.encode_json(iface_views.path_view(st.path(), paths)))
    assert len(paths) >= 5
    problems = iface_views.diff_views(kview, sview)
    assert not problems, "\n".join(problems)


@pytest.fixture
def st(tmp_path):
    l1, l2, upper, work = (tmp_path / n for n in ("l1", "l2", "upper", "work"))
    for d in (l1, l2, upper, work):
        d.mkdir()
    (l2 / "pkg" / "data").mkdir(parents=True)
    (l2 / "pkg" / "data" / "table.csv").write_bytes(b"a,b\n1,2\n")
    (l2 / "pkg" / "README.tar.gz").write_bytes(b"\x1f\x8b")
    (l2 / "pkg" / "old").write_text("gone")
    (l1 / "pkg").mkdir()
    (l1 / "pkg" / "text.txt").write_text("h\u00e9llo\n", encoding="utf-8")
    os.mknod(l1 / "pkg" / "old", stat.S_IFCHR, 0)
    os.symlink("data/table.csv", l1 / "pkg" / "link")
    os.symlink("/pkg/data", l1 / "abs")
    os.symlink("../../../pkg", l1 / "pkg" / "up")
    os.symlink("loop", l1 / "loop")
    with overlayfs.Stack([str(l1), str(l2)], str(upper), str(work)) as s:
        yield s


def test_traversable_through_importlib_resources(st):
    root = st.path()
    assert isinstance(root, importlib.resources.abc.Traversable)
    pkg = root / "pkg"
    assert pkg.is_dir() and not pkg.is_file()
    assert sorted(c.name for c in pkg.iterdir()) == ["README.tar.gz", "data", "link", "text.txt", "up"]
    f = pkg.joinpath("data", "table.csv")
    assert f.read_bytes() == b"a,b\n1,2\n"
    assert pkg.joinpath("data/table.csv") == f
    assert (pkg / "text.txt").read_text(encoding="utf-8") == "h\u00e9llo\n"
    with (pkg / "text.txt").open("r", encoding="utf-8") as fh:
        assert fh.read() == "h\u00e9llo\n" and fh.name == "pkg/text.txt"
    with (pkg / "text.txt").open("rb") as fh:
        assert fh.read() == "h\u00e9llo\n".encode()
    # as_file: a Traversable that is not a host path is copied to a temp file
    with importlib.resources.as_file(f) as host:
        assert host.read_bytes() == b"a,b\n1,2\n" and host.name.endswith("table.csv")
        assert os.path.isfile(host)
    assert not os.path.exists(host)
    assert not (pkg / "old").exists()  # whited out


def test_pure_parts_and_identity(st):
    p = st.path("pkg", "README.tar.gz")
    assert str(p) == "/pkg/README.tar.gz" and p.as_posix() == str(p)
    assert p.name == "README.tar.gz" and p.stem == "README.tar" and p.suffix == ".gz"
    assert p.suffixes == [".tar", ".gz"] and p.parts == ("/", "pkg", "README.tar.gz")
    assert p.parent == st.path("pkg") and list(p.parents) == [st.path("pkg"), st.path()]
    assert st.path().parent == st.path() and st.path().name == ""
    assert p.match("*.gz") and p.match("pkg/*.tar.gz") and not p.match("*.txt")
    assert st.path("a", "/b") == st.path("b")  # an absolute part starts again at the root
    assert p.with_name("x") == st.path("pkg/x") and p.with_suffix(".bz2").name == "README.tar.bz2"
    assert p.relative_to(st.path("pkg")).as_posix() == "README.tar.gz"
    assert p.is_absolute()
    assert hash(p) == hash(st.path("pkg/README.tar.gz")) and len({p, st.path("pkg", "README.tar.gz")}) == 1
    assert repr(p).startswith("StackPath(<overlayfs.Stack") and "'/pkg/README.tar.gz'" in repr(p)
    assert p.stack is st
    with pytest.raises(TypeError):  # no __fspath__: not a host path
        os.fspath(p)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        open(p)  # type: ignore[call-overload]


def test_links_resolve_inside_the_union(st):
    root = st.path()
    link = root / "pkg" / "link"
    assert link.is_symlink() and link.is_file() and link.readlink() == root / "pkg" / "data" / "table.csv"
    assert link.resolve() == root / "pkg" / "data" / "table.csv"
    assert (root / "abs" / "table.csv").resolve() == root / "pkg" / "data" / "table.csv"
    assert (root / "pkg" / "up").resolve() == root / "pkg"  # ".." stops at the union root
    assert (root / "missing" / ".." / "pkg").resolve() == root / "pkg"
    with pytest.raises(FileNotFoundError):
        (root / "missing").resolve(strict=True)
    with pytest.raises(OSError) as e:
        (root / "loop").resolve()
    assert e.value.errno == errno.ELOOP
    assert (root / "pkg" / "link").stat().st_size == 8 and stat.S_ISLNK((root / "pkg" / "link").lstat().st_mode)
    # "**" does not enter symlinked directories (abs -> /pkg/data), as pathlib
    assert [str(p) for p in root.rglob("*.csv")] == ["/pkg/data/table.csv"]
    assert [str(p) for p in root.glob("abs/*")] == ["/abs/table.csv"]
    assert [str(p) for p in root.glob("pkg/data/*")] == ["/pkg/data/table.csv"]
    assert sorted(str(p) for p in root.glob("*/")) == ["/abs", "/pkg"]
    with pytest.raises(ValueError):
        list(root.glob(""))
    with pytest.raises(NotImplementedError):
        list(root.glob("/pkg"))


def test_write_side(st):
    root = st.path()
    d = root / "new" / "deeper"
    d.mkdir(parents=True)
    d.mkdir(exist_ok=True)
    with pytest.raises(FileExistsError):
        d.mkdir()
    f = d / "t.txt"
    assert f.write_text("abc", encoding="ascii") == 3
    assert f.read_text() == "abc"
    assert (d / "b").write_bytes(b"\0\1") == 2 and (d / "b").read_bytes() == b"\0\1"
    g = f.rename(d / "u.txt")
    assert g == d / "u.txt" and not f.exists() and g.read_text() == "abc"
    assert g.replace("new/v.txt") == root / "new" / "v.txt"
    (root / "new" / "touched").touch()
    with pytest.raises(FileExistsError):
        (root / "new" / "touched").touch(exist_ok=False)
    (root / "pkg" / "text.txt").touch()  # copy-up of a lower file: times only
    assert os.path.exists(os.path.join(st.upper, "pkg", "text.txt"))
    (root / "pkg" / "data" / "table.csv").unlink()
    (root / "pkg" / "data" / "table.csv").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "pkg" / "data" / "table.csv").unlink()
    (root / "pkg" / "data").rmdir()
    assert not (root / "pkg" / "data").exists()
    with overlayfs.Stack(list(st.lowers)) as ro:
        with pytest.raises(OSError) as e:
            ro.path("x").write_text("no")
        assert e.value.errno == errno.EROFS


def test_pickles_with_its_stack(st):
    p = st.path("pkg", "text.txt")
    q = pickle.loads(pickle.dumps(p))
    try:
        assert isinstance(q, StackPath) and str(q) == "/pkg/text.txt" and q.read_bytes() == p.read_bytes()
        assert q.stack is not st and q != p  # another Stack object
    finally:
        q.stack.close()
