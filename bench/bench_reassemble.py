"""Exporting an imported layer with its original bytes: ``export_layer(tar_split=)``.

The §3 layer shape (bench_export.make_layer: 15,236 entries, ~300 MB) is packed by GNU
``tar --format=posix -cf`` and applied with ``apply_layer(tar_split=)``; then, on that
applied layer dir, each to a tmpfs file (/dev/shm), run alternately (median of
``--repeat`` warm runs):

* ``reassemble``: ``export_layer(dir, out, tar_split=record, expect_diff_id=...)``: the
  check of the dir against the record, then the original stream (sha256 computed);
* ``export``: ``export_layer(dir, out)``, the deterministic export (sha256 computed);
* ``tar -cf``: GNU tar of the same dir (no digest).

Also the record's size (gzip'd).  Needs root (the apply keeps owners).

    python bench/bench_reassemble.py [--repeat 5] [--dir /var/tmp] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bench_export import SHM, gnu_tar, log, make_layer, paired

from overlayfs.apply import apply_layer
from overlayfs.export import export_layer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp", help="where the layers are made")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ovl-bench-reasm-", dir=args.dir)
    out = os.path.join(SHM, f"ovl-bench-reasm-{os.getpid()}.tar")
    try:
        src = os.path.join(base, "src")
        shape = make_layer(src)
        packed = os.path.join(base, "layer.tar")
        subprocess.run(["tar", "--format=posix", "-cf", packed, "-C", src, "."], check=True)
        layer = os.path.join(base, "layer")
        split = io.BytesIO()
        with open(packed, "rb") as f:
            applied = apply_layer(f, layer, tar_split=split, sync=False)
        record = split.getvalue()
        log(f"layer: {shape['entries']} entries, {shape['bytes'] / 1e6:.0f} MB; "
            f"record {len(record) / 1024:.0f} KiB gzip'd")

        def reassemble() -> None:
            r = export_layer(layer, out, tar_split=record, expect_diff_id=applied.diff_id)
            assert r.reassembled

        def export() -> None:
            export_layer(layer, out)

        def tar() -> None:
            gnu_tar(layer, out)

        t_re, t_tar = paired(reassemble, tar, args.repeat)
        t_ex, t_tar2 = paired(export, tar, args.repeat)
        reassemble()
        with open(out, "rb") as f, open(packed, "rb") as g:
            same = f.read() == g.read()
        res = {"entries": shape["entries"], "bytes": shape["bytes"],
               "record_bytes": len(record), "identical": same,
               "reassemble_s": t_re, "export_s": t_ex, "tar_s": (t_tar + t_tar2) / 2,
               "reassemble_vs_tar": t_re / t_tar, "export_vs_tar": t_ex / t_tar2,
               "reassemble_vs_export": t_re / t_ex}
        print(f"reassemble {t_re:.3f} s ({t_re / t_tar:.2f}x tar -cf {t_tar:.3f} s), "
              f"export {t_ex:.3f} s ({t_ex / t_tar2:.2f}x tar -cf {t_tar2:.3f} s); "
              f"reassemble/export {t_re / t_ex:.2f}x; byte-identical: {same}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if os.path.exists(out):
            os.unlink(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
