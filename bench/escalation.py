#!/usr/bin/env python3
"""The escalation mix against VaultFS (release, default configuration), with `vaultfs loadtest`.

For each uploader count (default 50, 200, 1000) with 100 subscribers: a fresh server in a fresh
directory on 127.0.0.1, one loadtest run, the server's peak RSS and CPU time, then the server is
stopped by its PID. Prints a Markdown table and writes it to bench/results/escalation-*.md.

The server also serves its probe listener (--probe-listen), and the load tool's prober asks
/healthz there, the way an orchestrator would (issue 18: the probes never share the API
listener or its runtime). BIN=path runs another build of the server (the load tool is always
this checkout's).

Usage: bench/escalation.py [--uploaders 50,200,1000] [--subscribers 100] [--duration 30s]
                           [--sizes 4KiB:50,1MiB:45,64MiB:5] [--server-bin PATH] [--no-build]
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vaultfs-target"))
BIN = os.path.join(TARGET, "release", "vaultfs")
PORT = 18311
PROBE_PORT = 18312


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploaders", default="50,200,1000")
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--duration", default="30s")
    ap.add_argument("--sizes", default="4KiB:50,1MiB:45,64MiB:5")
    ap.add_argument("--server-bin", default=BIN, help="the server build to measure (default: this checkout's)")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(f"cd {ROOT} && CARGO_TARGET_DIR={TARGET} cargo build --release --locked -q", shell=True, check=True)
    rows = []
    for n in [int(x) for x in a.uploaders.split(",")]:
        work = tempfile.mkdtemp(prefix=f"vaultfs-esc-{n}-", dir="/tmp")
        log = open(os.path.join(work, "server.log"), "w")
        srv = subprocess.Popen([a.server_bin, "serve", "--listen", f"127.0.0.1:{PORT}", "--probe-listen",
                                f"127.0.0.1:{PROBE_PORT}", "--data-dir", f"{work}/data"],
                               stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="warn"))
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        report_path = os.path.join(work, "report.json")
        cpu0 = cpu_seconds(srv.pid)
        lt = subprocess.run([BIN, "loadtest", "--url", f"http://127.0.0.1:{PORT}", "--uploaders", str(n),
                             "--subscribers", str(a.subscribers), "--duration", a.duration, "--sizes", a.sizes,
                             "--probe-url", f"http://127.0.0.1:{PROBE_PORT}",
                             "--json", report_path], capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"))
        cpu = cpu_seconds(srv.pid) - cpu0
        rss = peak_rss_mib(srv.pid)
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=60)
        print(lt.stdout, file=sys.stderr)
        r = json.load(open(report_path))
        # Each row stores gigabytes of blobs: remove them before the next row (a run of
        # several rows once filled the disk).
        shutil.rmtree(work, ignore_errors=True)
        up, health = r["kinds"].get("upload", {}), r["kinds"].get("health", {})
        done = sum(k["count"] - k["errors"] for name, k in r["kinds"].items() if name in ("upload", "download", "move"))
        total = sum(k["count"] for name, k in r["kinds"].items() if name in ("upload", "download", "move"))
        rows.append({
            "uploaders": n, "passed": r["passed"], "completed": f"{100.0 * done / max(total, 1):.1f}%",
            "uploads_s": up.get("per_sec", 0), "mib_s": up.get("mib_per_sec", 0),
            "up_p50": up.get("latency", {}).get("p50_ms", 0), "up_p99": up.get("latency", {}).get("p99_ms", 0),
            "h_p50": health.get("latency", {}).get("p50_ms", 0), "h_p99": health.get("latency", {}).get("p99_ms", 0),
            "h_max": health.get("latency", {}).get("max_ms", 0), "stall": r["longest_stall_seconds"],
            "ev": r["events"], "rss": rss, "cpu_per_upload_ms": 1000 * cpu / max(up.get("count", 1), 1),
            "errors": r["errors_by_status"], "tool_cores": (r.get("load_tool") or {}).get("cores"),
            "server_cores": cpu / max(r["seconds"], 1e-9),
        })
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
             f"{a.duration} per row, sizes {a.sizes}, {a.subscribers} subscribers; client and server share the cores; "
             f"server {a.server_bin}.", "",
             "| uploaders | passed | completed | uploads/s | MiB/s | upload p50 / p99 ms | health p50 / p99 / max ms | longest zero-completion window s | events delivered (gaps) | event latency p50 / p99 ms | server peak RSS MiB | server CPU ms per upload | server / load tool cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        ev = x["ev"]
        lines.append(f"| {x['uploaders']} | {x['passed']} | {x['completed']} | {x['uploads_s']:.1f} | {x['mib_s']:.1f} | "
                     f"{x['up_p50']:.0f} / {x['up_p99']:.0f} | {x['h_p50']:.1f} / {x['h_p99']:.1f} / {x['h_max']:.1f} | "
                     f"{x['stall']:.2f} | {ev['delivered']} ({ev['gaps']}) | {ev['delivery_latency']['p50_ms']:.0f} / "
                     f"{ev['delivery_latency']['p99_ms']:.0f} | {x['rss']:.0f} | {x['cpu_per_upload_ms']:.1f} | "
                     f"{x['server_cores']:.2f} / {x['tool_cores'] if x['tool_cores'] is None else round(x['tool_cores'], 2)} |")
        if x["errors"]:
            lines.append(f"|  | errors: {x['errors']} ||||||||||||")
    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", time.strftime("escalation-%Y%m%d-%H%M.md", time.gmtime()))
    open(out, "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
