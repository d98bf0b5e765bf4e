"""A container's or an image's layers, found by reading the engine's own files (no daemon).

``resolve_target(spec)`` turns a target spec into a :class:`Target` (lowers, upper, work);
``open_container(spec)`` opens a :class:`~overlayfs.Stack` over it.  Specs:

``docker:NAME|ID``
    A Docker container (overlay2 graph driver).  ``<root>/containers/<id>/config.v2.json``
    gives its name and driver, ``image/overlay2/layerdb/mounts/<id>/mount-id`` its
    overlay2 dir; the upper is ``overlay2/<mount-id>/diff``, the work dir
    ``overlay2/<mount-id>/work``, and the lowers (the ``-init`` layer, then the image's
    layers) are what that dir's ``lower`` file names through the ``l/`` links.
``docker-image:REF``
    A Docker image: ``image/overlay2/repositories.json`` maps ``name:tag`` (a bare name
    means ``:latest``; ``docker.io/library/`` may be spelled out or not) to the image id,
    whose config (``imagedb/content/sha256/<id>``) lists ``rootfs.diff_ids``; their chain
    ids lead to ``layerdb/sha256/<chain>/cache-id``, the overlay2 dir of each layer.
    REF may also be the id (``sha256:…``) or a unique prefix of it.
``podman:NAME|ID``
    A podman / containers-storage container: ``overlay-containers/containers.json``
    gives its layer, ``overlay-layers/layers.json`` the parent chain; the upper is
    ``overlay/<layer>/diff``, the work dir ``overlay/<layer>/work``.
``podman-image:REF`` (also ``containers-storage:REF``, skopeo's name for it)
    An image of that store: ``overlay-images/images.json`` (``names`` such as
    ``localhost/name:tag``; ``localhost/`` and ``docker.io/library/`` may be left out,
    a bare name means ``:latest``), or its id or a unique prefix of it.

Containers are found as the engines find them: the full id, then a name (with or without
Docker's leading ``/``), then a unique id prefix; an ambiguous prefix is a ValueError, a
missing container or image a FileNotFoundError (``OSError(ENOENT, …, spec)``).

Store roots, first match wins: the ``root=`` argument; the environment variable
``OVERLAYFS_DOCKER_ROOT`` / ``OVERLAYFS_PODMAN_ROOT``; for Docker the ``data-root`` of
``/etc/docker/daemon.json``, for podman the ``graphroot`` of its ``storage.conf``
(``$CONTAINERS_STORAGE_CONF``, else ``/etc/containers/storage.conf``) when run as root;
then the defaults ``/var/lib/docker``, ``/var/lib/containers/storage`` (root) or
``$XDG_DATA_HOME/containers/storage`` (``~/.local/share/containers/storage``, rootless).

An engine's store is always read in the kernel's whiteout form only (``whiteouts="kernel"``):
a container can create real files named ``.wh.x``, and they are files.  Stacks are
read-only by default (the container's upper is the top lower layer); ``writable=True``
gives the container's upper and work dir to the Stack, which then changes the container's
files -- while the container runs, that is writing under a live kernel overlay mount, which
the kernel documents as undefined behaviour: stop the container first.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from .store import LayerStore

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

__all__ = ["KINDS", "Target", "TargetKind", "docker_root", "open_container", "parse_spec",
           "podman_root", "resolve_target"]

TargetKind = Literal["docker", "docker-image", "podman", "podman-image"]
#: the spec prefixes understood, and the kind each gives
KINDS: Final[Mapping[str, TargetKind]] = {
    "docker": "docker",
    "docker-image": "docker-image",
    "podman": "podman",
    "podman-image": "podman-image",
    "containers-storage": "podman-image",
}
DOCKER_ROOT: Final = "/var/lib/docker"
PODMAN_ROOT: Final = "/var/lib/containers/storage"
DOCKER_ROOT_ENV: Final = "OVERLAYFS_DOCKER_ROOT"
PODMAN_ROOT_ENV: Final = "OVERLAYFS_PODMAN_ROOT"

_HEX = re.compile(r"[0-9a-f]{1,64}\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a container's or an image's layers are: what a Stack (or a mount) needs."""

    kind: TargetKind
    id: str  #: the container's or image's full id (hex, no ``sha256:``)
    names: tuple[str, ...]  #: container names (Docker's without the ``/``) or image refs
    root: str  #: the engine's store root
    lowers: tuple[str, ...]  #: layer dirs below the upper, top first
    upper: str | None  #: the container's writable layer (None for an image)
    work: str | None  #: the container's overlay work dir (None for an image)
    image: str | None = None  #: a container's image id
    layer_ids: tuple[str, ...] = ()  #: the storage driver's layer ids, top first
    xattr_namespace: Literal["trusted", "user"] = "trusted"

    @property
    def name(self) -> str | None:
        """The first name, or None."""
        return self.names[0] if self.names else None

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer dir, top first: the upper (if any), then the lowers."""
        return ((self.upper,) if self.upper else ()) + self.lowers

    def stack(self, *, writable: bool = False, **kwargs: Any) -> Stack:
        """A Stack over these layers; see :func:`open_container`."""
        from overlayfs import Stack

        whiteouts = kwargs.setdefault("whiteouts", "kernel")
        if whiteouts != "kernel":
            raise ValueError(f"{self.kind} layers are read in the kernel's whiteout form only "
                             f"(whiteouts='kernel'), not {whiteouts!r}: a container can "
                             f"create real files named '.wh.x'")
        kwargs.setdefault("xattr_namespace", self.xattr_namespace)
        if writable:
            if self.upper is None or self.work is None:
                raise ValueError(f"{self.kind} {self.id[:12]}: an image has no writable "
                                 f"layer (writable=True needs a container)")
            return Stack(list(self.lowers), self.upper, self.work, **kwargs)
        return Stack(list(self.layers), **kwargs)


def _missing(what: str, spec: str, where: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"no such {what} (looked in {where})", spec)


def _load_json(path: str, spec: str, default: Any = None) -> Any:
    """A JSON file of the store, or ``default`` where it is absent (None: ENOENT)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        if default is not None:
            return default
        raise FileNotFoundError(errno.ENOENT, f"{spec}: the store has no {path}",
                                path) from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{spec}: {path} is not valid JSON: {exc}") from None


