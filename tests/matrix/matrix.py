#!/usr/bin/env python3
"""The reuse matrix: real clients nobody here wrote, real origins, eddy in
between, and every connection counted at the origin.

A cell is one client (Python requests with and without a Session, Go
net/http in three modes, Node's http, curl three ways, ab), one method and
body shape (GET/HEAD/POST/PUT/DELETE; empty, 1 KiB, 64 KiB, 1 MiB, chunked)
and one origin (nginx `return`, which answers before reading the body;
nginx static files; nginx `proxy_pass`, which reads the body first; a hyper
origin; a Go net/http origin). Each cell:

  1. sends the request once straight to the origin, for the answer to expect;
  2. reads the origin's accept count and eddy's closes by reason;
  3. sends the request N times through eddy;
  4. holds if every answer equals the direct one, the origin accepted at
     most `max_connections_per_host` connections, and eddy closed none
     (with any reason but `evicted`: an idle connection too old for a
     request that cannot be replayed).

Then the same clients through a real Squid as eddy's egress proxy
(`[[upstream]] via`), counted at the origin behind it; then volume cells (Python requests.post without a Session, 4 processes x
1,500, 1 KiB and 60 KiB JSON, bound 16) and origin-event cells (two
graceful nginx restarts). One line per cell; the run ends with
'matrix: N cells, M failed' and exits non-zero on any failure.

    python3 tests/matrix/matrix.py --eddy target/debug/eddy \\
        --hyper-origin target/debug/examples/matrix-hyper-origin

Needs nginx, Squid, curl, ab, go, node and Python requests (.ci/run installs
them). Everything listens on 127.0.0.1, on ports the kernel picks; every
process started here is stopped by PID.
"""
import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PATTERN = b"0123456789abcdef"
SIZES = {"1k": 1024, "64k": 64 * 1024, "1m": 1024 * 1024, "chunked": 100 * 1024}
BOUND = 2  # max_connections_per_host of the matrix's eddy
PROCS = []
RESULTS = {"cells": 0, "failed": 0}


def body_bytes(kind):
    size = SIZES[kind]
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def clean_env():
    # Whatever the environment says, no client here may pick a proxy by
    # itself: each is told where to go.
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def direct_get(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return r.read().decode()


def start(argv, log):
    p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=clean_env())
    PROCS.append(p)
    return p


def start_announcing(argv, log):
    """Starts a program that prints `origin ADDR stats ADDR` first."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "w"), env=clean_env(), text=True)
    PROCS.append(p)
    ready, _, _ = select.select([p.stdout], [], [], 60)
    line = p.stdout.readline() if ready else ""
    m = re.match(r"origin (\S+) stats (\S+)", line)
    if not m:
        sys.exit(f"{argv[0]} did not start: {line!r}; see {log}")
    return m.group(1), m.group(2)


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


# ------------------------------------------------------------------ origins

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    client_max_body_size 8m;
    server {{
        # Answers on the head, then reads and discards the body.
        listen 127.0.0.1:{ret};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
    server {{
        # Static files: GET and HEAD, 405 for the rest.
        listen 127.0.0.1:{static};
        root {dir}/www;
        location / {{ try_files /file.txt =404; }}
    }}
    server {{
        # Reads the whole body first (proxy_request_buffering), then asks
        # the Go origin.
        listen 127.0.0.1:{proxy};
        location / {{ proxy_pass http://{backend}; }}
    }}
    server {{
        listen 127.0.0.1:{status};
        location / {{ stub_status; }}
    }}
}}
"""


class Nginx:
    def __init__(self, work, backend):
        self.work = work
        self.ports = {k: free_port() for k in ("ret", "static", "proxy", "status")}
        # nginx's workers run as an unprivileged user: they must reach the
        # files and write request bodies to the temp directories.
        os.chmod(work, 0o755)
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "www"):
            os.makedirs(os.path.join(work, d), exist_ok=True)
            os.chmod(os.path.join(work, d), 0o777)
        with open(os.path.join(work, "www", "file.txt"), "wb") as f:
            f.write(body_bytes("1k"))
        self.conf = os.path.join(work, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(dir=work, backend=backend, **self.ports))
        self.proc = None
        self.start()

    def start(self):
        self.proc = start(["nginx", "-p", self.work, "-c", self.conf], os.path.join(self.work, "nginx.log"))
        for port in self.ports.values():
            if not wait_port(port):
                sys.exit("nginx did not start; see nginx-error.log")

    def graceful_restart(self):
        """`kill -QUIT` (idle keep-alive connections close at once), wait
        for the old master to exit, then start again on the same ports."""
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=20)
        self.start()

    def accepts(self):
        text = direct_get(f"http://127.0.0.1:{self.ports['status']}/")
        # Each status read is an accept of its own.
        return int(text.split("\n")[2].split()[0])


