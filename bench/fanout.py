#!/usr/bin/env python3
"""Sync fan-out (issue 18, target 5) against VaultFS (release), with `vaultfs loadtest`.

Two rows, each on a fresh server in a fresh directory on 127.0.0.1, stopped by its PID:
  - 1,000 subscribers while the feed carries 100 events/s (4 KiB uploads paced with --rate);
  - 10,000 subscribers, mostly idle, at 10 events/s.
Delivery latency is from the event's commit timestamp (millisecond resolution) to receipt by
the subscriber. Reported beside it: the server's peak RSS and CPU, and the load tool's own CPU
and RSS (it shares the machine's cores with the server). Writes bench/results/fanout-*.md.

Usage: bench/fanout.py [--rows 1000:100,10000:10] [--duration 20s] [--server-bin PATH] [--no-build]
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vaultfs-target"))
BIN = os.path.join(TARGET, "release", "vaultfs")
PORT = 18321


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1000:100,10000:10", help="SUBSCRIBERS:EVENTS_PER_S,...")
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--server-bin", default=BIN)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(f"cd {ROOT} && CARGO_TARGET_DIR={TARGET} cargo build --release --locked -q", shell=True, check=True)
    rows = []
    for row in a.rows.split(","):
        subs, rate = (int(x) for x in row.split(":"))
        work = tempfile.mkdtemp(prefix=f"vaultfs-fanout-{subs}-", dir="/tmp")
        log = open(os.path.join(work, "server.log"), "w")
        # Room for the subscribers plus the uploaders, downloader and prober.
        srv = subprocess.Popen([a.server_bin, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir", f"{work}/data",
                                "--max-connections", str(max(10_000, subs + 1_000))],
                               stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="warn"))
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        report_path = os.path.join(work, "report.json")
        cpu0 = cpu_seconds(srv.pid)
        lt = subprocess.run([BIN, "loadtest", "--url", f"http://127.0.0.1:{PORT}", "--uploaders", "64",
                             "--downloaders", "4", "--movers", "0", "--subscribers", str(subs), "--rate", str(rate),
                             "--sizes", "4KiB:100", "--duration", a.duration, "--json", report_path],
                            capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"))
        cpu = cpu_seconds(srv.pid) - cpu0
        rss, hwm = status_mib(srv.pid, "VmRSS"), status_mib(srv.pid, "VmHWM")
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=60)
        print(lt.stdout, lt.stderr[-2000:], file=sys.stderr)
        r = json.load(open(report_path))
        shutil.rmtree(work, ignore_errors=True)
        ev, tool = r["events"], r.get("load_tool") or {}
        rows.append(dict(subs=subs, rate=rate, passed=r["passed"], connected=ev.get("connected"),
                         delivered=ev["delivered"], gaps=ev["gaps"], lat=ev["delivery_latency"],
                         ev_s=ev["expected_per_subscriber"] / max(r["seconds"], 1e-9), hwm=hwm,
                         server_cores=cpu / max(r["seconds"], 1e-9), tool_cores=tool.get("cores"),
                         tool_rss=tool.get("peak_rss_mib"), failures=r["failures"][:3]))
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {a.duration} per row, "
             f"server {a.server_bin}; load tool and server share the cores.", "",
             "| subscribers | events/s (asked / fed) | passed | connected | delivered (gaps) | delivery p50 / p99 / max ms | server peak RSS MiB | server cores | load tool cores | load tool peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        l = x["lat"]
        tc = "n/a" if x["tool_cores"] is None else f"{x['tool_cores']:.2f}"
        tr = "n/a" if x["tool_rss"] is None else f"{x['tool_rss']:.0f}"
        lines.append(f"| {x['subs']} | {x['rate']} / {x['ev_s']:.1f} | {x['passed']} | {x['connected']} | {x['delivered']} ({x['gaps']}) | "
                     f"{l['p50_ms']:.1f} / {l['p99_ms']:.1f} / {l['max_ms']:.1f} | {x['hwm']:.0f} | {x['server_cores']:.2f} | {tc} | {tr} |")
        for f in x["failures"]:
            lines.append(f"|  | failure: {f} |||||||||")
    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", time.strftime("fanout-%Y%m%d-%H%M.md", time.gmtime()))
    open(out, "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
