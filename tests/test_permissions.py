"""Permission checks: the caller's rights against the merged object, the work done with the opener's.

Each case runs the same operations as an unprivileged caller through a kernel
overlay mount (mounted by root) and through a Stack (opened by root), pins the
kernel's errno, and requires the Stack to match it with the same upper layer
(``test_write_parity.check``): a refused operation copies nothing up.  The
random sequences in test_write_parity (``test_random_sequence_unprivileged``)
cover the combinations; these name one rule each.  The last tests check the
credential switch itself: the calling thread gets its own rights back, other
threads never see a change, and a thread that cannot regain the opener's
rights gets EPERM for a change instead of a half-done one.
"""

from __future__ import annotations

import os
import threading

import kernel
import pytest
from test_write_parity import O, check

USER = (1000, 1000, [1000])          # owns the files marked ("owner", 1000, 1000)
OTHER = (2000, 2000, [2000])         # owns nothing, in no group that matters
MEMBER = (2000, 2000, [2000, 4242])  # in group 4242


@pytest.fixture(autouse=True)
def _kernel():
    kernel.skip_unless_mountable()


def _owned(path, uid=1000, gid=1000, mode=None):
    out = [(path, "owner", uid, gid)]
    if mode is not None:
        out.append((path, "mode", mode))
    return out


def test_unlink_needs_write_on_the_merged_parent(tmp_path):
    spec = {"l1": [("ro/f", "file"), *_owned("ro", mode=0o555), ("rw/f", "file"), *_owned("rw", mode=0o755)]}
    up = check(tmp_path, spec, [O("unlink", path=b"ro/f"), O("unlink", path=b"rw/f")], ["EACCES", "ok"],
               caller=USER)
    assert "ro" not in up and up["rw/f"]["type"] == "whiteout"


def test_search_permission_is_checked_on_every_directory(tmp_path):
    spec = {"l1": [("a/b/f", "file"), *_owned("a/b", mode=0o777), ("a", "mode", 0o700)]}
    up = check(tmp_path, spec, [O("unlink", path=b"a/b/f"), O("mkdir", path=b"a/b/new", mode=0o755),
                                O("os_open", path=b"a/b/f", flags=["O_WRONLY"])],
               ["EACCES", "EACCES", "EACCES"], caller=USER)
    assert set(up) == {""}  # nothing copied up


def test_sticky_directory_protects_other_users_files(tmp_path):
    spec = {"l1": [("tmp/mine", "file"), *_owned("tmp/mine"), ("tmp/theirs", "file"),
                   *_owned("tmp/theirs", 3000, 3000), ("tmp", "mode", 0o1777)]}
    up = check(tmp_path, spec, [O("unlink", path=b"tmp/theirs"), O("unlink", path=b"tmp/mine"),
                                O("rename", src=b"tmp/theirs", dst=b"tmp/x")],
               ["EPERM", "ok", "EPERM"], caller=USER)
    assert up["tmp/mine"]["type"] == "whiteout" and "tmp/theirs" not in up


def test_open_for_write_needs_write_permission_and_copies_nothing_up(tmp_path):
    spec = {"l1": [("d/ro", "file"), *_owned("d/ro", mode=0o444), ("d/rw", "file"), *_owned("d/rw", mode=0o644),
                   ("d/other", "file"), *_owned("d/other", 3000, 3000, 0o644)]}
    up = check(tmp_path, spec, [O("os_open", path=b"d/ro", flags=["O_WRONLY"]),
                                O("os_open", path=b"d/ro", flags=["O_RDONLY", "O_TRUNC"]),
                                O("os_open", path=b"d/other", flags=["O_RDWR"]),
                                O("os_open", path=b"d/rw", flags=["O_WRONLY", "O_APPEND"], data=b"x")],
               ["EACCES", "EACCES", "EACCES", "ok"], caller=USER)
    assert sorted(up) == ["", "d", "d/rw"]


