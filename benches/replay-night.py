#!/usr/bin/python3
"""replay-night.py RANGES SOURCE.raw NBD_URI

Replays one night of the shared workload as guest writes: for each `OFFSET LENGTH` line
of RANGES (workload_helpers.py changed-ranges), reads those bytes of SOURCE.raw and
writes them through the NBD export NBD_URI (a read-write qemu-nbd over the qcow2, so
QEMU's own dirty bitmap records them). Needs Debian's python3-libnbd.
"""
import sys

import nbd

ranges, source, uri = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
written = 0
with open(source, "rb") as src, open(ranges) as lines:
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        off, length = (int(x) for x in line.split())
        while length > 0:
            n = min(length, 32 << 20)
            src.seek(off)
            h.pwrite(src.read(n), off)
            off += n
            length -= n
            written += n
h.flush()
h.shutdown()
print(written)
