#!/usr/bin/env python3
"""eddy beside nginx and HAProxy: same origin, same load, one run.

Started by `bench/run`, which installs nginx, haproxy and wrk and builds eddy.
Everything listens on 127.0.0.1 (ports 18200-18299 and, for the 1,000-origin
run, 19000-19999); every process started here is stopped by PID at the end.

Cases, measured in alternation so that drift on a shared machine hits all of
them alike:
  eddy     eddy's forward listener (the app's HTTP_PROXY), pool bound BOUND
  nginx    nginx `upstream { keepalive BOUND; }`, one worker per core
  haproxy  HAProxy `http-reuse always`, `server ... maxconn BOUND`, one thread per core
  direct   no proxy: the client talks to the origin itself
  ceiling  the proxy nginx answering the 1 KiB itself: no upstream leg at all
Every client sends the absolute-form target an app behind HTTP_PROXY sends
(`GET http://127.0.0.1:PORT/1k`); nginx and HAProxy accept it as well.
Each case has an origin port of its own, so the origin's accepts and the
TIME-WAIT sockets toward it are attributed to one case.
"""

import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = bool(os.environ.get("BENCH_QUICK"))
# A quick run must not overwrite the committed results.
OUT = os.environ.get("BENCH_OUT") or (
    tempfile.mkdtemp(prefix="eddy-bench-quick-") if QUICK else os.path.join(ROOT, "bench", "results")
)
# Five short runs a cell rather than three long ones: on a shared machine a
# median of five is steadier, for the same seven minutes.
DURATION = 2 if QUICK else 3  # seconds per cell
ROUNDS = 1 if QUICK else 5
CORES = os.cpu_count() or 1
BOUND = 16  # upstream connections per origin, for every proxy
BODY = "x" * 1023 + "\n"  # the 1 KiB response
TICK = os.sysconf("SC_CLK_TCK")
# Every process inherits the hard descriptor limit; HAProxy needs two
# descriptors per client connection it accepts.
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if NOFILE == resource.RLIM_INFINITY:
    NOFILE = 1 << 20

ORIGIN = {"eddy": 18201, "nginx": 18202, "haproxy": 18203, "direct": 18204, "ceiling": None}
STALE_ORIGIN = 18205
STATUS = 18209
FRONT = {"eddy": 18211, "nginx": 18212, "haproxy": 18213, "direct": 18204, "ceiling": 18214}
STALE_FRONT = {"eddy": 18211, "nginx": 18222, "haproxy": 18223}
EDDY_ADMIN = 18219
MANY_BASE, MANY = 19000, 1000
CASES = ["eddy", "nginx", "haproxy", "direct", "ceiling"]
PROXIES = ["eddy", "nginx", "haproxy"]
LOADS = [("legacy", 1), ("legacy", 16), ("legacy", 64), ("keep-alive", 64)]

WORK = tempfile.mkdtemp(prefix="eddy-bench-")
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def write(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start(name, argv, port):
    out = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=WORK)
    PROCS.append(p)
    deadline = time.time() + 15
    while time.time() < deadline:
        if p.poll() is not None:
            sys.exit(f"{name} exited: see {out.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} did not listen on {port}")


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def family(pid):
    """The process and its children (nginx workers)."""
    pids = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def status_kib(pids, key):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def accepts():
    with urllib.request.urlopen(f"http://127.0.0.1:{STATUS}/", timeout=5) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[0])


