#!/usr/bin/env python3
"""Rebuilds a folder as a power cut would have left it, from a snapshot taken before and the
log that stress/powercut/shim.c wrote meanwhile (see its header for the format).

    replay.py SNAPSHOT LOG TRACED_DIR OUT

A change to a file survives only if a sync of that same file began after the change was
recorded and ended before the cut; every other change is dropped (the harshest a disk may be:
it may also keep some of them, which SQLite must survive too, but a printed id must survive
the harshest). Truncations follow the same rule; unlinks are applied in order. Prints one summary
line: records, kept and dropped changes per file.
"""

import os
import shutil
import struct
import sys


def records(log):
    with open(log, "rb") as f:
        data = f.read()
    at = 0
    while at + 4 <= len(data):
        (total,) = struct.unpack_from("<I", data, at)
        if total < 17 or at + total > len(data):
            break  # a record cut short by the kill: never written whole, so never synced
        kind = chr(data[at + 4])
        (plen,) = struct.unpack_from("<I", data, at + 5)
        path = data[at + 9 : at + 9 + plen].decode()
        (offset,) = struct.unpack_from("<q", data, at + 9 + plen)
        body = data[at + 17 + plen : at + total]
        yield kind, path, offset, body
        at += total


def main():
    snapshot, log, traced, out = sys.argv[1:5]
    recs = list(records(log))
    began = {}  # token -> (index, path)
    durable_until = {}  # path -> index of the latest sync begun and ended
    for i, (kind, path, offset, _) in enumerate(recs):
        if kind == "B":
            began[offset] = (i, path)
        elif kind == "E" and offset in began:
            b, p = began.pop(offset)
            durable_until[p] = max(durable_until.get(p, -1), b)
    if os.path.exists(out):
        shutil.rmtree(out)
    shutil.copytree(snapshot, out, symlinks=True)
    kept, dropped = {}, {}
    for i, (kind, path, offset, body) in enumerate(recs):
        if kind in ("B", "E"):
            continue
        name = os.path.relpath(path, traced)
        target = os.path.join(out, name)
        # Directory changes are taken as durable at once (ext4 journals them in order; bgq's
        # layout never unlinks while publishers run, an older one did after every publish).
        if kind != "U" and i >= durable_until.get(path, -1):
            dropped[name] = dropped.get(name, 0) + 1
            continue
        kept[name] = kept.get(name, 0) + 1
        if kind == "W":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, body, offset)
            finally:
                os.close(fd)
        elif kind == "T":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, offset)
            finally:
                os.close(fd)
        elif kind == "O":
            open(target, "wb").close()
        elif kind == "U":
            if os.path.exists(target):
                os.unlink(target)
    summary = ", ".join(
        f"{name} {kept.get(name, 0)} kept/{dropped.get(name, 0)} dropped"
        for name in sorted(set(kept) | set(dropped))
    )
    print(f"{len(recs)} records; {summary}")


if __name__ == "__main__":
    main()
