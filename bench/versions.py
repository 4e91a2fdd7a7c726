#!/usr/bin/env python3
"""The cost of versions (issue 20): the escalation mix with versions on (the default
`versions_keep = 10`, trash 7 d) against `versions_keep = 0` with the trash off, interleaved
in one run, plus a replace-heavy mix (every upload replaces one of 64 paths, so every upload
keeps an old version). Each server is a fresh release binary in a fresh directory on
127.0.0.1, stopped by its PID. Reports medians and the ratio on / off, and the metadata bytes
per kept version (SQLite file size per version, after a checkpoint).

Usage: bench/versions.py [--reps 3] [--uploaders 200] [--duration 20s]
"""
import argparse, concurrent.futures, hashlib, json, os, shutil, signal, sqlite3, statistics, subprocess, sys
import tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vaultfs-target"))
# VAULTFS_BIN names a built binary and skips the build.
BIN = os.environ.get("VAULTFS_BIN") or os.path.join(TARGET, "release", "vaultfs")
PORT = 18331
CONFIGS = {
    "versions on (keep 10, trash 7d)": {"VAULTFS_VERSIONS_KEEP": "10", "VAULTFS_TRASH_RETENTION": "7d"},
    "versions off (keep 0, trash off)": {"VAULTFS_VERSIONS_KEEP": "0", "VAULTFS_TRASH_RETENTION": "off"},
}


def start(env, work):
    log = open(os.path.join(work, "server.log"), "w")
    srv = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir", f"{work}/data"],
                           stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="warn", **env))
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
            return srv
        except Exception:
            time.sleep(0.05)
    srv.kill()
    raise SystemExit(f"server did not start: {open(os.path.join(work, 'server.log')).read()}")


def stop(srv):
    srv.send_signal(signal.SIGTERM)
    srv.wait(timeout=60)


def escalation(env, a):
    work = tempfile.mkdtemp(prefix="vaultfs-ver-", dir="/tmp")
    try:
        srv = start(env, work)
        report = os.path.join(work, "report.json")
        subprocess.run([BIN, "loadtest", "--url", f"http://127.0.0.1:{PORT}", "--uploaders", str(a.uploaders),
                        "--subscribers", "20", "--duration", a.duration, "--sizes", a.sizes, "--json", report],
                       capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"))
        stop(srv)
        r = json.load(open(report))
        return r["kinds"].get("upload", {}).get("per_sec", 0.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def replace_heavy(env, a):
    """Uploads of 4 KiB to 64 paths, 16 at a time, for the duration: each replaces a file."""
    work = tempfile.mkdtemp(prefix="vaultfs-ver-", dir="/tmp")
    try:
        srv = start(env, work)
        end = time.monotonic() + float(a.duration.rstrip("s"))

        def worker(w):
            n = 0
            while time.monotonic() < end:
                body = hashlib.sha256(f"{w}-{n}".encode()).digest() * 128
                req = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/v1/fs/rep/{(w * 7 + n) % 64}.bin",
                                             data=body, method="PUT")
                urllib.request.urlopen(req, timeout=30).read()
                n += 1
            return n

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            done = sum(ex.map(worker, range(16)))
        rate = done / (time.monotonic() - t0)
        stop(srv)
        db = os.path.join(work, "data", "meta.db")
        per_version = None
        if os.path.exists(db):
            con = sqlite3.connect(db)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            kept = con.execute("SELECT count(*) FROM versions").fetchone()[0]
            # The pages of the versions table, plus each kept version's blob row (its blob
            # stays referenced): what a version costs the metadata store.
            pages = con.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'versions'").fetchone()[0]
            blob_rows = con.execute("SELECT count(*) FROM blobs").fetchone()[0]
            blob_pages = con.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'blobs' OR name LIKE 'sqlite_autoindex_blobs%'").fetchone()[0]
            con.close()
            if kept:
                per_version = (kept, pages / kept, blob_pages / max(blob_rows, 1))
        return rate, per_version
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--uploaders", type=int, default=200)
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--sizes", default="4KiB:50,1MiB:45,64MiB:5")
    a = ap.parse_args()
    if not os.environ.get("VAULTFS_BIN"):
        subprocess.run(f"cd {ROOT} && CARGO_TARGET_DIR={TARGET} cargo build --release --locked -q --bin vaultfs",
                       shell=True, check=True)
    esc = {k: [] for k in CONFIGS}
    rep = {k: [] for k in CONFIGS}
    sizes = {}
    for i in range(a.reps):
        for name, env in CONFIGS.items():
            esc[name].append(escalation(env, a))
            rate, pv = replace_heavy(env, a)
            rep[name].append(rate)
            sizes[name] = pv
            print(f"rep {i + 1} {name}: escalation {esc[name][-1]:.1f} uploads/s, replace {rate:.1f} uploads/s",
                  file=sys.stderr)
    on, off = list(CONFIGS)
    med = lambda xs: statistics.median(xs) if xs else 0.0
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, median of "
             f"{a.reps} interleaved repeats, {a.duration} each; escalation mix {a.uploaders} uploaders, "
             f"sizes {a.sizes}; replace mix 16 clients x 4 KiB PUTs over 64 paths.", "",
             "| workload | versions on uploads/s | versions off uploads/s | on / off |", "|---|---|---|---|"]
    for label, d in (("escalation mix", esc), ("replace-heavy (every upload keeps a version)", rep)):
        lines.append(f"| {label} | {med(d[on]):.1f} | {med(d[off]):.1f} | {med(d[on]) / max(med(d[off]), 1e-9):.2f}x |")
    if sizes.get(on):
        kept, row, blob = sizes[on]
        lines += ["", f"Metadata per kept version (SQLite pages via dbstat, replace mix, {kept} versions kept): "
                      f"{row:.0f} B in `versions` plus {blob:.0f} B for its blob's row in `blobs` "
                      f"= {row + blob:.0f} B."]
    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    open(os.path.join(ROOT, "bench", "results", time.strftime("versions-%Y%m%d-%H%M.md", time.gmtime())), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