def time_wait(port):
    out = subprocess.run(
        ["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True
    ).stdout
    n = 0
    for line in out.splitlines():
        cols = line.split()
        if any(c.endswith(f":{port}") for c in cols[-2:]):
            n += 1
    return n


# ---------------------------------------------------------------- configs


def nginx_preamble(name, workers):
    """The start of an nginx.conf, up to inside `http {`."""
    return f"""
worker_processes {workers};
worker_rlimit_nofile {NOFILE};
daemon off;
pid {WORK}/{name}.pid;
error_log {WORK}/{name}-error.log warn;
events {{ worker_connections {NOFILE - 100}; }}
http {{
    access_log off;
    client_body_temp_path {WORK}/tmp;
    proxy_temp_path {WORK}/tmp;
    default_type text/plain;"""


def origin_conf():
    many = "\n".join(f"        listen 127.0.0.1:{MANY_BASE + i};" for i in range(MANY))
    fixed = "\n".join(
        f"        listen 127.0.0.1:{p};" for p in ORIGIN.values() if p is not None
    )
    return nginx_preamble("origin", 1) + f"""
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
{fixed}
        location / {{ return 200 "{BODY}"; }}
    }}
    server {{
        listen 127.0.0.1:{STALE_ORIGIN};
        keepalive_timeout 1s;
        location / {{ return 200 "{BODY}"; }}
    }}
    server {{
        listen 127.0.0.1:{STATUS};
        location / {{ stub_status; }}
    }}
    server {{
{many}
        location / {{ return 200 "{BODY}"; }}
    }}
}}
"""


def nginx_conf():
    return nginx_preamble("nginx", CORES) + f"""
    keepalive_timeout 60s;
    upstream origin {{
        server 127.0.0.1:{ORIGIN["nginx"]};
        keepalive {BOUND};
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    upstream stale {{
        server 127.0.0.1:{STALE_ORIGIN};
        keepalive {BOUND};
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{FRONT["nginx"]};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{STALE_FRONT["nginx"]};
        location / {{
            proxy_pass http://stale;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{FRONT["ceiling"]};
        location / {{ return 200 "{BODY}"; }}
    }}
}}
"""


def haproxy_conf():
    server = f"maxconn {BOUND} pool-purge-delay 300s"
    return f"""
global
    nbthread {CORES}
    maxconn {(NOFILE - 200) // 2}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    timeout queue 5s
    http-reuse always
frontend main
    bind 127.0.0.1:{FRONT["haproxy"]}
    default_backend origin
frontend stale
    bind 127.0.0.1:{STALE_FRONT["haproxy"]}
    default_backend stale
backend origin
    server o 127.0.0.1:{ORIGIN["haproxy"]} {server}
backend stale
    server o 127.0.0.1:{STALE_ORIGIN} {server}
"""


def eddy_conf():
    return f"""
shutdown_grace = "2s"
[admin]
listen = "127.0.0.1:{EDDY_ADMIN}"
[log]
level = "warn"
access_log = false
[[listener]]
name = "proxy"
listen = "127.0.0.1:{FRONT["eddy"]}"
mode = "forward"
max_client_connections = {NOFILE - 1000}
client_idle_timeout = "60s"
[pool]
max_connections_per_host = {BOUND}
max_idle_per_host = {BOUND}
idle_timeout = "300s"
max_idle_total = 4096
[metrics]
max_upstream_labels = 200
"""


# ---------------------------------------------------------------- load


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")


def wrk(case, mode, conns, seconds, script_extra=""):
    target = ORIGIN[case] or FRONT[case]
    # What an app behind HTTP_PROXY sends: the absolute-form target, and a
    # Host header naming the same authority.
    lua = f'wrk.path = "http://127.0.0.1:{target}/1k"\nwrk.headers["Host"] = "127.0.0.1:{target}"\n'
    if mode == "legacy":
        lua += 'wrk.headers["Connection"] = "close"\n'
    lua += script_extra
    script = write(f"wrk-{case}-{mode}.lua", lua)
    threads = min(conns, CORES)
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
            "--latency", "-s", script, f"http://127.0.0.1:{FRONT[case]}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def parse_wrk(out):
    """Requests, req/s, p50/p99 (with --latency) and errors from wrk's report."""
    r = {"requests": 0, "rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": 0}
    for line in out.splitlines():
        s = line.split()
        if re.match(r"\s+50%", line):
            r["p50_ms"] = ms(s[1])
        elif re.match(r"\s+99%", line):
            r["p99_ms"] = ms(s[1])
        elif "requests in" in line:
            r["requests"] = int(s[0])
        elif line.startswith("Requests/sec:"):
            r["rps"] = float(s[1])
        elif "Socket errors:" in line:
            r["errors"] += sum(int(x) for x in re.findall(r"\d+", line))
        elif "Non-2xx or 3xx" in line:
            r["errors"] += int(s[-1])
    return r


def cell(case, mode, conns, pids):
    port = ORIGIN[case]
    a0 = accepts()
    c0 = cpu_ticks(pids) if pids else 0
    r = wrk(case, mode, conns, DURATION)
    c1 = cpu_ticks(pids) if pids else 0
    r["upstream_conns"] = accepts() - a0 - 1 if port else None
    r["time_wait"] = time_wait(port) if port else None
    if pids and r["requests"]:
        r["cpu_us"] = (c1 - c0) / TICK / r["requests"] * 1e6
        r["rss_kib"] = status_kib(pids, "VmHWM")
    else:
        r["cpu_us"] = None
        r["rss_kib"] = None
    return r


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- scale


async def hold_connections(port, n, target):
    """Opens n keep-alive client connections, one request each; keeps them."""
    req = (f"GET http://127.0.0.1:{target}/1k HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n").encode()
    gate = asyncio.Semaphore(256)
    held, ok = [], 0

    async def one():
        nonlocal ok
        async with gate:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await asyncio.wait_for(r.readexactly(length), 10)
                if head.startswith(b"HTTP/1.1 200"):
                    ok += 1
                held.append(w)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AttributeError):
                pass

    await asyncio.gather(*(one() for _ in range(n)))
    return held, ok