def _read_id(path: str, spec: str) -> str:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{spec}: the store has no {path}",
                                path) from None
    if not text:
        raise ValueError(f"{spec}: {path} is empty")
    return text


def _pick(spec: str, what: str, query: str, ids: Iterable[str],
          by_name: Callable[[str], str | None], where: str) -> str:
    """The engines' lookup order: full id, name, unique id prefix."""
    ids = list(ids)
    if query in ids:
        return query
    found = by_name(query)
    if found is not None:
        return found
    if _HEX.match(query):
        hits = [i for i in ids if i.startswith(query)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise ValueError(f"{spec}: the {what} id prefix {query!r} is ambiguous: it "
                             f"matches {len(hits)} {what}s "
                             f"({', '.join(sorted(h[:12] for h in hits)[:5])})")
    raise _missing(what, spec, where)


def _chain(store: LayerStore, layer_id: str, spec: str) -> list[str]:
    try:
        return store.chain(layer_id)
    except FileNotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, f"{spec}: layer {layer_id!r} or one below it "
                                f"is missing from {store.root}: {exc.strerror}",
                                exc.filename) from None


# --- Docker -------------------------------------------------------------------------------

def docker_root(root: str | os.PathLike[str] | None = None) -> str:
    """The Docker data root: ``root``, ``$OVERLAYFS_DOCKER_ROOT``, daemon.json's
    ``data-root``, else /var/lib/docker."""
    if root is not None:
        return os.path.abspath(os.fspath(root))
    env = os.environ.get(DOCKER_ROOT_ENV)
    if env:
        return os.path.abspath(env)
    try:
        with open("/etc/docker/daemon.json", "rb") as fh:
            configured = json.loads(fh.read()).get("data-root")
        if isinstance(configured, str) and configured:
            return os.path.abspath(configured)
    except (OSError, ValueError, AttributeError):
        pass
    return DOCKER_ROOT


def _docker_store(root: str, spec: str) -> LayerStore:
    overlay2 = os.path.join(root, "overlay2")
    if not os.path.isdir(overlay2):
        if not os.path.isdir(root):
            raise FileNotFoundError(errno.ENOENT, f"{spec}: no Docker data root (set "
                                    f"root= or ${DOCKER_ROOT_ENV})", root)
        raise ValueError(f"{spec}: {root} has no overlay2 store (only Docker's overlay2 "
                         f"graph driver is read, not the containerd image store)")
    return LayerStore(overlay2, readonly=True)