def test_created_objects_belong_to_the_caller(tmp_path):
    spec = {"l1": [("d", "dir"), ("d", "mode", 0o777), ("g", "dir"), ("g", "owner", 0, 4242),
                   ("g", "mode", 0o2777)]}
    up = check(tmp_path, spec, [O("mkdir", path=b"d/sub", mode=0o755),
                                O("os_open", path=b"d/f", flags=["O_WRONLY", "O_CREAT"], mode=0o6755),
                                O("symlink", target=b"t", path=b"d/l"), O("mkfifo", path=b"d/p", mode=0o644),
                                O("os_open", path=b"g/f", flags=["O_WRONLY", "O_CREAT"], mode=0o2755),
                                O("mkdir", path=b"g/sub", mode=0o755)],
               ["ok"] * 6, caller=OTHER)
    for p in ("d/sub", "d/f", "d/l", "d/p"):
        assert (up[p]["uid"], up[p]["gid"]) == (2000, 2000), p
    assert up["d/f"]["mode"] == "6755"
    # Under a setgid directory: its group; a non-member loses the setgid bit
    # of a new executable file, a new directory inherits it.
    assert (up["g/f"]["uid"], up["g/f"]["gid"], up["g/f"]["mode"]) == (2000, 4242, "0755")
    assert (up["g/sub"]["gid"], up["g/sub"]["mode"]) == (4242, "2755")


def test_create_over_whiteout_belongs_to_the_caller(tmp_path):
    spec = {"upper": [("d/x", "whiteout")], "l1": [("d/x", "file")]}
    spec["l1"] += [("d", "mode", 0o777)]
    spec["upper"] += [("d", "mode", 0o777)]
    up = check(tmp_path, spec, [O("mkdir", path=b"d/x", mode=0o700)], ["ok"], caller=OTHER)
    assert (up["d/x"]["uid"], up["d/x"]["gid"]) == (2000, 2000)


def test_chmod_chown_need_ownership(tmp_path):
    spec = {"l1": [("mine", "file"), *_owned("mine", 1000, 4242, 0o2755), ("theirs", "file"),
                   *_owned("theirs", 3000, 3000, 0o644)]}
    up = check(tmp_path, spec, [O("chmod", path=b"theirs", mode=0o600), O("chown", path=b"theirs", uid=-1, gid=-1),
                                O("chown", path=b"mine", uid=3000, gid=-1),
                                O("chown", path=b"mine", uid=-1, gid=4242),
                                O("chown", path=b"mine", uid=-1, gid=1000),
                                O("chmod", path=b"mine", mode=0o2750)],
               ["EPERM", "ok", "EPERM", "ok", "ok", "ok"], caller=USER)
    # Not a member of the file's group (1000 after the chgrp? it is: its
    # primary group) - the kernel keeps or strips setgid as the rules say.
    assert "theirs" in up and up["mine"]["uid"] == 1000


def test_utime_now_needs_write_explicit_times_need_ownership(tmp_path):
    spec = {"l1": [("w", "file"), *_owned("w", 3000, 3000, 0o666), ("r", "file"), *_owned("r", 3000, 3000, 0o644)]}
    check(tmp_path, spec, [O("utime", path=b"w"), O("utime", path=b"r"),
                           O("utime", path=b"w", times=[1.0, 2.0])],
          ["ok", "EACCES", "EPERM"], caller=USER)


def test_truncate_link_and_xattrs_as_a_user(tmp_path):
    spec = {"l1": [("d", "dir"), ("d", "mode", 0o777), ("d/ro", "file"), *_owned("d/ro", 3000, 3000, 0o644),
                   ("d/rw", "file"), *_owned("d/rw", 3000, 3000, 0o666), ("d/mine", "file"), *_owned("d/mine")]}
    check(tmp_path, spec, [O("truncate", path=b"d/ro", length=0), O("truncate", path=b"d/rw", length=1),
                           O("link", src=b"d/ro", dst=b"d/h1"), O("link", src=b"d/mine", dst=b"d/h2"),
                           O("setxattr", path=b"d/ro", name=b"user.x", value=b"1"),
                           O("setxattr", path=b"d/mine", name=b"user.x", value=b"1"),
                           O("setxattr", path=b"d/mine", name=b"trusted.x", value=b"1")],
          ["EACCES", "ok", "EPERM", "ok", "EACCES", "ok", "EPERM"], caller=USER)