class Counted:
    """An origin that reports its accepts on a stats port of its own."""

    def __init__(self, stats):
        self.stats = stats

    def accepts(self):
        return int(direct_get(f"http://{self.stats}/").strip())


# ------------------------------------------------------------------ clients


class Driver:
    """A long-running client program: one JSON command per line in, one
    JSON result per line out."""

    def __init__(self, name, argv, work):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(work, f"{name}.log"), "w"), text=True,
                                     env=clean_env())
        PROCS.append(self.proc)

    def run(self, method, url, body, n, proxy):
        cmd = {"method": method, "url": url, "body": body, "n": n, "proxy": proxy}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        if not ready:
            return [], "no answer from the driver in 120 s"
        line = self.proc.stdout.readline()
        if not line:
            return [], "the driver exited"
        out = json.loads(line)
        return [tuple(r) for r in out.get("results", [])], out.get("error")


class Curl:
    """curl, one process per request: plain (`-H 'Expect:'`), with a forced
    `Expect: 100-continue`, or chunked from stdin (`-T -`)."""

    def __init__(self, name, style, work):
        self.name, self.style, self.work = name, style, work

    def run(self, method, url, body, n, proxy):
        results = []
        for _ in range(n):
            out = os.path.join(self.work, "curl.out")
            argv = ["curl", "-sS", "-o", out, "-w", "%{http_code}", "--max-time", "30"]
            argv += ["-x", proxy] if proxy else ["--noproxy", "*"]
            stdin = None
            if method == "HEAD":
                argv += ["--head"]
            else:
                argv += ["-X", method]
            if self.style == "chunked":
                argv += ["-T", "-"]
                stdin = body_bytes("chunked")
            elif body:
                path = os.path.join(self.work, f"body-{body}")
                if not os.path.exists(path):
                    with open(path, "wb") as f:
                        f.write(body_bytes(body))
                argv += ["--data-binary", "@" + path, "-H", "Content-Type: application/octet-stream"]
                argv += ["-H", "Expect: 100-continue"] if self.style == "expect" else ["-H", "Expect:"]
            argv.append(url)
            p = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, env=clean_env())
            if p.returncode != 0:
                return results, f"curl exit {p.returncode}: {p.stderr.decode(errors='replace').strip()}"
            data = b"" if method == "HEAD" else open(out, "rb").read()
            results.append((int(p.stdout), digest(data)))
        return results, None


class Ab:
    """ApacheBench: HTTP/1.0, a new connection per request."""

    name = "ab"

    def __init__(self, work):
        self.work = work

    def run(self, method, url, body, n, proxy):
        argv = ["ab", "-q", "-n", str(n), "-c", "1", "-s", "30"]
        if proxy:
            argv += ["-X", proxy.split("//", 1)[1]]
        if body:
            path = os.path.join(self.work, f"body-{body}")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(body_bytes(body))
            argv += ["-p" if method == "POST" else "-u", path, "-T", "application/octet-stream"]
        elif method == "HEAD":
            argv += ["-i"]
        elif method != "GET":
            argv += ["-m", method]
        argv.append(url)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean_env())
        if p.returncode != 0:
            return [], f"ab exit {p.returncode}: {p.stderr.strip()[-200:]}"
        fields = dict(re.findall(r"^([A-Za-z0-9 -]+):\s+(\S+)", p.stdout, re.M))
        # ab reports counts, not bodies: one result per request, made of
        # what it saw (2xx or not, the document length, failures).
        complete = int(fields.get("Complete requests", 0))
        non2xx = int(fields.get("Non-2xx responses", 0))
        failed = int(fields.get("Failed requests", 0))
        length = fields.get("Document Length", "?")
        status = 200 if non2xx == 0 else ("non-2xx" if non2xx == complete else "mixed")
        return [(status, f"length={length} failed={failed}")] * complete, None


# ------------------------------------------------------------------ eddy


