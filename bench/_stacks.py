"""Layer stacks for the benchmarks: built on disk, with the merged view known.

A stack is planned first -- for each layer, which entries it holds
(directories, opaque directories, files, symlinks, whiteouts) -- together
with the merged tree the overlay must show, and only then written out.  Each
stack directory holds:

    <root>/0 .. <root>/N-1   the layers, bottom-most first ("0" is the lowest),
                             so ``lowerdir=N-1:...:1:0`` after chdir(<root>)
                             stays short enough for 500 layers;
    <root>/plain             the merged tree as one ordinary directory (the
                             ext4 "floor" baseline);
    <root>/empty             an empty layer, used where a tool needs >= 2 lowers.

Two kinds of stack:

``build_synthetic(base, nlayers)``
    The same merged tree (default 3000 files in 200 directories, up to six
    levels deep, a few symlinks) for every layer count, so per-path costs are
    comparable from 1 to 500 layers.  How it is spread over the layers depends
    on N: 40% of files come from the bottom layer and the rest from random
    layers; 20% also have an older, shadowed copy lower down; 10% extra files
    and a few whole directories are created in one layer and deleted by a
    whiteout (char 0:0) in a higher one; up to 8 directories are opaque
    (trusted.overlay.opaque=y) over stale content in the layers below.

``build_python_tree(base, nlayers)``
    This machine's /usr/lib/python3* (stdlib and dist-packages) split across
    N layers the way image layers split it: the stdlib over the bottom four,
    each dist-packages package in a random higher layer; 5% of files have an
    older copy below, 2% of files and a few __pycache__ directories are
    whited out above, and a few packages are "reinstalled" as opaque
    directories over stale copies.  Files are hard links to the originals
    (copied when that fails); nothing in /usr is ever modified.

Everything here is deterministic: the same arguments give the same stack.
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import random
import shutil
import stat
from collections.abc import Iterable

OPAQUE_XATTR = "trusted.overlay.opaque"
EMPTY_LAYER = "empty"  # an empty layer dir in every stack root

# Operations a layer can hold for one path (plan values).
DIR, OPAQUE, FILE, LINK, WHITEOUT = "dir", "opaque", "file", "link", "whiteout"


@dataclasses.dataclass
class BuiltStack:
    """A stack on disk and the merged view it must present."""

    name: str  # "synthetic-64", "python3-32"
    root: str  # directory holding the layer dirs
    nlayers: int
    plain: str  # the merged tree as a plain directory
    paths: list[str]  # every merged entry except the root, sorted
    dirs: list[str]  # merged directories, "" (the root) first
    kinds: dict[str, str]  # path -> "d", "f" or "l"
    stats: dict[str, int]  # counts: files, dirs, links, whiteouts, opaque, shadowed...

    @property
    def rel_layers(self) -> list[str]:
        """Layer names relative to root, top-most first."""
        return [str(i) for i in reversed(range(self.nlayers))]

    @property
    def layers(self) -> list[str]:
        """Absolute layer paths, top-most first (Stack's lowers)."""
        return [os.path.join(self.root, n) for n in self.rel_layers]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> BuiltStack:
        return cls(**d)


def save(stacks: Iterable[BuiltStack], path: str) -> None:
    with open(path, "w") as f:
        json.dump([s.to_json() for s in stacks], f)


def load(path: str) -> list[BuiltStack]:
    with open(path) as f:
        return [BuiltStack.from_json(d) for d in json.load(f)]


# -- planning -----------------------------------------------------------------


class _Plan:
    """What each layer holds and what the merged tree is.

    layers[b] maps a path to (op, payload), b = 0 the bottom layer.  payload
    is the file content (bytes), a host file to link (str), or a symlink
    target.  merged maps each visible path to (kind, payload) with the
    content the top-most copy carries.
    """

    def __init__(self, nlayers: int):
        self.nlayers = nlayers
        self.layers: list[dict[str, tuple[str, object]]] = [{} for _ in range(nlayers)]
        self.merged: dict[str, tuple[str, object]] = {}
        self.counts = {"whiteouts": 0, "opaque": 0, "shadowed": 0, "deleted": 0, "stale": 0}

    def put(self, layer: int, path: str, op: str, payload: object = None) -> None:
        self.layers[layer][path] = (op, payload)


def _parents(path: str) -> Iterable[str]:
    """The proper ancestors of a relative path, "" excluded, outermost first."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _write_layer(layer_dir: str, entries: dict[str, tuple[str, object]]) -> None:
    os.makedirs(layer_dir, exist_ok=True)
    made = {""}
    for path in sorted(entries):
        op, payload = entries[path]
        parent = path.rpartition("/")[0]
        if parent not in made:
            os.makedirs(os.path.join(layer_dir, parent), exist_ok=True)
            made.update(_parents(path))
        full = os.path.join(layer_dir, path)
        if op in (DIR, OPAQUE):
            os.makedirs(full, exist_ok=True)
            made.add(path)
            if op == OPAQUE:
                os.setxattr(full, OPAQUE_XATTR, b"y")
        elif op == FILE:
            if isinstance(payload, bytes):
                with open(full, "wb") as f:
                    f.write(payload)
            else:
                _link_or_copy(payload, full)
        elif op == LINK:
            os.symlink(payload, full)
        elif op == WHITEOUT:
            os.mknod(full, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:  # pragma: no cover
            raise ValueError(op)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
            raise
        shutil.copyfile(src, dst)


def _materialize(plan: _Plan, name: str, root: str) -> BuiltStack:
    os.makedirs(root)
    for b, entries in enumerate(plan.layers):
        _write_layer(os.path.join(root, str(b)), entries)
    os.mkdir(os.path.join(root, EMPTY_LAYER))
    plain = {p: ((FILE if k == "f" else LINK if k == "l" else DIR), payload)
             for p, (k, payload) in plan.merged.items()}
    _write_layer(os.path.join(root, "plain"), plain)

    kinds = {p: k for p, (k, _) in plan.merged.items()}
    paths = sorted(kinds)
    dirs = [""] + [p for p in paths if kinds[p] == "d"]
    stats = {
        "files": sum(k == "f" for k in kinds.values()),
        "dirs": len(dirs),
        "links": sum(k == "l" for k in kinds.values()),
        "layer_entries": sum(len(e) for e in plan.layers),
        **plan.counts,
    }
    return BuiltStack(name=name, root=root, nlayers=plan.nlayers,
                      plain=os.path.join(root, "plain"), paths=paths, dirs=dirs,
                      kinds=kinds, stats=stats)


# -- synthetic stacks -----------------------------------------------------------

_DIR_WORDS = ["lib", "core", "util", "net", "data", "api", "io", "plugins", "tests",
              "vendor", "config", "models", "views", "internal", "common", "tools"]
_FILE_WORDS = ["module", "handler", "index", "client", "server", "parser", "types",
               "helpers", "schema", "main", "errors", "codec", "store", "cache"]
_EXTS = [".py", ".py", ".py", ".pyc", ".json", ".txt", ".so", ".h", ".c", ".md"]


def _synthetic_tree(nfiles: int, ndirs: int, seed: int):
    """The merged tree: dirs (sorted, no root), files and symlinks."""
    rng = random.Random(seed)
    dirs = [""]
    depth = {"": 0}
    while len(dirs) < ndirs + 1:
        # The shallower of two random parents: bushy like real trees; depth <= 6.
        parent = min(rng.choice(dirs), rng.choice(dirs), key=depth.get)
        if depth[parent] >= 6:
            continue
        name = f"{rng.choice(_DIR_WORDS)}{rng.randrange(1000)}"
        path = f"{parent}/{name}" if parent else name
        if path in depth:
            continue
        dirs.append(path)
        depth[path] = depth[parent] + 1
    # A skewed number of files per directory: a few big ones, many small.
    weights = [rng.paretovariate(1.2) for _ in dirs]
    files: dict[str, int] = {}
    while len(files) < nfiles:
        d = rng.choices(dirs, weights)[0]
        name = f"{rng.choice(_FILE_WORDS)}_{rng.randrange(100000)}{rng.choice(_EXTS)}"
        path = f"{d}/{name}" if d else name
        if path not in depth and path not in files:
            files[path] = rng.randrange(0, 2048)
    links = {}
    for path in rng.sample(sorted(files), max(1, nfiles // 100)):
        d, _, name = path.rpartition("/")
        lpath = f"{d}/link-{name}" if d else f"link-{name}"
        if lpath not in files:
            links[lpath] = name
    return sorted(dirs[1:]), files, links


def build_synthetic(base: str, nlayers: int, *, nfiles: int = 3000, ndirs: int = 200,
                    seed: int = 1) -> BuiltStack:
    """A stack of nlayers layers whose merged view is the same tree for any N."""
    dirs, files, links = _synthetic_tree(nfiles, ndirs, seed)
    rng = random.Random(seed * 1000003 + nlayers)
    plan = _Plan(nlayers)
    top = nlayers - 1
    dirset = set(dirs)

    # Opaque directories: non-nested, not the root, each over stale layers.
    opaque: dict[str, int] = {}
    if nlayers > 1:
        for d in rng.sample(dirs, len(dirs)):
            if len(opaque) >= min(8, nlayers - 1):
                break
            if any(d.startswith(o + "/") or o.startswith(d + "/") or o == d for o in opaque):
                continue
            opaque[d] = rng.randint(1, top)

    def lowest(path: str) -> int:
        """The lowest layer that can show path (opaque ancestors cut below)."""
        lo = 0
        for o, layer in opaque.items():
            if path == o or path.startswith(o + "/"):
                lo = max(lo, layer)
        return lo

    for o, layer in opaque.items():
        plan.put(layer, o, OPAQUE)
        plan.counts["opaque"] += 1
    for d in dirs:
        plan.merged[d] = ("d", None)
        if d not in opaque:
            plan.put(rng.randint(lowest(d), top), d, DIR)

    def content(path: str, layer: int, size: int) -> bytes:
        line = f"{path} @ layer {layer}\n".encode()
        return (line * (size // len(line) + 1))[:size]

    for path, size in sorted(files.items()):
        lo = lowest(path)
        layer = lo if rng.random() < 0.4 else rng.randint(lo, top)
        data = content(path, layer, size)
        plan.put(layer, path, FILE, data)
        plan.merged[path] = ("f", data)
        if layer > 0 and rng.random() < 0.2:
            older = rng.randrange(0, layer)
            plan.put(older, path, FILE, content(path, older, rng.randrange(0, 2048)))
            plan.counts["shadowed"] += 1
    for path, target in sorted(links.items()):
        layer = rng.randint(lowest(path), top)
        plan.put(layer, path, LINK, target)
        plan.merged[path] = ("l", target)

    if nlayers > 1:
        # Files created in one layer and deleted (whited out) in a higher one.
        for i in range(nfiles // 10):
            d = rng.choice(dirs + [""])
            path = f"{d}/old_{i}.py" if d else f"old_{i}.py"
            born = rng.randrange(0, top)
            plan.put(born, path, FILE, content(path, born, rng.randrange(0, 512)))
            plan.put(rng.randint(born + 1, top), path, WHITEOUT)
            plan.counts["deleted"] += 1
            plan.counts["whiteouts"] += 1
        # Whole directories deleted the same way.
        for i in range(5):
            d = rng.choice(dirs)
            gone = f"{d}/gone{i}"
            born = rng.randrange(0, top)
            for j in range(5):
                plan.put(born, f"{gone}/f{j}.txt", FILE, content(gone, born, 64))
            plan.put(born, f"{gone}/sub/x.txt", FILE, b"x\n")
            plan.put(rng.randint(born + 1, top), gone, WHITEOUT)
            plan.counts["whiteouts"] += 1
        # Stale content under opaque directories: older versions and names the
        # opaque copy no longer has.
        for o, layer in opaque.items():
            inside = [p for p in files if p.startswith(o + "/")]
            subdirs = [o] + [d for d in dirs if d.startswith(o + "/")]
            for j in range(6):
                below = rng.randrange(0, layer)
                if inside and j % 2 == 0:
                    path = rng.choice(inside)
                else:
                    path = f"{rng.choice(subdirs)}/stale_{j}.py"
                plan.put(below, path, FILE, content(path, below, 100))
                plan.counts["stale"] += 1
    assert not (set(files) & dirset)
    return _materialize(plan, f"synthetic-{nlayers}", os.path.join(base, f"synthetic-{nlayers}"))


# -- a realistic tree: /usr/lib/python3* ----------------------------------------


def python_tree_sources() -> list[str]:
    """The /usr/lib/python3* directories the realistic stack is made of."""
    return sorted(p for p in glob.glob("/usr/lib/python3*")
                  if os.path.isdir(p) and not os.path.islink(p))


def build_python_tree(base: str, nlayers: int = 32, *, seed: int = 7) -> BuiltStack:
    """/usr/lib/python3* split over nlayers (>= 8) layers like image layers."""
    nlayers = max(8, nlayers)
    rng = random.Random(seed)
    top = nlayers - 1
    plan = _Plan(nlayers)
    # unit -> its entries (relpath -> kind, source); a unit is one stdlib
    # module/package or one dist-packages (site-packages) entry.
    units: dict[str, dict[str, tuple[str, str]]] = {}
    unit_is_stdlib: dict[str, bool] = {}
    for src_root in python_tree_sources():
        top_name = os.path.basename(src_root)
        units[top_name] = {top_name: ("d", None)}
        unit_is_stdlib[top_name] = True
        for dirpath, dirnames, filenames in os.walk(src_root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, os.path.dirname(src_root))
            for name in sorted(dirnames + filenames):
                src = os.path.join(dirpath, name)
                rel = f"{rel_dir}/{name}"
                parts = rel.split("/")
                pkg_level = 3 if len(parts) > 2 and parts[1] in ("dist-packages", "site-packages") else 2
                unit = "/".join(parts[:pkg_level])
                if os.path.islink(src):
                    kind, payload = "l", os.readlink(src)
                elif os.path.isdir(src):
                    kind, payload = "d", None
                elif os.path.isfile(src):
                    kind, payload = "f", src
                else:
                    continue
                units.setdefault(unit, {})[rel] = (kind, payload)
                unit_is_stdlib[unit] = pkg_level == 2

    ops = {"d": DIR, "f": FILE, "l": LINK}
    unit_layer = {}
    for unit in sorted(units):
        unit_layer[unit] = rng.randint(0, min(3, top)) if unit_is_stdlib[unit] else rng.randint(4, top)

    # A few packages reinstalled: an opaque directory over a stale copy.
    pkg_dirs = [u for u in sorted(units)
                if not unit_is_stdlib[u] and units[u].get(u, ("",))[0] == "d"
                and len(units[u]) > 5 and unit_layer[u] > 0]
    opaque = set(rng.sample(pkg_dirs, min(4, len(pkg_dirs))))
    # __pycache__ directories deleted above the layer that made them.
    caches = [p for u in sorted(units) for p, (k, _) in units[u].items()
              if k == "d" and p.endswith("/__pycache__") and unit_layer[u] < top]
    deleted_dirs = set(rng.sample(caches, min(3, len(caches))))

    def under(path: str, dirs: set[str]) -> bool:
        return any(path == d or path.startswith(d + "/") for d in dirs)

    for unit in sorted(units):
        layer = unit_layer[unit]
        for rel, (kind, payload) in sorted(units[unit].items()):
            op = OPAQUE if rel in opaque else ops[kind]
            plan.put(layer, rel, op, payload)
            if op == OPAQUE:
                plan.counts["opaque"] += 1
            if under(rel, deleted_dirs):
                continue
            if kind == "f" and layer < top and rng.random() < 0.02:
                plan.put(rng.randint(layer + 1, top), rel, WHITEOUT)
                plan.counts["deleted"] += 1
                plan.counts["whiteouts"] += 1
                continue
            plan.merged[rel] = (kind, payload)
            if kind == "f" and layer > 0 and rng.random() < 0.05:
                plan.put(rng.randrange(0, layer), rel, FILE, payload)
                plan.counts["shadowed"] += 1
        if unit in opaque:
            stale = rng.randrange(0, layer)
            for rel, (kind, payload) in sorted(units[unit].items()):
                if kind != "d":
                    plan.put(stale, rel, ops[kind], payload)
            some = next(p for p, (k, _) in sorted(units[unit].items()) if k == "f")
            plan.put(stale, f"{unit}/stale_module.py", FILE, units[unit][some][1])
            plan.counts["stale"] += 1
    for d in sorted(deleted_dirs):
        unit = next(u for u in units if d in units[u])
        plan.put(rng.randint(unit_layer[unit] + 1, top), d, WHITEOUT)
        plan.counts["whiteouts"] += 1
    name = f"python3-{nlayers}"
    return _materialize(plan, name, os.path.join(base, name))
