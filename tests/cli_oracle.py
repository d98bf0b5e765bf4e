"""The real things the CLI is compared with, run over a kernel overlay mount (a worker
for ``kernel.run_in_mount``; stdlib only): GNU ls/find/du/stat/cat/readlink, os.lstat."""

from __future__ import annotations

import os
import stat
import subprocess


def _strip(root: str, path: str) -> str:
    rel = path[len(root):] if path.startswith(root) else path
    return "/" + rel.strip("/")


def gnu_view(root: bytes, args: dict) -> dict:
    top = os.fsdecode(root).rstrip("/")
    env = dict(os.environ, LC_ALL="C", TZ="UTC")

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout

    out: dict = {"ls": {}, "ls_a": {}, "find": {}, "stat": {}, "cat": {}, "readlink": {}}
    for d in args["dirs"]:
        out["ls"][d] = sh("ls", "-1", top + d).splitlines()
        out["ls_a"][d] = sh("ls", "-1A", top + d).splitlines()
    out["ls_l"] = sh("ls", "-ln", "--time-style=+%Y-%m-%d %H:%M", top + "/etc").splitlines()[1:]
    for name, expr in args["finds"].items():
        out["find"][name] = sorted(_strip(top, p) for p in sh("find", top + "/", *expr).splitlines())
    out["du"] = [(line.split("\t")[0], _strip(top, line.split("\t")[1]))
                 for line in sh("du", top + "/").splitlines()]
    out["du_s"] = sh("du", "-s", top + "/").split("\t")[0]
    out["du_sh"] = sh("du", "-sh", top + "/").split("\t")[0]
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = _strip(top, full)
            rec = {"mode": stat.S_IMODE(st.st_mode), "fmt": stat.S_IFMT(st.st_mode),
                   "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                   "mtime_ns": st.st_mtime_ns, "rdev": st.st_rdev, "blocks": st.st_blocks,
                   "nlink": st.st_nlink}
            out["stat"][rel] = rec
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out["cat"][rel] = f.read().decode("utf-8", "replace")
            elif stat.S_ISLNK(st.st_mode):
                out["readlink"][rel] = os.readlink(full)
    out["gnu_stat"] = {p: sh("stat", "-c", "%s %a %u %g %F %t %T", top + p).strip() for p in args["stat"]}
    return out