def _docker_container(spec: str, query: str, root: str) -> Target:
    cdir = os.path.join(root, "containers")
    where = cdir
    try:
        ids = [n for n in os.listdir(cdir) if len(n) == 64 and _HEX.match(n)]
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{spec}: no Docker data root (no "
                                f"containers/ directory; set root= or ${DOCKER_ROOT_ENV})",
                                cdir) from None
    configs: dict[str, dict[str, Any]] = {}

    def config(cid: str) -> dict[str, Any]:
        if cid not in configs:
            data = _load_json(os.path.join(cdir, cid, "config.v2.json"), spec, default={})
            configs[cid] = data if isinstance(data, dict) else {}
        return configs[cid]

    def by_name(name: str) -> str | None:
        want = name if name.startswith("/") else "/" + name
        for cid in ids:
            if config(cid).get("Name") == want:
                return cid
        return None

    query = query.removeprefix("sha256:") if _DIGEST.match(query) else query
    cid = _pick(spec, "container", query, ids, by_name, where)
    conf = _load_json(os.path.join(cdir, cid, "config.v2.json"), spec)
    if not isinstance(conf, dict):
        raise ValueError(f"{spec}: config.v2.json of {cid[:12]} is not a JSON object")
    driver = conf.get("Driver")
    if driver != "overlay2":
        raise ValueError(f"{spec}: container {cid[:12]} uses the storage driver "
                         f"{driver!r}; only overlay2 is read")
    store = _docker_store(root, spec)
    mount_id = _read_id(os.path.join(root, "image", "overlay2", "layerdb", "mounts", cid,
                                     "mount-id"), spec)
    chain = _chain(store, mount_id, spec)
    layer = store.get(mount_id)
    name = conf.get("Name")
    image = conf.get("Image")
    return Target(
        kind="docker", id=cid,
        names=(name.removeprefix("/"),) if isinstance(name, str) and name else (),
        root=root, lowers=tuple(os.path.join(store.root, i, "diff") for i in chain[1:]),
        upper=layer.diff, work=layer.work,
        image=image.removeprefix("sha256:") if isinstance(image, str) else None,
        layer_ids=tuple(chain),
    )


def _split_ref(ref: str) -> tuple[str, str]:
    """(repository, ":tag" or "@digest"), with ":latest" for a bare name."""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon:]
    return ref, ":latest"


def _ref_candidates(ref: str, implicit: Iterable[str]) -> list[str]:
    """Spellings of ``ref`` an engine may have stored: as given (with ``:latest`` added),
    and with the implicit registry prefixes added or removed."""
    name, suffix = _split_ref(ref)
    implicit = tuple(implicit)
    short = next((name[len(p):] for p in implicit if name.startswith(p)), name)
    names = [name, short, *(p + short for p in implicit)]
    return list(dict.fromkeys(n + suffix for n in names))


