#!/usr/bin/env python3
"""Where eddy's CPU goes, beside nginx, for legacy clients: the measurements
behind bench/results/PROFILE.md.

Started by `bench/profile`, which builds eddy. Runs a one-worker nginx
origin, eddy's forward listener (bound 64) and nginx as a proxy (keepalive
64), all on 127.0.0.1 ports 18400-18409, and for each proxy:
  1. system calls per request (`strace -c -f` during a wrk run), c=1 and 16;
  2. where the samples fall (`perf record -g` during a wrk run at c=16):
     user space, or the kernel under which system call.
Every process started here is stopped by PID at the end. Prints a report.
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from procs import Procs, cpu_ticks, family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = tempfile.mkdtemp(prefix="eddy-profile-")
ORIGIN, EDDY, EDDY_ADMIN, NGINX = 18401, 18402, 18403, 18404
BODY = "x" * 1023 + "\n"


PROCS = Procs(WORK)
write = PROCS.write


def nginx_conf(name, workers, body):
    return f"""
worker_processes {workers};
daemon off;
pid {WORK}/{name}.pid;
error_log {WORK}/{name}-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    client_body_temp_path {WORK};
    proxy_temp_path {WORK};
    keepalive_requests 100000000;
{body}
}}
"""


def wrk(port, conns, seconds):
    script = write("legacy.lua", f'wrk.path = "http://127.0.0.1:{ORIGIN}/1k"\n'
                                 f'wrk.headers["Host"] = "127.0.0.1:{ORIGIN}"\n'
                                 'wrk.headers["Connection"] = "close"\n')
    out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    return int(m.group(1)) if m else 0


def syscalls(port, pids, conns):
    """System calls per request, by name, over a 3 s wrk run."""
    out = os.path.join(WORK, "strace.txt")
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out] + sum((["-p", str(p)] for p in pids), []),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    n = wrk(port, conns, 3)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    calls = {}
    for line in open(out):
        p = line.split()
        if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
            calls[p[-1]] = int(p[3]) / max(n, 1)
    return calls


def samples(port, pids):
    """Share of perf samples in user space and under each system call, over a
    4 s window of a wrk run at c=16."""
    data = os.path.join(WORK, "perf.data")
    load = subprocess.Popen(["wrk", "-t", "2", "-c", "16", "-d", "6s", "-s", os.path.join(WORK, "legacy.lua"),
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run(["perf", "record", "-F", "2000", "-g", "-o", data, "-p", ",".join(map(str, pids)),
                    "--", "sleep", "4"], capture_output=True)
    load.wait()
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True,
                            text=True).stdout
    where = collections.Counter()
    total = 0
    for stack in script.split("\n\n"):
        frames = [line.strip().split(None, 1) for line in stack.strip().splitlines() if line.strip()]
        if not frames:
            continue
        total += 1
        if not frames[0][0].startswith("ffffffff"):
            where["user space"] += 1
            continue
        names = [f[1] if len(f) > 1 else "?" for f in frames]
        key = "kernel, other"
        for i, name in enumerate(names):
            if name == "do_syscall_64" and i > 0:
                key = "kernel: " + names[i - 1].replace("__x64_sys_", "").replace("do_", "")
                break
        where[key] += 1
    return {k: v / max(total, 1) for k, v in where.items()}


def cpu_per_request(port, pids, conns):
    t0 = cpu_ticks(pids)
    n = wrk(port, conns, 4)
    return (cpu_ticks(pids) - t0) / os.sysconf("SC_CLK_TCK") / max(n, 1) * 1e6


def main():
    for tool in ["nginx", "wrk", "strace", "perf"]:
        if not shutil.which(tool):
            sys.exit(f"bench/profile needs {tool}")
    try:
        PROCS.start("origin", ["nginx", "-p", WORK, "-c", write("origin.conf", nginx_conf("origin", 1, f"""
    server {{ listen 127.0.0.1:{ORIGIN}; location / {{ return 200 "{BODY}"; }} }}"""))], ORIGIN)
        eddy = PROCS.start("eddy", [os.path.join(ROOT, "target", "profiling", "eddy"), "--config", write("eddy.toml", f"""
[admin]
listen = "127.0.0.1:{EDDY_ADMIN}"
[log]
level = "warn"
access_log = false
[[listener]]
name = "proxy"
listen = "127.0.0.1:{EDDY}"
mode = "forward"
[pool]
max_connections_per_host = 64
max_idle_per_host = 64
""")], EDDY)
        ngx = PROCS.start("nginx", ["nginx", "-p", WORK, "-c", write("proxy.conf", nginx_conf("proxy", os.cpu_count() or 1, f"""
    upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; keepalive_requests 100000000; }}
    server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://origin;
        proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""))], NGINX)
        proxies = {"eddy": (EDDY, [eddy.pid]), "nginx": (NGINX, family(ngx.pid))}
        wrk(EDDY, 16, 1)
        wrk(NGINX, 16, 1)
        report = {}
        for name, (port, pids) in proxies.items():
            report[name] = {
                "cpu16": cpu_per_request(port, pids, 16),
                "sys1": syscalls(port, pids, 1),
                "sys16": syscalls(port, pids, 16),
                "samples": samples(port, pids),
            }
    finally:
        PROCS.stop_all()
        shutil.rmtree(WORK, ignore_errors=True)

    print("## System calls per proxied legacy request (strace -c -f)\n")
    names = sorted({k for r in report.values() for c in ("sys1", "sys16") for k in r[c]},
                   key=lambda k: -report["eddy"]["sys16"].get(k, 0))
    print("| call | eddy c=16 | nginx c=16 | eddy c=1 | nginx c=1 |")
    print("|---|---|---|---|---|")
    for k in names:
        cells = [report[p][c].get(k) for c in ("sys16", "sys1") for p in ("eddy", "nginx")]
        cells = [cells[0], cells[1], cells[2], cells[3]]
        if all((x or 0) < 0.005 for x in cells):
            continue
        print(f"| `{k}` | " + " | ".join("–" if x is None else f"{x:.2f}" for x in cells) + " |")
    print("| **total** | " + " | ".join(f"{sum(report[p][c].values()):.1f}"
                                        for c in ("sys16", "sys1") for p in ("eddy", "nginx")) + " |")
    print("\n## Where the CPU goes at wrk c=16 (perf record -g), µs per request\n")
    keys = sorted({k for r in report.values() for k in r["samples"]},
                  key=lambda k: -report["eddy"]["samples"].get(k, 0))
    print("| | eddy | nginx |")
    print("|---|---|---|")
    for k in keys:
        print(f"| {k} | " + " | ".join(
            f"{report[p]['samples'].get(k, 0) * 100:.0f} % ≈ {report[p]['samples'].get(k, 0) * report[p]['cpu16']:.1f}"
            for p in ("eddy", "nginx")) + " |")
    print(f"| **CPU per request** | {report['eddy']['cpu16']:.1f} µs | {report['nginx']['cpu16']:.1f} µs |")


if __name__ == "__main__":
    main()