def scale_clients(case, pids):
    n = 10000
    rss0 = status_kib(pids, "VmRSS")
    loop = asyncio.new_event_loop()
    held, ok = loop.run_until_complete(hold_connections(FRONT[case], n, ORIGIN[case]))
    time.sleep(0.5)
    rss1 = status_kib(pids, "VmRSS")
    traffic = wrk(case, "legacy", 16, DURATION)
    rss2 = status_kib(pids, "VmRSS")
    for w in held:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.2))
    loop.close()
    return {
        "held": ok,
        "rss_before_kib": rss0,
        "rss_held_kib": rss1,
        "rss_with_traffic_kib": rss2,
        "per_conn_kib": (rss1 - rss0) / max(ok, 1),
        "traffic_rps": traffic["rps"],
        "traffic_errors": traffic["errors"],
    }


def eddy_metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{EDDY_ADMIN}/metrics", timeout=5) as r:
        return r.read().decode()


def eddy_closes():
    """eddy's upstream closes toward its own origin, by reason."""
    upstream = f'upstream="http://127.0.0.1:{ORIGIN["eddy"]}"'
    out = {}
    for line in eddy_metrics().splitlines():
        if line.startswith("eddy_upstream_connections_closed_total{") and upstream in line:
            reason = re.search(r'reason="([^"]+)"', line).group(1)
            out[reason] = int(float(line.rsplit(" ", 1)[1]))
    return out


