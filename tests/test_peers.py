"""The peer harness itself: a private dockerd builds images offline on the busybox rootfs."""

from __future__ import annotations

import os


def test_dockerd_builds_an_image_offline_with_overlay2(dockerd, busybox_image):
    """A RUN line executes in the busybox rootfs and its layer lands in overlay2's diff dir."""
    tag = "ovltest-peers:1"
    dockerd.build(f"FROM {busybox_image}\nRUN echo hi > /hello && rm /etc/group\n", tag)
    assert dockerd.driver == "overlay2"
    top = dockerd.layer_diff_dirs(tag)[0]
    with open(os.path.join(top, "hello")) as f:
        assert f.read() == "hi\n"
    st = os.lstat(os.path.join(top, "etc", "group"))
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)  # the kernel's whiteout