def test_rename_of_a_directory_to_another_parent_needs_write_on_it(tmp_path):
    spec = {"upper": [("a/sub/f", "file"), ("a", "mode", 0o777), ("b", "dir"), ("b", "mode", 0o777),
                      ("a/sub", "mode", 0o555)], "l1": [("a", "dir"), ("b", "dir")]}
    up = check(tmp_path, spec, [O("rename", src=b"a/sub", dst=b"b/sub"), O("rename", src=b"a/sub", dst=b"a/sub2")],
               ["EACCES", "ok"], caller=USER)
    assert "a/sub2/f" in up


def test_group_member_may_write_through_group_bits(tmp_path):
    spec = {"l1": [("g", "dir"), ("g", "owner", 3000, 4242), ("g", "mode", 0o770), ("g/f", "file"),
                   ("g/f", "owner", 3000, 4242), ("g/f", "mode", 0o660)]}
    check(tmp_path, spec, [O("os_open", path=b"g/f", flags=["O_WRONLY", "O_APPEND"], data=b"x"),
                           O("unlink", path=b"g/f")], ["ok", "ok"], caller=MEMBER)
    check(tmp_path / "other", spec, [O("os_open", path=b"g/f", flags=["O_WRONLY"]), O("unlink", path=b"g/f")],
          ["EACCES", "EACCES"], caller=OTHER)


# ---------------------------------------------------------------------------
# The credential switch itself
# ---------------------------------------------------------------------------


def _in_child(body):
    import write_ops

    messages, error = write_ops.run_forked(body)
    assert error is None, error
    return dict(messages)


def _ids():
    return [os.getresuid(), os.getresgid(), sorted(os.getgroups())]


def test_calling_thread_gets_its_rights_back(tmp_path):
    import write_ops

    import overlayfs

    lower, upper, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "f").write_bytes(b"x")
    os.chmod(upper, 0o777)  # the merged root: the caller may create in it

    def body(send):
        st = overlayfs.Stack([lower], upper, work)
        write_ops.become(USER, keep_saved=True)
        before = _ids()
        st.copy_up("f")                      # works as root: owner kept
        try:
            st.chmod("f", 0o600)             # refused: not the owner
        except PermissionError:
            pass
        st.mkdir("new")                      # made as root, owned by the caller
        send("same", [before == _ids()])
        seen = []
        t = threading.Thread(target=lambda: seen.append(_ids()))
        t.start()
        t.join()
        send("thread", [seen[0] == before])
        write_ops.become((0, 0, []))
        s = os.lstat(upper / "new")
        send("owner", [s.st_uid, s.st_gid])
        send("copied", [os.lstat(upper / "f").st_uid])

    got = _in_child(body)
    assert got["same"] == [True] and got["thread"] == [True]
    assert got["owner"] == [1000, 1000] and got["copied"] == [0]


def test_a_caller_that_cannot_regain_the_openers_rights_gets_eperm(tmp_path):
    import write_ops

    import overlayfs

    lower, upper, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "f").write_bytes(b"x")
    for d in (tmp_path, lower, upper):
        os.chmod(d, 0o777)

    def body(send):
        st = overlayfs.Stack([lower], upper, work)
        write_ops.become(USER)               # saved ids dropped too: no way back
        try:
            st.mkdir("new")
            send("mkdir", ["ok"])
        except OSError as e:
            send("mkdir", [e.errno])
        with st.open("f", "rb") as f:               # reads go on with the caller's own rights
            send("read", [f.read().decode()])

    got = _in_child(body)
    assert got["mkdir"] == [1]  # EPERM
    assert got["read"] == ["x"]
    assert os.listdir(upper) == []