def _docker_image(spec: str, query: str, root: str) -> Target:
    imgroot = os.path.join(root, "image", "overlay2")
    if not os.path.isdir(imgroot):
        if not os.path.isdir(root):
            raise FileNotFoundError(errno.ENOENT, f"{spec}: no Docker data root (set "
                                    f"root= or ${DOCKER_ROOT_ENV})", root)
        raise ValueError(f"{spec}: {root} has no image/overlay2 (only Docker's overlay2 "
                         f"graph driver is read, not the containerd image store)")
    content = os.path.join(imgroot, "imagedb", "content", "sha256")
    try:
        ids = [n for n in os.listdir(content) if len(n) == 64 and _HEX.match(n)]
    except FileNotFoundError:
        ids = []
    repos = _load_json(os.path.join(imgroot, "repositories.json"), spec,
                       default={"Repositories": {}})
    refs: dict[str, str] = {}
    for tags in (repos.get("Repositories") or {}).values() if isinstance(repos, dict) else ():
        if isinstance(tags, dict):
            refs.update({k: v for k, v in tags.items() if isinstance(v, str)})

    def by_name(name: str) -> str | None:
        for candidate in _ref_candidates(name, ("docker.io/library/", "docker.io/")):
            if candidate in refs:
                return refs[candidate].removeprefix("sha256:")
        return None

    if query.startswith("sha256:") and _HEX.match(query[7:]):
        query = query[7:]
    iid = _pick(spec, "image", query, ids, by_name, os.path.join(imgroot, "repositories.json"))
    conf = _load_json(os.path.join(content, iid), spec)
    rootfs = conf.get("rootfs") if isinstance(conf, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ValueError(f"{spec}: the config of image {iid[:12]} has no rootfs.diff_ids")
    if not diff_ids:
        raise ValueError(f"{spec}: image {iid[:12]} has no layers")
    store = _docker_store(root, spec)
    layerdb = os.path.join(imgroot, "layerdb", "sha256")
    chain_id = ""
    cache_ids = []
    for diff_id in diff_ids:
        chain_id = diff_id if not chain_id else \
            "sha256:" + hashlib.sha256(f"{chain_id} {diff_id}".encode()).hexdigest()
        cache_ids.append(_read_id(os.path.join(layerdb, chain_id.removeprefix("sha256:"),
                                               "cache-id"), spec))
    cache_ids.reverse()
    for cache_id in cache_ids:
        if cache_id not in store:
            raise FileNotFoundError(errno.ENOENT, f"{spec}: layer {cache_id!r} of image "
                                    f"{iid[:12]} is missing", os.path.join(store.root, cache_id))
    names = sorted(k for k, v in refs.items() if v.removeprefix("sha256:") == iid)
    return Target(kind="docker-image", id=iid, names=tuple(names), root=root,
                  lowers=tuple(os.path.join(store.root, i, "diff") for i in cache_ids),
                  upper=None, work=None, layer_ids=tuple(cache_ids))


# --- podman / containers-storage ---------------------------------------------------------

def podman_root(root: str | os.PathLike[str] | None = None) -> tuple[str, bool]:
    """(the containers-storage root, whether it is a rootless default): ``root``,
    ``$OVERLAYFS_PODMAN_ROOT``, storage.conf's ``graphroot`` (as root), else the default."""
    if root is not None:
        return os.path.abspath(os.fspath(root)), False
    env = os.environ.get(PODMAN_ROOT_ENV)
    if env:
        return os.path.abspath(env), False
    if os.geteuid() != 0:
        data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return os.path.join(data, "containers", "storage"), True
    conf = os.environ.get("CONTAINERS_STORAGE_CONF") or "/etc/containers/storage.conf"
    try:
        with open(conf, "rb") as fh:
            graphroot = tomllib.load(fh).get("storage", {}).get("graphroot")
        if isinstance(graphroot, str) and graphroot:
            return os.path.abspath(graphroot), False
    except (OSError, ValueError, AttributeError):
        pass
    return PODMAN_ROOT, False


def _records(root: str, sub: str, names: tuple[str, ...], spec: str) -> list[dict[str, Any]]:
    """The records of ``<root>/<sub>/<name>`` files (JSON lists), concatenated."""
    out: list[dict[str, Any]] = []
    for name in names:
        data = _load_json(os.path.join(root, sub, name), spec, default=[])
        if not isinstance(data, list):
            raise ValueError(f"{spec}: {os.path.join(root, sub, name)} is not a JSON list")
        out += [r for r in data if isinstance(r, dict) and isinstance(r.get("id"), str)]
    return out


def _podman_layers(spec: str, root: str, top: str) -> tuple[LayerStore, list[str]]:
    """The store and the layer ids from ``top`` down, by layers.json's parent chain."""
    overlay = os.path.join(root, "overlay")
    if not os.path.isdir(os.path.join(overlay, "l")):
        raise ValueError(f"{spec}: {root} has no overlay/ layer store (only the overlay "
                         f"storage driver is read)")
    store = LayerStore(overlay, readonly=True)
    layers = {r["id"]: r for r in _records(root, "overlay-layers",
                                            ("layers.json", "volatile-layers.json"), spec)}
    chain: list[str] = []
    layer_id: str | None = top
    while layer_id:
        if layer_id in chain:
            raise ValueError(f"{spec}: layers.json has a parent loop at {layer_id!r}")
        if layer_id not in layers or layer_id not in store:
            raise FileNotFoundError(errno.ENOENT, f"{spec}: layer {layer_id!r} is missing "
                                    f"from the store", os.path.join(overlay, layer_id))
        chain.append(layer_id)
        parent = layers[layer_id].get("parent")
        layer_id = parent if isinstance(parent, str) else None
    return store, chain


def _podman_target(spec: str, query: str, root: str, rootless: bool, image: bool) -> Target:
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, f"{spec}: no containers-storage root (set "
                                f"root= or ${PODMAN_ROOT_ENV})", root)
    files: tuple[str, ...]
    if image:
        sub, files, what = "overlay-images", ("images.json",), "image"
    else:
        sub, files, what = "overlay-containers", ("containers.json",
                                                 "volatile-containers.json"), "container"
    records = {r["id"]: r for r in _records(root, sub, files, spec)}

    def names_of(rec: dict[str, Any]) -> list[str]:
        names = rec.get("names")
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def by_name(name: str) -> str | None:
        wanted = (_ref_candidates(name, ("localhost/", "docker.io/library/", "docker.io/"))
                  if image else [name])
        for candidate in wanted:
            for rid, rec in records.items():
                if candidate in names_of(rec):
                    return rid
        return None

    if query.startswith("sha256:") and _HEX.match(query[7:]):
        query = query[7:]
    rid = _pick(spec, what, query, records, by_name, os.path.join(root, sub))
    rec = records[rid]
    top = rec.get("layer")
    if not isinstance(top, str) or not top:
        raise ValueError(f"{spec}: {what} {rid[:12]} has no layer")
    store, chain = _podman_layers(spec, root, top)
    diffs = tuple(os.path.join(store.root, i, "diff") for i in chain)
    ns: Literal["trusted", "user"] = "user" if rootless else "trusted"
    if image:
        return Target(kind="podman-image", id=rid, names=tuple(names_of(rec)), root=root,
                      lowers=diffs, upper=None, work=None, layer_ids=tuple(chain),
                      xattr_namespace=ns)
    img = rec.get("image")
    return Target(kind="podman", id=rid, names=tuple(names_of(rec)), root=root,
                  lowers=diffs[1:], upper=diffs[0],
                  work=os.path.join(store.root, chain[0], "work"),
                  image=img if isinstance(img, str) else None, layer_ids=tuple(chain),
                  xattr_namespace=ns)


