#!/usr/bin/env python3
"""The disk's durable small-file rate: 4 KiB files made durable one at a time (fdatasync, rename,
dir fsync) and in batches of 64 with two syncfs calls. Usage: bench/fsync_probe.py [DIR]"""
import os, time, ctypes, uuid
libc = ctypes.CDLL(None, use_errno=True)
import sys; d = (sys.argv[1] if len(sys.argv) > 1 else "/tmp") + "/fsync-probe"; os.makedirs(d, exist_ok=True)
def batch(n, mode):
    t=time.time(); paths=[]
    for i in range(n):
        p=f"{d}/{uuid.uuid4().hex}"; fd=os.open(p, os.O_WRONLY|os.O_CREAT); os.write(fd, os.urandom(4096))
        if mode=="fdatasync": os.fdatasync(fd)
        os.close(fd); paths.append(p)
    if mode=="syncfs":
        fd=os.open(d, os.O_RDONLY); libc.syncfs(fd); os.close(fd)
    for p in paths: os.rename(p, p+".b")
    fd=os.open(d, os.O_RDONLY)
    if mode=="syncfs": libc.syncfs(fd)
    else: os.fsync(fd)
    os.close(fd)
    return time.time()-t
for mode in ("fdatasync","syncfs"):
    for n in (1,64):
        ts=[batch(n,mode) for _ in range(5)]
        ts.sort(); print(mode, n, "median %.1f ms -> %.0f files/s"%(ts[2]*1000, n/ts[2]))
import shutil; shutil.rmtree(d)
