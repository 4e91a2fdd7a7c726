#!/usr/bin/env python3
"""VaultFS against nginx (WebDAV PUT) and dufs on the same workloads, back to back.

Every server listens on 127.0.0.1 only, gets a fresh directory per workload and repeat, and is
stopped by its PID. One load tool (oha) drives the plain HTTP workloads; curl times the single
1 GiB transfers. Each (server, workload) runs REPS times, interleaved, and the median is
reported with VaultFS/peer ratios. Also measures the machine's limits. Writes a Markdown table
to bench/results/peers-<timestamp>.md and prints it.

Usage: bench/peers.py [--reps 3] [--quick] [--servers vaultfs,nginx] [--workloads "4 KiB,GET"]
(quick: 256 MiB instead of 1 GiB, fewer requests; --workloads: only workloads whose name contains
one of the comma-separated strings, for focused runs while developing)
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request, hashlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vaultfs-target"))
PORTS = {"vaultfs": 18301, "nginx": 18302, "dufs": 18303, "vaultfs-before": 18304}
# --before PATH: another VaultFS binary (an earlier build) run as the server "vaultfs-before",
# so a change's before and after ratios come from one run.
BEFORE_BIN = None


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True, **kw).stdout


def ensure_tools(servers, need_oha=True):
    if "nginx" in servers and not shutil.which("nginx"):
        sh("apt-get update -qq && apt-get install -y -qq nginx-light")
    if not shutil.which("wrk"):
        sh("apt-get update -qq && apt-get install -y -qq wrk")
    cargo_bin = os.path.expanduser("~/.cargo/bin")
    os.environ["PATH"] = cargo_bin + ":" + os.environ["PATH"]
    for tool in ("oha", "dufs"):
        if (tool == "dufs" and "dufs" not in servers) or (tool == "oha" and (not need_oha or os.environ.get("PEERS_CLIENT") == "wrk")):
            continue
        if not shutil.which(tool):
            print(f"installing {tool} (takes minutes)...", file=sys.stderr)
            sh(f"cargo install --locked {tool}")
    os.environ["CARGO_TARGET_DIR"] = TARGET
    if any(k.startswith("vaultfs") for k in servers) and not os.environ.get("PEERS_NO_BUILD"):
        sh(f"cd {ROOT} && cargo build --release --locked -q")


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Server:
    def __init__(self, kind, work):
        self.kind, self.port = kind, PORTS[kind]
        self.dir = tempfile.mkdtemp(prefix=f"{kind}-", dir=work)
        log = open(os.path.join(self.dir, "server.log"), "w")
        if kind.startswith("vaultfs"):
            binary = BEFORE_BIN if kind == "vaultfs-before" else os.path.join(TARGET, "release", "vaultfs")
            cmd = [binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                   "--data-dir", os.path.join(self.dir, "data")]
            env = dict(os.environ, RUST_LOG="warn")
        elif kind == "dufs":
            os.makedirs(os.path.join(self.dir, "root", "up"))  # dufs does not create parents
            cmd = ["dufs", "--allow-upload", "--allow-delete", "-b", "127.0.0.1", "-p", str(self.port),
                   os.path.join(self.dir, "root")]
            env = os.environ
        else:
            root = os.path.join(self.dir, "root")
            os.makedirs(root)
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                user = "user root;" if os.geteuid() == 0 else ""
                f.write(f"""
{user}
worker_processes 2;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  client_max_body_size 0;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port};
    root {root};
    location / {{ dav_methods PUT DELETE; create_full_put_path on; }}
  }}
}}""")
            cmd = ["nginx", "-c", conf]
            env = os.environ
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        wait_port(self.port)

    def pids(self):
        out = subprocess.run(f"pgrep -g {self.proc.pid}", shell=True, text=True, capture_output=True).stdout
        return [int(p) for p in out.split()] or [self.proc.pid]

    def peak_rss_mib(self):
        total = 0
        for pid in self.pids():
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def upload_url(self, name):
        if self.kind.startswith("vaultfs"):
            return f"http://127.0.0.1:{self.port}/api/v1/files/upload?path={name}"
        return f"http://127.0.0.1:{self.port}/{name}"

    def upload_regex(self):
        if self.kind.startswith("vaultfs"):
            return f"http://127[.]0[.]0[.]1:{self.port}/api/v1/files/upload[?]path=up/[a-z0-9]{{20}}"
        # Character classes, not backslashes: oha's URL generator drops the escapes.
        return f"http://127[.]0[.]0[.]1:{self.port}/up/[a-z0-9]{{20}}"

    def method(self):
        return "POST" if self.kind.startswith("vaultfs") else "PUT"

    def put_file(self, name, path):
        out = sh(f"curl -sS -X {self.method()} -T {path} -o /dev/null -w '%{{http_code}} %{{time_total}}' '{self.upload_url(name)}'")
        code, secs = out.split()
        assert code in ("200", "201", "204"), out
        return float(secs)

    def download_url(self, name):
        if self.kind.startswith("vaultfs"):
            return f"http://127.0.0.1:{self.port}/api/v1/fs/{name}"
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def oha(args):
    out = sh(f"oha --no-tui --output-format json {args}")
    j = json.loads(out)
    s = j["summary"]
    lat = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    bad = {k: v for k, v in codes.items() if not k.startswith("2")}
    errs = j.get("errorDistribution", {})
    if bad or errs:
        raise RuntimeError(f"non-2xx {bad} errors {errs}")
    return {"rps": s["requestsPerSec"], "p50": lat.get("p50", 0) * 1000, "p99": lat.get("p99", 0) * 1000}


def wrk(srv, path, method, unique=False, body=None, secs=5):
    """64 connections for `secs` seconds with wrk and bench/put_small.lua: GETs of `path`, or
    PUTs (POSTs) of `body` (default 4 KiB) to fresh names under `path`."""
    script = os.path.join(ROOT, "bench", "put_small.lua")
    out = sh(f"wrk -t 2 -c 64 -d {secs}s -s {script} http://127.0.0.1:{srv.port} -- "
             f"{method} '{path}' {1 if unique else 0} {body or ''}")
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    j = json.loads(line[5:])
    if j["non2xx"] or j["errors"]:
        raise RuntimeError(f"wrk: {j}")
    return {"rps": j["requests"] / j["seconds"], "p50": j["p50"], "p99": j["p99"]}


def upload_prefix(srv):
    return "/api/v1/files/upload?path=up/" if srv.kind.startswith("vaultfs") else "/up/"


def load_client():
    """oha when installed (the earlier runs' client), else wrk (a Debian package)."""
    if os.environ.get("PEERS_CLIENT") == "wrk":
        return "wrk"
    return "oha" if shutil.which("oha") else "wrk"


def workloads(big_mib, n_1m, n_4k, n_get):
    def put_big(srv, files):
        secs = srv.put_file("big.bin", files["big"])
        return {"rate": big_mib / secs, "unit": "MiB/s", "p50": secs * 1000, "p99": secs * 1000}

    def put_1m(srv, files):
        if load_client() == "wrk":
            r = wrk(srv, upload_prefix(srv), srv.method(), body=files["1m"])
        else:
            r = oha(f"-n {n_1m} -c 64 -m {srv.method()} -D {files['1m']} --rand-regex-url '{srv.upload_regex()}'")
        return {"rate": r["rps"], "unit": "req/s", "p50": r["p50"], "p99": r["p99"]}

    def put_4k(srv, files):
        if load_client() == "wrk":
            r = wrk(srv, upload_prefix(srv), srv.method(), body=files["4k"])
        else:
            r = oha(f"-n {n_4k} -c 64 -m {srv.method()} -D {files['4k']} --rand-regex-url '{srv.upload_regex()}'")
        return {"rate": r["rps"], "unit": "req/s", "p50": r["p50"], "p99": r["p99"]}

    def put_4k_wrk(unique):
        def run(srv, files):
            r = wrk(srv, upload_prefix(srv), srv.method(), unique=unique)
            return {"rate": r["rps"], "unit": "req/s", "p50": r["p50"], "p99": r["p99"]}
        return run

    def get_big(srv, files):
        srv.put_file("big.bin", files["big"])
        out = sh(f"curl -sS -o /dev/null -w '%{{http_code}} %{{time_total}}' '{srv.download_url('big.bin')}'")
        code, secs = out.split()
        assert code == "200", out
        return {"rate": big_mib / float(secs), "unit": "MiB/s", "p50": float(secs) * 1000, "p99": float(secs) * 1000}

    def get_1m(srv, files):
        srv.put_file("one.bin", files["1m"])
        if load_client() == "wrk":
            url = srv.download_url("one.bin")
            r = wrk(srv, url[url.index("/", len("http://")):], "GET")
        else:
            r = oha(f"-n {n_get} -c 64 '{srv.download_url('one.bin')}'")
        return {"rate": r["rps"], "unit": "req/s", "p50": r["p50"], "p99": r["p99"]}

    return [
        (f"PUT one {big_mib} MiB file", put_big),
        ("PUT 64 x 1 MiB concurrent", put_1m),
        ("PUT 64 x 4 KiB concurrent", put_4k),
        ("PUT 64 x 4 KiB concurrent, unique bodies (wrk)", put_4k_wrk(True)),
        (f"GET one {big_mib} MiB file", get_big),
        ("GET 64 x 1 MiB concurrent", get_1m),
    ]


def machine_limits(work, big_mib):
    res = {}
    out = sh(f"dd if=/dev/zero of={work}/dd.bin bs=1M count={big_mib} conv=fdatasync 2>&1 | tail -1")
    res["dd write, conv=fdatasync"] = out.strip().split(",")[-1].strip()
    os.remove(f"{work}/dd.bin")
    d = tempfile.mkdtemp(dir=work)
    data = os.urandom(4096)
    n = 1000
    t = time.time()
    dfd = os.open(d, os.O_RDONLY)
    for i in range(n):
        tmp, dst = f"{d}/t{i}", f"{d}/f{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(tmp, dst)
        os.fsync(dfd)
    os.close(dfd)
    res["4 KiB files made durable one at a time (temp, fdatasync, rename, dir fsync)"] = f"{n / (time.time() - t):.0f} files/s"
    buf = os.urandom(64 << 20)
    t = time.time()
    for _ in range(8):
        hashlib.sha256(buf).digest()
    res["SHA-256, one core (OpenSSL via hashlib)"] = f"{8 * 64 / (time.time() - t):.0f} MiB/s"
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--servers", default="vaultfs,nginx,dufs")
    ap.add_argument("--before", default="", help="path of an earlier vaultfs binary, run as server vaultfs-before")
    ap.add_argument("--workloads", default="", help="only workloads whose name contains one of these (comma-separated)")
    a = ap.parse_args()
    big_mib = 256 if a.quick else 1024
    n_1m, n_4k, n_get = (320, 3200, 3200) if a.quick else (640, 6400, 6400)
    servers = a.servers.split(",")
    if a.before:
        global BEFORE_BIN
        BEFORE_BIN = os.path.abspath(a.before)
        servers.insert(1, "vaultfs-before")
    wanted = [w for w in a.workloads.split(",") if w]
    selected = [(n, f) for n, f in workloads(big_mib, n_1m, n_4k, n_get) if not wanted or any(w in n for w in wanted)]
    ensure_tools(servers, any("(wrk)" not in n and "MiB file" not in n for n, _ in selected))
    work = tempfile.mkdtemp(prefix="vaultfs-bench-", dir="/tmp")
    files = {"big": f"{work}/big.bin", "1m": f"{work}/1m.bin", "4k": f"{work}/4k.bin"}
    if any("MiB file" in n for n, _ in selected):
        sh(f"head -c {big_mib << 20} /dev/urandom > {files['big']}")
    sh(f"head -c 1048576 /dev/urandom > {files['1m']}; head -c 4096 /dev/urandom > {files['4k']}")
    limits = machine_limits(work, big_mib) if not wanted else {}
    results = {}  # (workload, server) -> list of dicts
    for name, fn in selected:
        for rep in range(a.reps):
            for kind in servers:  # interleaved: noise hits every server alike
                srv = Server(kind, work)
                try:
                    r = fn(srv, files)
                    r["rss"] = srv.peak_rss_mib()
                finally:
                    srv.stop()
                    # Each GET of 1 GiB leaves 1 GiB behind per server and repeat: free it now.
                    shutil.rmtree(srv.dir, ignore_errors=True)
                results.setdefault((name, kind), []).append(r)
                print(f"{name:32} {kind:8} rep {rep + 1}: {r['rate']:.1f} {r['unit']} p99 {r['p99']:.1f} ms rss {r['rss']:.1f} MiB", file=sys.stderr)
    med = lambda xs: statistics.median(xs)
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, median of {a.reps} interleaved repeats, "
             f"load client {load_client()}, load average before {os.getloadavg()[0]:.1f}.", ""]
    lines.append("| machine limit | measured |")
    lines.append("|---|---|")
    for k, v in limits.items():
        lines.append(f"| {k} | {v} |")
    lines.append("")
    lines.append("| workload | server | throughput | p50 ms | p99 ms | peak RSS MiB | VaultFS / this | this / nginx |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, _ in selected:
        base = med([r["rate"] for r in results[(name, "vaultfs")]]) if "vaultfs" in servers else None
        for kind in servers:
            rs = results[(name, kind)]
            rate = med([r["rate"] for r in rs])
            ratio = "" if kind == "vaultfs" or not base else f"{base / rate:.2f}x"
            ng = med([r["rate"] for r in results[(name, "nginx")]]) if "nginx" in servers else None
            to_nginx = "" if kind == "nginx" or not ng else f"{rate / ng:.2f}x"
            lines.append(f"| {name} | {kind} | {rate:.1f} {rs[0]['unit']} | {med([r['p50'] for r in rs]):.1f} | "
                         f"{med([r['p99'] for r in rs]):.1f} | {med([r['rss'] for r in rs]):.1f} | {ratio} | {to_nginx} |")
    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", time.strftime("peers-%Y%m%d-%H%M.md", time.gmtime()))
    with open(out, "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\nwritten to {out}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
