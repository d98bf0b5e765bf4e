"""Shared fixtures: the Stack implementations under test and the kernel requirement.

* ``stack_impl`` runs a test once per implementation: ``"c"`` gives
  ``overlayfs.Stack`` and ``"reference"`` gives ``ReferenceStack``.
* ``require_kernel`` skips a test that needs real overlay mounts when they are
  not possible here (or fails it under ``OVERLAYFS_REQUIRE_KERNEL=1``); see
  ``kernel.skip_unless_mountable``.
* ``kernel_views`` caches kernel views for the whole session, so a random
  stack is mounted once and compared with every implementation.

The helper modules ``kernel`` and ``stackgen`` live next to this file; with
``--import-mode=importlib`` the tests directory is not on ``sys.path``, so it
is added here.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
REFERENCE_FILE = REPO_ROOT / "src" / "overlayfs" / "_reference.py"

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import kernel  # noqa: E402  (needs the path set up above)


def load_reference():
    """The ``_reference`` module: from the installed package if it imports and matches
    ``src/overlayfs/_reference.py``, else from that source file (a stale install is not tested)."""
    try:
        from overlayfs import _reference
    except ImportError:
        _reference = None
    if _reference is not None:
        try:
            with open(_reference.__file__, "rb") as a, open(REFERENCE_FILE, "rb") as b:
                if a.read() == b.read():
                    return _reference
        except OSError:
            return _reference  # no source tree next to the tests: use what is installed
    name = "overlayfs_reference_standalone"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, REFERENCE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["c", "reference"])
def stack_impl(request):
    """A Stack class: the compiled ``overlayfs.Stack`` or the pure-Python ``ReferenceStack``."""
    if request.param == "reference":
        return load_reference().ReferenceStack
    import overlayfs

    return overlayfs.Stack


@pytest.fixture
def impl(stack_impl):
    """The same, under the name most test modules use."""
    return stack_impl


@pytest.fixture
def require_root():
    """Skip (or fail under OVERLAYFS_REQUIRE_KERNEL=1) unless running as root: owners,
    devices, trusted.* xattrs and the dockerd data root need it."""
    if os.geteuid() != 0:
        kernel.skip_or_fail("needs root (owners, devices, trusted.* xattrs)")


@pytest.fixture
def require_kernel():
    """Skip (or fail under OVERLAYFS_REQUIRE_KERNEL=1) unless overlays can be mounted."""
    kernel.skip_unless_mountable()


class KernelViews:
    """Session cache of kernel views of generated stacks, keyed by a hashable description."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.views: dict = {}

    def get(self, key, build):
        """The kernel view for *key*; on a miss, ``build(root)`` returns kernel_view kwargs."""
        if key not in self.views:
            root = self.base / ("k%d" % len(self.views))
            root.mkdir()
            self.views[key] = kernel.kernel_view(**build(root))
        return self.views[key]


@pytest.fixture(scope="session")
def kernel_views(tmp_path_factory):
    return KernelViews(tmp_path_factory.mktemp("kernel-views"))


def _tiny_mount(base: str) -> None:
    """Mount and unmount a two-layer overlay with overlayfs.mount under base."""
    import overlayfs._mount as om

    dirs = [os.path.join(base, n) for n in ("a", "b", "t")]
    for d in dirs:
        os.mkdir(d)
    om.mount(dirs[2], dirs[:2]).unmount()


@functools.cache
def _library_mount_unavailable():
    """Why overlayfs.mount cannot mount here (None when it can)."""
    import overlayfs._namespace as ns

    if not sys.platform.startswith("linux"):
        return "kernel overlays need Linux"
    base = tempfile.mkdtemp(prefix="ovl-gate-")
    try:
        ns.run_in_private_namespace(_tiny_mount, base)
    except Exception as exc:  # the reason is the skip message
        return f"cannot mount overlays in a private mount namespace here: {exc}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return None


@pytest.fixture
def mountable() -> None:
    """Skip (or fail under OVERLAYFS_REQUIRE_KERNEL=1) where overlayfs.mount cannot mount."""
    reason = _library_mount_unavailable()
    if reason:
        kernel.skip_or_fail(reason)


@pytest.fixture(scope="session")
def dockerd():
    """A private dockerd (see peers.py); skipped, or failed under OVERLAYFS_REQUIRE_KERNEL=1, without one."""
    import peers

    docker = peers.start_docker()
    yield docker
    docker.close()


@pytest.fixture(scope="session")
def busybox_image(dockerd, tmp_path_factory):
    """The tag of a busybox base image imported into ``dockerd`` from a rootfs built here."""
    import peers

    root = peers.busybox_rootfs(str(tmp_path_factory.mktemp("busybox-rootfs")))
    dockerd.import_rootfs(root, "ovltest-busybox:1")
    return "ovltest-busybox:1"


@pytest.fixture(scope="session")
def podman():
    """A podman on a private store (see peers.py); skipped, or failed under
    OVERLAYFS_REQUIRE_KERNEL=1, where podman is missing or cannot use the overlay driver."""
    import peers

    pm = peers.start_podman()
    yield pm
    pm.close()