# --- entry points -------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[TargetKind, str]:
    """``"docker:web"`` -> ``("docker", "web")``; ValueError for anything else."""
    if not isinstance(spec, str):
        raise TypeError(f"a target spec is a str, not {type(spec).__name__}")
    prefix, sep, query = spec.partition(":")
    if not sep or prefix not in KINDS:
        raise ValueError(f"{spec!r} is not a container target: use "
                         f"{', '.join(p + ':NAME' for p in KINDS)}")
    if not query:
        raise ValueError(f"{spec!r}: the name or id after {prefix + ':'!r} is empty")
    return KINDS[prefix], query


def resolve_target(spec: str, *, root: str | os.PathLike[str] | None = None) -> Target:
    """Find the layers of ``spec`` (``docker:NAME|ID``, ``docker-image:REF``,
    ``podman:NAME|ID``, ``podman-image:REF``) by reading the engine's store under ``root``
    (see the module docs for the default roots).  Reads a few small JSON and id files;
    FileNotFoundError for a missing container, image or store, ValueError for an
    ambiguous id prefix or a store this module does not read."""
    kind, query = parse_spec(spec)
    if kind in ("docker", "docker-image"):
        droot = docker_root(root)
        if kind == "docker":
            return _docker_container(spec, query, droot)
        return _docker_image(spec, query, droot)
    proot, rootless = podman_root(root)
    return _podman_target(spec, query, proot, rootless, image=kind == "podman-image")


def open_container(spec: str, *, root: str | os.PathLike[str] | None = None,
                   writable: bool = False, **stack_kwargs: Any) -> Stack:
    """A :class:`~overlayfs.Stack` over the layers of ``spec`` (see :func:`resolve_target`),
    in the kernel's whiteout form.  Read-only unless ``writable=True`` (containers only),
    which makes the container's upper and work dir the Stack's: changes then land in the
    container's own files, which is only safe while the container is stopped.
    ``stack_kwargs`` go to ``Stack`` (``whiteouts`` other than ``"kernel"`` is refused)."""
    return resolve_target(spec, root=root).stack(writable=writable, **stack_kwargs)