def wait_histogram(text):
    buckets, total, count = {}, 0.0, 0.0
    for line in text.splitlines():
        if line.startswith("eddy_pool_wait_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float(le)] = buckets.get(float(le), 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("eddy_pool_wait_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("eddy_pool_wait_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return buckets, total, count


def quantile_bound(buckets, count, q):
    for le in sorted(buckets):
        if buckets[le] >= q * count:
            return le
    return float("inf")


def many_origins(pids):
    rss0 = status_kib(pids, "VmRSS")
    b0, s0, n0 = wait_histogram(eddy_metrics())
    lua = f"""
local i = 0
request = function()
    i = (i + 1) % {MANY}
    local authority = "127.0.0.1:" .. ({MANY_BASE} + i)
    return wrk.format(nil, "http://" .. authority .. "/1k", {{Host = authority, Connection = "close"}})
end
"""
    script = write("wrk-many.lua", lua)
    seconds = DURATION * 2
    argv = ["wrk", "-t", str(CORES), "-c", "16", "-d", f"{seconds}s", "-s", script,
            f"http://127.0.0.1:{FRONT['eddy']}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    parsed = parse_wrk(out)
    errors, requests = parsed["errors"], parsed["requests"]
    rss1 = status_kib(pids, "VmRSS")
    b1, s1, n1 = wait_histogram(eddy_metrics())
    with urllib.request.urlopen(f"http://127.0.0.1:{EDDY_ADMIN}/pools", timeout=5) as r:
        pools = json.loads(r.read())
    count = n1 - n0
    delta = {le: b1.get(le, 0) - b0.get(le, 0) for le in b1}
    return {
        "origins": MANY,
        "pools": len(pools),
        "requests": requests,
        "errors": errors,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "checkout_mean_us": (s1 - s0) / count * 1e6 if count else None,
        "checkout_p99_le_s": quantile_bound(delta, count, 0.99) if count else None,
    }


# ---------------------------------------------------------------- stale


async def stale_clients(port, target, seconds, keep_alive):
    req = f"GET http://127.0.0.1:{target}/1k HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n"
    req = (req + ("\r\n" if keep_alive else "Connection: close\r\n\r\n")).encode()
    stats = {"requests": 0, "errors": 0}
    rng = random.Random(port)

    async def client():
        conn = None
        end = time.time() + seconds
        while time.time() < end:
            stats["requests"] += 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                r, w = conn
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await asyncio.wait_for(r.readexactly(length), 10)
                if not head.startswith(b"HTTP/1.1 200"):
                    stats["errors"] += 1
                if not keep_alive:
                    w.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AttributeError,
                    asyncio.LimitOverrunError):
                stats["errors"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
            await asyncio.sleep(rng.uniform(0.8, 1.3))

    await asyncio.gather(*(client() for _ in range(4)))
    return stats


def stale_run():
    seconds = 8 if QUICK else 40
    fronts = dict(STALE_FRONT)
    jobs = {name: stale_clients(port, STALE_ORIGIN, seconds, False) for name, port in fronts.items()}
    jobs["direct (keep-alive client)"] = stale_clients(STALE_ORIGIN, STALE_ORIGIN, seconds, True)

    async def all_of():
        names = list(jobs)
        results = await asyncio.gather(*jobs.values())
        return dict(zip(names, results))

    loop = asyncio.new_event_loop()
    out = loop.run_until_complete(all_of())
    loop.close()
    return out


# ---------------------------------------------------------------- report


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name, argv in {"nginx": ["nginx", "-v"], "haproxy": ["haproxy", "-v"], "wrk": ["wrk", "-v"]}.items():
        p = subprocess.run(argv, capture_output=True, text=True)
        versions[name] = (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else "?"
    eddy = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cores": CORES, "cpu": model, "kernel": os.uname().release, "versions": versions, "eddy_commit": eddy}


def fmt(x, pattern="{:.0f}"):
    return "–" if x is None else pattern.format(x)


def reuse_lines(results, closes):
    """Requests per upstream connection, per peer, over the whole load run,
    and eddy's closes by reason: how much of the clients' churn reached the
    origin."""
    lines = ["## Requests per upstream connection over the load run", ""]
    lines.append("| peer | requests | upstream connections opened | requests per upstream connection |")
    lines.append("|---|---|---|---|")
    for c in ["eddy", "nginx", "haproxy", "direct"]:
        requests = sum(r["requests"] for cases in results.values() for r in cases[c])
        opened = sum(r["upstream_conns"] for cases in results.values() for r in cases[c])
        per = f"{requests / opened:.0f}" if opened else f"all {requests} (none opened during the run)"
        lines.append(f"| {c} | {requests} | {opened} | {per} |")
    lines.append("")
    lines.append("*direct* is the clients themselves: a connection per request under the legacy loads, "
                 "kept under the keep-alive one. eddy's connections outlive the cells (they stay pooled "
                 "between them), so its count is the whole run's.")
    lines.append("")
    lines.append("eddy's upstream connections closed over the load run, by reason "
                 "(`eddy_upstream_connections_closed_total`): " +
                 (", ".join(f"`{r}` {n}" for r, n in sorted(closes.items()) if n) or "none") + ".")
    lines.append("")
    return lines


def report(results, closes, scale, many, stale, info, started):
    lines = ["# eddy benchmark results", ""]
    lines.append(f"Machine: {info['cores']} cores ({info['cpu']}), Linux {info['kernel']}; "
                 f"{info['versions']['nginx']}, {info['versions']['haproxy'].split(' - ')[0]}, "
                 f"{info['versions']['wrk'].split(' [')[0]}; eddy at `{info['eddy_commit']}`. "
                 f"Load generator, origin and proxy share the machine.")
    lines.append("")
    lines.append(f"Each cell: the median of {ROUNDS} runs of {DURATION} s with wrk; cases alternate within a round. "
                 f"Every proxy may hold {BOUND} upstream connections. *legacy* = a new client "
                 f"connection per request (`Connection: close`); *keep-alive* = clients reuse theirs.")
    lines.append("")
    lines.append("| load | case | req/s | ÷ best peer | ÷ ceiling | p50 ms | p99 ms | errors | upstream conns opened | TIME-WAIT → origin | proxy CPU µs/req | ÷ best peer | proxy peak RSS MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (mode, conns), cases in results.items():
        med = {c: {k: median([r[k] for r in runs]) for k in runs[0]} for c, runs in cases.items()}
        best_rps = max(med[p]["rps"] for p in ["nginx", "haproxy"])
        best_cpu = min(med[p]["cpu_us"] for p in ["nginx", "haproxy"])
        ceiling = med["ceiling"]["rps"]
        for c in CASES:
            m = med[c]
            opened = sum(r["upstream_conns"] for r in cases[c]) if m["upstream_conns"] is not None else None
            lines.append(
                f"| {mode} c={conns} | **{c}** | {m['rps']:.0f} | {m['rps'] / best_rps:.2f} | {m['rps'] / ceiling:.2f} | "
                f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {sum(r['errors'] for r in cases[c])} | "
                f"{fmt(opened)} | {fmt(m['time_wait'])} | {fmt(m['cpu_us'], '{:.1f}')} | "
                f"{fmt(m['cpu_us'] / best_cpu if m['cpu_us'] else None, '{:.2f}')} | "
                f"{fmt(m['rss_kib'] / 1024 if m['rss_kib'] else None, '{:.1f}')} |")
    lines.append("")
    lines.append("*errors* and *upstream conns opened* are totals over the cell's runs; the rest are medians. "
                 "*TIME-WAIT → origin* counts sockets to or from the case's own origin port right after a run "
                 "(they live 60 s, so the direct case's count includes earlier rounds). "
                 "CPU is user + system time of the proxy's processes from `/proc/PID/stat`.")
    lines.append("")
    lines.extend(reuse_lines(results, closes))
    lines.append("## Scale: 10,000 idle keep-alive client connections plus legacy traffic (c=16)")
    lines.append("")
    lines.append(f"The descriptor limit here is {NOFILE}. HAProxy needs two descriptors per client "
                 f"connection, so its `maxconn` is {(NOFILE - 200) // 2}: it holds that many and queues "
                 f"the rest, including the traffic alongside.")
    lines.append("")
    lines.append("| proxy | connections held | RSS before MiB | RSS holding MiB | KiB per connection | req/s alongside | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for p, s in scale.items():
        lines.append(f"| {p} | {s['held']} | {s['rss_before_kib'] / 1024:.1f} | {s['rss_held_kib'] / 1024:.1f} | "
                     f"{s['per_conn_kib']:.1f} | {s['traffic_rps']:.0f} | {s['traffic_errors']} |")
    lines.append("")
    lines.append(f"## Scale: {many['origins']} distinct origins through eddy (ports {MANY_BASE}–{MANY_BASE + MANY - 1})")
    lines.append("")
    lines.append(f"{many['requests']} legacy requests, {many['errors']} errors; {many['pools']} pools afterwards; "
                 f"RSS {many['rss_before_kib'] / 1024:.1f} → {many['rss_after_kib'] / 1024:.1f} MiB; "
                 f"pool checkout {fmt(many['checkout_mean_us'], '{:.1f}')} µs mean, "
                 f"p99 ≤ {fmt(many['checkout_p99_le_s'] * 1e6 if many['checkout_p99_le_s'] else None, '{:.0f}')} µs "
                 f"(`eddy_pool_wait_seconds` buckets).")
    lines.append("")
    lines.append("## Stale connections: origin `keepalive_timeout 1s`, 4 clients each pacing 0.8–1.3 s")
    lines.append("")
    lines.append("| client path | requests | client-visible errors |")
    lines.append("|---|---|---|")
    for name, s in stale.items():
        lines.append(f"| {name} | {s['requests']} | {s['errors']} |")
    lines.append("")
    lines.append(f"Whole benchmark: {time.time() - started:.0f} s.")
    return "\n".join(lines) + "\n"


COLORS = {"eddy": "#1b7f5b", "nginx": "#3465a4", "haproxy": "#c17d11", "direct": "#888888", "ceiling": "#cccccc"}


def chart(results):
    """Two panels of grouped bars: req/s as a share of the ceiling (so that
    every load fits one scale), and proxy CPU µs per request."""
    groups = list(results)
    med = {g: {c: {k: median([r[k] for r in runs]) for k in ("rps", "cpu_us")}
               for c, runs in results[g].items()} for g in groups}
    for g in groups:
        ceiling = med[g]["ceiling"]["rps"] or 1
        for c in med[g]:
            med[g][c]["share"] = med[g][c]["rps"] / ceiling
    W, H, pad, top = 460, 300, 50, 40
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 70}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{2 * W}" height="{H + 70}" fill="white"/>']

    def panel(x0, title, key, cases, label):
        vmax = max((med[g][c][key] or 0) for g in groups for c in cases) * 1.15 or 1
        svg.append(f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>')
        gw = (W - pad - 10) / len(groups)
        bw = gw * 0.8 / len(cases)
        base = H
        svg.append(f'<line x1="{x0 + pad}" y1="{base}" x2="{x0 + W - 10}" y2="{base}" stroke="black"/>')
        for t in range(5):
            v = vmax * t / 4
            y = base - (base - top) * t / 4
            svg.append(f'<text x="{x0 + pad - 4}" y="{y + 4}" text-anchor="end">{label(v)}</text>')
            svg.append(f'<line x1="{x0 + pad}" y1="{y}" x2="{x0 + W - 10}" y2="{y}" stroke="#eee"/>')
        for i, g in enumerate(groups):
            gx = x0 + pad + i * gw + gw * 0.1
            for j, c in enumerate(cases):
                v = med[g][c][key]
                if v is None:
                    continue
                h = (base - top) * v / vmax
                x = gx + j * bw
                svg.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bw - 1:.1f}" '
                           f'height="{h:.1f}" fill="{COLORS[c]}"><title>{c}: {v:.2f}</title></rect>')
                svg.append(f'<text x="{x + bw / 2:.1f}" y="{base - h - 3:.1f}" text-anchor="middle" '
                           f'font-size="8">{label(v)}</text>')
            svg.append(f'<text x="{gx + gw * 0.4}" y="{base + 14}" text-anchor="middle">{g[0]} c={g[1]}</text>')

    panel(0, "requests per second ÷ ceiling (higher is better)", "share", CASES, lambda v: f"{v:.2f}")
    panel(W, "proxy CPU µs per request (lower is better)", "cpu_us", ["eddy", "nginx", "haproxy", "ceiling"],
          lambda v: f"{v:.0f}")
    for i, c in enumerate(CASES):
        x = 60 + i * 150
        svg.append(f'<rect x="{x}" y="{H + 35}" width="12" height="12" fill="{COLORS[c]}"/>')
        svg.append(f'<text x="{x + 16}" y="{H + 45}">{c}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


# ---------------------------------------------------------------- main


def main():
    started = time.time()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    eddy_bin = os.path.join(ROOT, "target", "release", "eddy")
    try:
        start("origin", ["nginx", "-p", WORK, "-c", write("origin.conf", origin_conf())], STATUS)
        eddy = start("eddy", [eddy_bin, "--config", write("eddy.toml", eddy_conf())], FRONT["eddy"])
        ngx = start("nginx", ["nginx", "-p", WORK, "-c", write("nginx.conf", nginx_conf())], FRONT["nginx"])
        hap = start("haproxy", ["haproxy", "-db", "-f", write("haproxy.cfg", haproxy_conf())], FRONT["haproxy"])
        # TIME-WAIT sockets live 60 s: start with none toward our origins,
        # so that the counts after each run are this run's own.
        ports = [p for p in ORIGIN.values() if p]
        deadline = time.time() + 65
        while any(time_wait(p) for p in ports) and time.time() < deadline:
            time.sleep(1)
        pids = {"eddy": [eddy.pid], "nginx": family(ngx.pid), "haproxy": family(hap.pid),
                "direct": None, "ceiling": family(ngx.pid)}
        log(f"pids: {pids}; work dir {WORK}")

        results = {load: {c: [] for c in CASES} for load in LOADS}
        closes_before = eddy_closes()
        for rnd in range(ROUNDS):
            for load in LOADS:
                for c in CASES:
                    r = cell(c, load[0], load[1], pids[c])
                    results[load][c].append(r)
                    log(f"round {rnd + 1} {load[0]} c={load[1]} {c}: {r['rps']:.0f} req/s, "
                        f"cpu {fmt(r['cpu_us'], '{:.1f}')} us/req, errors {r['errors']}, "
                        f"upstream {r['upstream_conns']}, tw {r['time_wait']}")

        closes_after = eddy_closes()
        closes = {r: closes_after.get(r, 0) - closes_before.get(r, 0) for r in closes_after}
        log(f"eddy closes by reason over the load run: {closes}")
        log("stale-connection run")
        stale = stale_run()
        log(f"stale: {stale}")
        # The origin run first: its RSS figures should not include memory
        # the 10,000-connection run leaves in the allocator.
        log("scale run: 1,000 origins through eddy")
        many = many_origins(pids["eddy"])
        log(f"  {many}")
        scale = {}
        for p in PROXIES:
            log(f"scale run: 10,000 client connections through {p}")
            scale[p] = scale_clients(p, pids[p])
            log(f"  {scale[p]}")
    finally:
        stop_all()

    info = machine()
    text = report(results, closes, scale, many, stale, info, started)
    with open(os.path.join(OUT, "RESULTS.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "chart.svg"), "w") as f:
        f.write(chart(results))
    raw = {f"{m} c={c}": v for (m, c), v in results.items()}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"machine": info, "cells": raw, "eddy_closes": closes, "scale": scale, "many_origins": many,
                   "stale": stale},
                  f, indent=1, default=str)
    print(text)
    print(f"results in {OUT}")
    shutil.rmtree(WORK, ignore_errors=True)
    # What eddy promises whatever the machine, checked on every run: no
    # client-visible error, no more upstream connections than the bound over
    # the legacy run, no TIME-WAIT socket toward the origin, no upstream
    # connection closed with reason="error". The speed ratios are reported,
    # not asserted (they depend on the machine).
    problems = []
    legacy = [cases["eddy"] for (mode, _), cases in results.items() if mode == "legacy"]
    opened = sum(r["upstream_conns"] for runs in legacy for r in runs)
    if opened > BOUND:
        problems.append(f"eddy opened {opened} upstream connections over the legacy run (bound {BOUND})")
    lingering = max(r["time_wait"] for runs in legacy for r in runs)
    if lingering:
        problems.append(f"{lingering} TIME-WAIT sockets toward the origin after a legacy run through eddy")
    errors = sum(r["errors"] for cases in results.values() for r in cases["eddy"])
    if errors:
        problems.append(f"eddy had {errors} client-visible errors under load")
    if closes.get("error"):
        problems.append(f"eddy closed {closes['error']} upstream connections with reason=\"error\" under load")
    if stale["eddy"]["errors"]:
        problems.append(f"eddy had {stale['eddy']['errors']} errors in the stale-connection run")
    for p in problems:
        print(f"CHECK FAILED: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