def start_eddy(binary, work, name, bound, extra=""):
    proxy_port, admin_port = free_port(), free_port()
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(f"""
[admin]
listen = "127.0.0.1:{admin_port}"
[log]
access_log = false
[[listener]]
listen = "127.0.0.1:{proxy_port}"
[pool]
max_connections_per_host = {bound}
{extra}""")
    start([binary, "--config", conf], os.path.join(work, f"{name}.log"))
    if not (wait_port(proxy_port) and wait_port(admin_port)):
        sys.exit(f"{name} did not start; see {name}.log")
    return f"http://127.0.0.1:{proxy_port}", f"127.0.0.1:{admin_port}"


def closes_by_reason(admin, upstream):
    text = direct_get(f"http://{admin}/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith("eddy_upstream_connections_closed_total{") and f'upstream="{upstream}"' in line:
            reason = re.search(r'reason="([^"]+)"', line).group(1)
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def report(ok, text, detail=""):
    RESULTS["cells"] += 1
    RESULTS["failed"] += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {text}{'  <- ' + detail if detail and not ok else ''}", flush=True)


# ------------------------------------------------------------------ cells

ALL_SHAPES = [("HEAD", "")] + [(m, b) for m in ("GET", "POST", "PUT", "DELETE")
                               for b in ("", "1k", "64k", "1m", "chunked")]


def shapes_for(client):
    name = client.name
    if name == "curl":
        return [(m, b) for (m, b) in ALL_SHAPES if b != "chunked"]
    if name == "curl-expect":
        return [(m, b) for m in ("POST", "PUT") for b in ("1k", "64k", "1m")]
    if name == "curl-chunked":
        return [("POST", "chunked"), ("PUT", "chunked")]
    if name == "ab":
        return [("GET", ""), ("HEAD", ""), ("DELETE", "")] + [(m, b) for m in ("POST", "PUT") for b in ("1k", "64k", "1m")]
    return ALL_SHAPES


def origin_status(origin_name, method):
    """What the origin itself answers: a cell whose origin fails proves
    nothing about reuse."""
    if origin_name == "nginx-static" and method not in ("GET", "HEAD"):
        return 405
    return 200


def run_cell(client, method, body, origin_name, url, origin, proxy, admin, n):
    label = f"{client.name:<15} {method:<6} {body or 'empty':<7} {origin_name:<13}"
    expected, err = client.run(method, url, body, 1, None)
    if err or not expected:
        report(False, label, f"direct request failed: {err}")
        return
    status = origin_status(origin_name, method)
    if expected[0][0] not in (status, "non-2xx" if status >= 300 else 200):
        report(False, label, f"the origin itself answered {expected[0]}, not {status}")
        return
    upstream = "http://" + url.split("//", 1)[1].split("/", 1)[0]
    a0, c0 = origin.accepts(), closes_by_reason(admin, upstream)
    got, err = client.run(method, url, body, n, proxy)
    a1, c1 = origin.accepts(), closes_by_reason(admin, upstream)
    conns = a1 - a0 - (1 if isinstance(origin, Nginx) else 0)
    closed = {r: c1.get(r, 0) - c0.get(r, 0) for r in c1 if c1.get(r, 0) != c0.get(r, 0)}
    closes = ",".join(f"{r}={int(v)}" for r, v in sorted(closed.items())) or "-"
    text = f"{label} conns={conns} closes={closes}"
    problems = []
    if err:
        problems.append(f"client error: {err}")
    if len(got) != n:
        problems.append(f"{len(got)} of {n} answered")
    wrong = [g for g in got if g != expected[0]]
    if wrong:
        problems.append(f"answers {wrong[:2]} differ from the origin's own {expected[0]}")
    if conns > BOUND:
        problems.append(f"{conns} origin connections > {BOUND}")
    # One eddy serves every cell, so a cell often starts on a warm pooled
    # connection and a lost one would hide under the bound: every close is
    # a finding, but for `evicted` (a request that cannot be replayed
    # passing over an idle connection too old for it).
    lost = {r: v for r, v in closed.items() if r != "evicted"}
    if lost:
        problems.append(f"connections closed: {lost}")
    report(not problems, text, "; ".join(problems))


# ------------------------------------------------- volume and origin events


def post_worker(args):
    """One legacy process: requests.post without a Session, n times."""
    import requests
    proxy, url, n, size = args
    payload = {"data": "x" * size}
    bad = 0
    for _ in range(n):
        try:
            r = requests.post(url, json=payload, proxies={"http": proxy}, timeout=30)
            bad += r.status_code != 200 or r.text != "ok\n"
        except requests.RequestException:
            bad += 1
    return bad


def volume_cells(eddy_binary, work, nginx, posts):
    proxy, admin = start_eddy(eddy_binary, work, "eddy-volume", 16)
    url = f"http://127.0.0.1:{nginx.ports['ret']}/x"
    upstream = f"http://127.0.0.1:{nginx.ports['ret']}"
    for size, label in ((1000, "1 KiB"), (60 * 1024, "60 KiB")):
        a0, c0 = nginx.accepts(), closes_by_reason(admin, upstream)
        started = time.time()
        with multiprocessing.Pool(4) as pool:
            bad = sum(pool.map(post_worker, [(proxy, url, posts, size)] * 4))
        a1, c1 = nginx.accepts(), closes_by_reason(admin, upstream)
        conns = a1 - a0 - 1
        errors = c1.get("error", 0) - c0.get("error", 0)
        text = (f"volume: requests.post x 4 x {posts}, {label} JSON, nginx return, bound 16: "
                f"conns={conns} error_closes={int(errors)} failed={bad} ({time.time() - started:.1f} s)")
        report(conns <= 16 and errors == 0 and bad == 0, text)


def restart_cell(eddy_binary, work, nginx):
    """Two graceful nginx restarts, each while eddy's pooled connection has
    been idle ~30 ms, teach no keep-alive limit."""
    import requests
    proxy, admin = start_eddy(eddy_binary, work, "eddy-restarts", 16)
    url = f"http://127.0.0.1:{nginx.ports['ret']}/r"
    upstream = f"http://127.0.0.1:{nginx.ports['ret']}"

    def get():
        s = requests.Session()
        s.trust_env = False
        try:
            return s.get(url, proxies={"http": proxy}, timeout=30).status_code
        finally:
            s.close()

    def pooled_idle():
        return json.loads(direct_get(f"http://{admin}/pools")).get(upstream, {}).get("idle", 0)

    for _ in range(2):
        get()
        time.sleep(0.03)  # the scenario: idle ~30 ms when the origin restarts
        nginx.graceful_restart()
        deadline = time.time() + 10
        while pooled_idle() and time.time() < deadline:
            time.sleep(0.05)
        # Restarts seconds apart, as real ones are.
        time.sleep(1)
    a0 = nginx.accepts()
    statuses = []
    for _ in range(10):
        statuses.append(get())
        time.sleep(1)
    conns = nginx.accepts() - a0 - 1
    pools = json.loads(direct_get(f"http://{admin}/pools"))
    timeout = pools.get(upstream, {}).get("effective_idle_timeout_seconds", 0)
    text = (f"origin events: two graceful nginx restarts at ~30 ms idle, then 10 GETs 1 s apart: "
            f"new conns={conns}, idle timeout {timeout} s")
    report(conns <= 2 and timeout >= 5 and statuses == [200] * 10, text, f"statuses {statuses}")


def start_squid(work):
    """A Squid of our own (Debian's package) as an egress proxy on a free
    port; its workers drop to Squid's own user, which must write here."""
    d = os.path.join(work, "squid")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    port = free_port()
    conf = os.path.join(d, "squid.conf")
    with open(conf, "w") as f:
        f.write(f"""http_port 127.0.0.1:{port}
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
cache deny all
cache_mem 8 MB
pid_filename {d}/squid.pid
access_log none
cache_log {d}/cache.log
coredump_dir {d}
shutdown_lifetime 0 seconds
""")
    start(["squid", "-N", "-f", conf], os.path.join(work, "squid.log"))
    if not wait_port(port, timeout=30):
        sys.exit("squid did not start; see squid/cache.log")
    return port


class Relay:
    """A TCP relay in front of Squid that counts the connections it
    accepts: eddy's connections to its egress proxy, counted outside eddy."""

    def __init__(self, target_port):
        import threading
        self.count = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import threading
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.count += 1
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def accepts(self):
        with self.lock:
            return self.count


VIA_SHAPES = [("GET", ""), ("HEAD", ""), ("POST", "1k"), ("PUT", "64k"), ("POST", "1m")]


def via_cells(eddy_binary, work, clients, origins, n, only):
    """The same cells with eddy reaching the origins `via` a real Squid
    egress proxy. What eddy pools is its connections to Squid: a relay in
    front of Squid counts them. (What reaches the origin is Squid's own
    business: it opens a server connection for each POST and PUT, which it
    will not send on a kept-alive one, so the origin's count would measure
    Squid, not eddy.)"""
    squid = start_squid(work)
    relay = Relay(squid)
    extra = "".join(
        f'[[upstream]]\nmatch = "{url.split("//", 1)[1].split("/", 1)[0]}"\nvia = "http://127.0.0.1:{relay.port}"\n'
        for _, url, _ in origins)
    proxy, admin = start_eddy(eddy_binary, work, "eddy-via", BOUND, extra)
    for client in clients:
        for method, body in VIA_SHAPES:
            for origin_name, url, origin in origins:
                line = f"{client.name} {method} {body or 'empty'} {origin_name} via-squid"
                if only and only not in line:
                    continue
                run_cell(client, method, body, origin_name + "+squid", url, relay, proxy, admin, n)


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eddy", required=True, help="the eddy binary")
    ap.add_argument("--hyper-origin", required=True, help="the matrix-hyper-origin example binary")
    ap.add_argument("--requests", type=int, default=3, help="requests through eddy per cell")
    ap.add_argument("--posts", type=int, default=1500, help="requests.post per process in the volume cells")
    ap.add_argument("--only", default="", help="run only cells whose line contains this")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="eddy-matrix-")
    started = time.time()
    try:
        go_bin = os.path.join(work, "matrix-go")
        subprocess.run(["go", "build", "-o", go_bin, "."], cwd=os.path.join(HERE, "go"), check=True,
                       env=dict(clean_env(), GOFLAGS="-mod=mod", GOCACHE=os.path.join(work, "gocache")))
        go_origin, go_stats = start_announcing([go_bin, "origin"], os.path.join(work, "go-origin.log"))
        hyper_origin, hyper_stats = start_announcing([args.hyper_origin], os.path.join(work, "hyper-origin.log"))
        nginx = Nginx(work, go_origin)
        proxy, admin = start_eddy(args.eddy, work, "eddy", BOUND)

        origins = [
            ("nginx-return", f"http://127.0.0.1:{nginx.ports['ret']}/x", nginx),
            ("nginx-static", f"http://127.0.0.1:{nginx.ports['static']}/file.txt", nginx),
            ("nginx-proxy", f"http://127.0.0.1:{nginx.ports['proxy']}/x", nginx),
            ("hyper", f"http://{hyper_origin}/x", Counted(hyper_stats)),
            ("go", f"http://{go_origin}/x", Counted(go_stats)),
        ]
        py = [sys.executable, os.path.join(HERE, "clients", "py_requests.py")]
        clients = [
            Driver("py-requests", py + ["plain"], work),
            Driver("py-session", py + ["session"], work),
            Driver("go-default", [go_bin, "client", "default"], work),
            Driver("go-nokeepalive", [go_bin, "client", "nokeepalive"], work),
            Driver("go-req-close", [go_bin, "client", "close"], work),
            Driver("node-http", ["node", os.path.join(HERE, "clients", "node_http.js")], work),
            Curl("curl", "plain", work),
            Curl("curl-expect", "expect", work),
            Curl("curl-chunked", "chunked", work),
            Ab(work),
        ]
        print(f"matrix: eddy bound {BOUND}, {args.requests} requests per cell through eddy", flush=True)
        for client in clients:
            for method, body in shapes_for(client):
                for origin_name, url, origin in origins:
                    line = f"{client.name} {method} {body or 'empty'} {origin_name}"
                    if args.only and args.only not in line:
                        continue
                    run_cell(client, method, body, origin_name, url, origin, proxy, admin, args.requests)
        if not args.only or "via" in args.only:
            via_clients = [c for c in clients if c.name in ("py-requests", "py-session", "go-default", "node-http", "curl")]
            via_origins = [o for o in origins if o[0] in ("nginx-proxy", "hyper", "go")]
            via_cells(args.eddy, work, via_clients, via_origins, args.requests, args.only)
        if not args.only or "volume" in args.only:
            volume_cells(args.eddy, work, nginx, args.posts)
        if not args.only or "restart" in args.only:
            restart_cell(args.eddy, work, nginx)
    finally:
        stop_all()
    print(f"matrix: {RESULTS['cells']} cells, {RESULTS['failed']} failed ({time.time() - started:.0f} s)")
    if RESULTS["failed"]:
        print(f"logs: {work}")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
