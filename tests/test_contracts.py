"""API contract of the C-backed package (psutil test_contracts style):
__all__, return types, str/bytes in -> out, the .pyi stub, pickling."""

import ast
import collections.abc
import copy
import inspect
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys

import pytest
import util

import overlayfs

Stack = overlayfs.Stack
REPO = pathlib.Path(__file__).resolve().parent.parent
STUB = REPO / "src" / "overlayfs" / "_core.pyi"
STACK_PY = REPO / "src" / "overlayfs" / "stack.py"
#: Stack(...)'s parameters, in order: (name, kind, default)
STACK_PARAMS = [
    ("lowers", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
    ("upper", "POSITIONAL_OR_KEYWORD", None),
    ("work", "POSITIONAL_OR_KEYWORD", None),
    ("xattr_namespace", "KEYWORD_ONLY", "trusted"),
    ("whiteouts", "KEYWORD_ONLY", "kernel"),
    ("cache", "KEYWORD_ONLY", True),
    ("data_layers", "KEYWORD_ONLY", ()),
    ("metacopy", "KEYWORD_ONLY", False),
    ("redirect_follow", "KEYWORD_ONLY", True),
    ("redirect_dir", "KEYWORD_ONLY", False),
    ("cache_max_bytes", "KEYWORD_ONLY", None),
    ("volatile", "KEYWORD_ONLY", False),
    ("devices", "KEYWORD_ONLY", False),
]


@pytest.fixture
def st(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    f = util.mkfile(L.p(1, "f"), "one")
    os.setxattr(f, "user.k", b"v")
    util.mkfile(L.p(2, "d/x"), "x")
    util.symlink(L.p(1, "lnk"), "f")
    with L.stack(Stack) as s:
        yield s


def test_all():
    assert set(overlayfs.__all__) >= {"Stack", "Entry", "CacheInfo", "CopyUp"}
    for name in overlayfs.__all__:
        assert getattr(overlayfs, name) is not None
    ns = {}
    exec("from overlayfs import *", ns)
    assert set(overlayfs.__all__) <= set(ns)
    assert isinstance(overlayfs.__version__, str)


def test_return_types(st):
    assert type(st.lstat("f")) is os.stat_result
    assert type(st.stat("lnk")) is os.stat_result
    for pred in (st.exists, st.lexists, st.isdir, st.isfile, st.islink):
        assert pred("f") in (True, False) and type(pred("f")) is bool
        assert type(pred("nope")) is bool
    assert type(st.layer_of("f")) is int
    assert type(st.listdir()) is list
    assert type(st.readlink("lnk")) is str
    assert type(st.resolve("f")) is str
    assert st.resolve("nope") is None
    assert type(st.getxattr("f", "user.k")) is bytes
    assert type(st.listxattr("f")) is list
    assert type(st.cache_info()) is overlayfs.CacheInfo
    assert st.invalidate() is None
    assert st.invalidate("f") is None
    it = st.scandir()
    assert hasattr(it, "__enter__") and hasattr(it, "__exit__") and hasattr(it, "close")
    assert iter(it) is it
    e = next(it)
    assert type(e) is overlayfs.Entry
    assert type(e.layer) is int and type(e.inode()) is int
    assert type(e.is_dir()) is bool and type(e.is_file()) is bool and type(e.is_symlink()) is bool
    it.close()
    w = st.walk()
    assert isinstance(w, collections.abc.Generator)
    top, dirs, files = next(w)
    assert (type(top), type(dirs), type(files)) == (str, list, list)
    with st.open("f") as f:
        assert isinstance(f, io.BufferedReader)
        assert type(f.read()) is bytes
    with st.open("f", "r") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert f.read() == "one"
    with st.open("f", "rb", buffering=0) as f:
        assert isinstance(f, io.FileIO)
    fd = st.os_open("f")
    assert type(fd) is int
    os.close(fd)
    assert type(st.layers) is tuple and st.layers[0] is not None
    assert type(st.lowers) is tuple and type(st.data_layers) is tuple
    assert st.whiteouts == "kernel" and st.xattr_namespace == "trusted"
    assert st.closed is False


def test_layers_without_upper(tmp_path):
    L = util.Layers(tmp_path, nlowers=3, ndata=1)
    with L.stack(Stack) as s:
        assert s.layers == (None, L.p(1), L.p(2), L.p(3), L.p(4))
        assert s.upper is None and s.work is None


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_str_bytes_in_out(st, kind):
    conv = {"str": str, "bytes": os.fsencode, "pathlike": pathlib.PurePosixPath}[kind]
    out = bytes if kind == "bytes" else str
    assert all(type(n) is out for n in st.listdir(conv("d")))
    assert type(st.readlink(conv("lnk"))) is out
    assert type(st.resolve(conv("f"))) is out
    assert type(st.resolve(conv("f"), follow_symlinks=True, data=True)) is out
    for e in st.scandir(conv("d")):
        assert type(e.name) is out and type(e.path) is out
        assert type(os.fspath(e)) is out
    if kind != "pathlike":   # see test_readdir.test_walk_pathlike_top
        for top, dirs, files in st.walk(conv("")):
            assert all(type(x) is out for x in [top] + dirs + files)
    # listxattr names are always str, values always bytes
    assert all(type(n) is str for n in st.listxattr(conv("f")))
    assert type(st.getxattr(conv("f"), "user.k")) is bytes


def test_not_picklable(st):
    """Entries and scandir iterators do not pickle (a Stack does, as its
    arguments: tests/test_pickle.py)."""
    e = next(iter(st.scandir()))
    it = st.scandir()
    for obj in (e, it):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(obj, proto)
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)


def test_cacheinfo_is_a_namedtuple():
    ci = overlayfs.CacheInfo(1, 2, 3, 4, 5, 6, 7, 8)
    assert ci.hits == 1 and ci.flushes == 8
    assert ci._asdict()["max_bytes"] == 6


def test_entry_not_instantiable():
    """Like os.DirEntry (style guide 4 and 7): Entry objects only come from scandir."""
    with pytest.raises(TypeError):
        overlayfs.Entry()


def test_repr_of_uninitialised_stack():
    s = Stack.__new__(Stack)
    assert "Stack" in repr(s)
    assert s.closed


def test_reinit_refused(st):
    """Calling __init__ again is a TypeError naming the problem; the open stack
    is left as it was."""
    with pytest.raises(TypeError, match="cannot be re-initialized"):
        st.__init__(st.lowers)
    assert not st.closed
    st.close()
    with pytest.raises(TypeError, match="cannot be re-initialized"):
        st.__init__(st.lowers)


def test_uninitialized_objects_say_so():
    with pytest.raises(ValueError, match="__init__.. was not called"):
        Stack.__new__(Stack).lstat("x")
    with pytest.raises(ValueError, match="entries come from Stack.scandir"):
        overlayfs.Entry.__new__(overlayfs.Entry).stat()


def test_methods_check_their_self():
    """An unbound method of a compiled type called with the wrong self is a
    TypeError, as for any Python method, never a crash; the Python methods of
    overlayfs.Stack fail with an exception too (they reach self through its
    methods).  Run in a child: a crash would kill pytest."""
    code = """if True:
        import overlayfs, inspect
        from overlayfs import _core
        checked = 0
        for cls in (overlayfs.Stack, _core._Stack, overlayfs.Entry, _core.ScandirIterator):
            compiled = cls is not overlayfs.Stack
            for name, fn in vars(cls).items():
                if not callable(fn) or name in ("__new__", "__init_subclass__",
                                                "__subclasshook__", "__class_getitem__"):
                    continue
                if isinstance(fn, (classmethod, staticmethod)):
                    continue
                for bad in (None, 0, "f", object()):
                    for args in ((), ("f",), ("f", "g"), ("f", 0, 0)):
                        try:
                            r = fn(bad, *args)
                            if inspect.isgenerator(r):
                                next(r)
                        except TypeError:
                            checked += 1
                        except Exception as e:
                            if compiled:
                                raise SystemExit(f"{cls.__name__}.{name}({bad!r}, ...): {e!r}")
                        else:
                            raise SystemExit(f"{cls.__name__}.{name}({bad!r}, ...) ran")
        print(checked)
    """
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr or res.stdout
    assert int(res.stdout) > 400


def test_stack_is_the_python_subclass():
    """overlayfs.Stack is a plain Python class over the binding's _Stack: it
    adds no __dict__, only the options it was opened with and whether it is
    an unpickled copy (for pickling), and every Stack the package hands out
    is one."""
    from overlayfs import _core
    assert Stack.__mro__[1] is _core._Stack
    assert Stack.__module__ == "overlayfs.stack"
    assert Stack.__slots__ == ("_options", "_unpickled")
    assert not hasattr(_core, "Stack")
    assert all(not hasattr(_core._Stack, n) for n in vars(Stack) if not n.startswith("__"))
    # the warm calls are the compiled ones, inherited unchanged
    for name in ("lstat", "stat", "resolve", "listdir", "scandir", "open", "exists", "copy_up"):
        assert getattr(Stack, name) is getattr(_core._Stack, name), name


def test_signature():
    """help(overlayfs.Stack) and inspect.signature show Stack's parameters."""
    sig = inspect.signature(Stack)
    got = [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]
    assert got == STACK_PARAMS
    import pydoc
    text = pydoc.render_doc(Stack, renderer=pydoc.plaintext)
    line = next(x for x in text.splitlines() if x.startswith(" |  Stack("))
    assert re.findall(r"(?:\(|, )(?:\*, )?(\w+):", line) == [n for n, _, _ in STACK_PARAMS]
    assert "An OverlayFS view" in text and "copy_up" in text and "walk" in text


# -- the stub --------------------------------------------------------------------------


def _stub_classes(path=STUB):
    tree = ast.parse(path.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = {}
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.setdefault(item.name, []).append(item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = [item]
            classes[node.name] = members
    return classes


def _params(fn: ast.FunctionDef):
    a = fn.args
    pos = [x.arg for x in a.posonlyargs + a.args]
    kwonly = [x.arg for x in a.kwonlyargs]
    return pos, kwonly


def test_stub_exists_and_is_shipped():
    assert STUB.exists()
    assert (REPO / "src" / "overlayfs" / "py.typed").exists()
    installed = pathlib.Path(overlayfs.__file__).parent
    if installed.resolve() != STUB.parent.resolve():
        assert (installed / "_core.pyi").exists(), "the stub is not installed with the package"
        assert (installed / "py.typed").exists()


def _check_members(cls, stub, runtime, public):
    """Every public name of runtime is in stub and the reverse; each method's
    parameters (positional and keyword-only names) match."""
    missing = public - set(stub)
    assert not missing, f"in {cls} but not in the stub: {sorted(missing)}"
    extra = {n for n in stub if not n.startswith("_")} - public
    assert not extra, f"in the stub but not in {cls}: {sorted(extra)}"
    checked = 0
    for name, defs in stub.items():
        if (name.startswith("_") and name != "__init__") or not isinstance(defs[0], ast.FunctionDef):
            continue
        fn = getattr(runtime, name)
        if isinstance(fn, property) or type(fn).__name__ == "getset_descriptor":
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        rt_pos = [p.name for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        rt_kw = [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]
        if name == "__init__" and any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
            continue   # a compiled __init__ shows (self, /, *args, **kwargs)
        for d in defs:
            if any(isinstance(x, ast.Name) and x.id == "property" for x in d.decorator_list):
                break
            pos, kw = _params(d)
            if any(isinstance(x, ast.Name) and x.id in ("classmethod", "staticmethod")
                   for x in d.decorator_list) and pos[:1] == ["cls"]:
                pos = pos[1:]      # inspect.signature of a bound classmethod drops cls
            elif rt_pos[:1] != ["self"] and pos[:1] == ["self"]:
                pos = pos[1:]
            assert pos == rt_pos, f"{cls}.{name}: stub {pos} vs runtime {rt_pos}"
            assert kw == rt_kw, f"{cls}.{name}: stub {kw} vs runtime {rt_kw}"
            checked += 1
    return checked


@pytest.mark.parametrize("cls", ["_Stack", "Entry", "CacheInfo", "CopyUp"])
def test_stub_matches_runtime(cls):
    """_core.pyi describes the compiled module _core."""
    from overlayfs import _core
    classes = _stub_classes()
    assert cls in classes, f"{cls} missing from the stub"
    stub = classes[cls]
    runtime = getattr(_core, cls)
    public = {n for n in dir(runtime) if not n.startswith("_")}
    if cls in ("CacheInfo", "CopyUp"):
        assert list(runtime._fields) == list(stub)
        assert getattr(overlayfs, cls) is runtime
        return
    assert _check_members(cls, stub, runtime, public) > 0


def test_stub_has_no_stack():
    """The public Stack is not in the binding's stub: overlayfs.stack is
    annotated inline (py.typed), and describing it twice would let the two
    drift."""
    assert "Stack" not in _stub_classes()


def test_public_stack_matches_stub_and_module():
    """overlayfs.Stack is exactly _core.pyi's _Stack plus what stack.py
    defines: every public name is declared in one of them (not both), and
    the signatures match the runtime."""
    from overlayfs import _core
    base = _stub_classes()["_Stack"]
    sub = _stub_classes(STACK_PY)["Stack"]
    both = {n for n in set(base) & set(sub) if not n.startswith("_")}
    assert not both, f"declared in both _core.pyi and stack.py: {sorted(both)}"
    public = {n for n in dir(Stack) if not n.startswith("_")}
    base_public = {n for n in dir(_core._Stack) if not n.startswith("_")}
    assert _check_members("_Stack", base, _core._Stack, base_public) > 0
    assert _check_members("Stack", sub, Stack, public - base_public) > 0
    assert public == base_public | {n for n in sub if not n.startswith("_")}


def test_stub_init_signature():
    """The base's __init__ in the stub takes what Stack.__init__ passes on."""
    (init,) = _stub_classes()["_Stack"]["__init__"]
    pos, kw = _params(init)
    assert pos == ["self", "lowers", "upper", "work"]
    assert [(a.arg, "POSITIONAL_OR_KEYWORD") for a in init.args.args[1:]] + \
        [(a.arg, "KEYWORD_ONLY") for a in init.args.kwonlyargs] == \
        [(n, k) for n, k, _ in STACK_PARAMS]
    defaults = [ast.literal_eval(d) for d in init.args.defaults] + \
        [ast.literal_eval(d) for d in init.args.kw_defaults]
    assert defaults == [d for _, _, d in STACK_PARAMS if d is not inspect.Parameter.empty]


def test_unknown_keyword_rejected(tmp_path):
    """volatile= travels through **options (a C keyword for Cython): any
    other keyword is still a TypeError naming it."""
    with pytest.raises(TypeError, match="bogus"):
        overlayfs.Stack([str(tmp_path)], bogus=1)
