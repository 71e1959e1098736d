#!/usr/bin/env python3
"""Interop suite: real nginx as the origin, real curl and Python `requests`
as legacy clients, eddy in between (issue acceptance 9).

Everything listens on 127.0.0.1 with ports chosen by the kernel. Each check
prints one line; the run ends with 'interop: N passed, M failed' and exits
non-zero on any failure. Processes it starts are stopped by PID.
"""
import argparse
import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import requests

RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}", flush=True)


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
    # Never through a proxy, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return r.status, r.read().decode()


def nginx_accepts(status_port):
    _, text = direct_get(f"http://127.0.0.1:{status_port}/nginx_status")
    # "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
    return int(text.split("\n")[2].split()[0])


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_prometheus(work, admin_port, procs):
    """A real Prometheus on loopback, scraping eddy every second with the
    scrape configuration and alert rules shipped in deploy/prometheus/."""
    port = free_port()
    with open(os.path.join(REPO, "deploy/prometheus/prometheus.yml")) as f:
        conf = f.read()
    conf = conf.replace("127.0.0.1:9901", f"127.0.0.1:{admin_port}")
    conf = conf.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("evaluation_interval: 15s", "evaluation_interval: 1s")
    conf = conf.replace("- eddy-alerts.yml", "- " + os.path.join(REPO, "deploy/prometheus/eddy-alerts.yml"))
    path = os.path.join(work, "prometheus.yml")
    with open(path, "w") as f:
        f.write(conf)
    log = open(os.path.join(work, "prometheus.log"), "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={path}", f"--storage.tsdb.path={work}/tsdb",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    return port


def prometheus_query(port, query):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    _, body = direct_get(url)
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def make_certs(work):
    """A CA and a localhost certificate signed by it, made for this run."""
    def run(*args):
        subprocess.run(args, cwd=work, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=eddy interop CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")
    with open(os.path.join(work, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location = /hello {{ default_type text/plain; return 200 "hello from nginx\\n"; }}
        location = /echo {{
            default_type text/plain;
            return 200 "method=$request_method host=$host xfoo=$http_x_foo proxyconn=$http_proxy_connection e2e=$http_x_e2e\\n";
        }}
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
    server {{
        # A TLS origin with a certificate from a CA made for this run.
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {dir}/srv.pem;
        ssl_certificate_key {dir}/srv.key;
        location / {{ default_type text/plain; return 200 "tls hello\\n"; }}
    }}
    server {{
        # An origin that closes idle keep-alive connections after 1 s.
        listen 127.0.0.1:{short_port};
        keepalive_timeout 1s;
        location / {{ default_type text/plain; return 200 "short keep-alive\\n"; }}
    }}
}}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eddy", required=True, help="path to the eddy binary")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--stale-requests", type=int, default=12)
    args = ap.parse_args()

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)

    work = tempfile.mkdtemp(prefix="eddy-interop-")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    origin_port, proxy_port, admin_port, short_port = free_port(), free_port(), free_port(), free_port()
    tls_port = free_port()
    make_certs(work)
    unix_sock = os.path.join(work, "route.sock")
    max_conns = 4

    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=work, port=origin_port, short_port=short_port, tls_port=tls_port,
                                  body="x" * 1024))
    with open(os.path.join(work, "eddy.toml"), "w") as f:
        f.write(f"""
[admin]
listen = "127.0.0.1:{admin_port}"
[log]
access_log = false
[[listener]]
listen = "127.0.0.1:{proxy_port}"
[[listener]]
name = "route-unix"
listen = "unix:{unix_sock}"
mode = "route"
upstream = "http://127.0.0.1:{origin_port}"
[pool]
max_connections_per_host = {max_conns}
[security]
connect_ports = [443, {origin_port}, {tls_port}]
[[upstream]]
match = "secure.internal"
connect = "https://localhost:{tls_port}"
ca_file = "{work}/ca.pem"
""")

    procs = []
    try:
        nginx = subprocess.Popen(["nginx", "-p", work, "-c", os.path.join(work, "nginx.conf")],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "nginx.stderr"), "w"))
        procs.append(nginx)
        eddy_log = open(os.path.join(work, "eddy.log"), "w")
        eddy = subprocess.Popen([args.eddy, "--config", os.path.join(work, "eddy.toml")],
                                stdout=eddy_log, stderr=subprocess.STDOUT)
        procs.append(eddy)
        check("nginx listens", wait_port(origin_port))
        check("eddy listens", wait_port(proxy_port) and wait_port(admin_port))
        prom_port = start_prometheus(work, admin_port, procs)
        check("prometheus listens", wait_port(prom_port, timeout=30))

        proxy = f"http://127.0.0.1:{proxy_port}"
        origin = f"http://127.0.0.1:{origin_port}"
        before = nginx_accepts(origin_port)

        # curl, HTTP/1.1 and HTTP/1.0, as HTTP_PROXY clients.
        for flag in ([], ["-0"]):
            out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, *flag, f"{origin}/hello"],
                                 capture_output=True, text=True, timeout=30)
            check(f"curl {' '.join(flag) or '-1.1'} through eddy", out.returncode == 0 and out.stdout == "hello from nginx\n",
                  out.stderr + out.stdout)
        # curl via the HTTP_PROXY environment variable, as a legacy app would.
        env = dict(os.environ, http_proxy=proxy)
        out = subprocess.run(["curl", "-sS", f"{origin}/hello"], capture_output=True, text=True, env=env, timeout=30)
        check("curl with http_proxy set", out.returncode == 0 and out.stdout == "hello from nginx\n", out.stderr)
        # Hop-by-hop headers stop at eddy; end-to-end ones pass.
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy,
                              "-H", "Connection: x-foo", "-H", "X-Foo: secret", "-H", "Proxy-Connection: keep-alive",
                              "-H", "X-E2E: kept", f"{origin}/echo"], capture_output=True, text=True, timeout=30)
        check("hop-by-hop headers stripped", "xfoo= " in out.stdout and "proxyconn= " in out.stdout and "e2e=kept" in out.stdout,
              out.stdout + out.stderr)
        # An error eddy makes itself, seen by curl.
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, "-o", "/dev/null", "-D", "-",
                              "http://no-such-host.invalid/"], capture_output=True, text=True, timeout=30)
        check("curl sees 502 dns_error", " 502 " in out.stdout and "error=dns_error" in out.stdout.lower(), out.stdout)

        # Python requests: a new connection per request, 16 threads, N requests.
        def one(i):
            s = requests.Session()
            s.trust_env = False
            try:
                r = s.get(f"{origin}/item/{i}", proxies={"http": proxy}, timeout=30)
                return r.status_code == 200 and len(r.content) == 1024
            finally:
                s.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(args.requests)))
        ok = sum(results)
        check(f"python requests: {args.requests} requests succeed", ok == args.requests, f"{ok} succeeded")

        # Steady traffic for a few seconds while Prometheus scrapes every
        # second, then ask it for the reuse ratio (from
        # eddy_upstream_requests_total, by connection="new"/"reused").
        deadline = time.time() + 6
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            while time.time() < deadline:
                list(pool.map(one, range(40)))
                time.sleep(0.1)
        ratio = None
        query = ('sum(rate(eddy_upstream_requests_total{connection="reused"}[1m])) '
                 '/ sum(rate(eddy_upstream_requests_total[1m]))')
        for _ in range(20):
            try:
                ratio = prometheus_query(prom_port, query)
            except (OSError, ValueError, KeyError):
                ratio = None
            if ratio is not None:
                break
            time.sleep(1)
        check("prometheus scraped eddy: reuse ratio above 0.9", ratio is not None and ratio > 0.9, f"ratio {ratio}")
        up = None
        try:
            up = prometheus_query(prom_port, 'up{job="eddy"}')
        except (OSError, ValueError, KeyError):
            pass
        check("prometheus sees the eddy target up", up == 1.0, f"up {up}")

        # The exposition passes promtool's lint.
        metrics_text = direct_get(f"http://127.0.0.1:{admin_port}/metrics")[1]
        lint = subprocess.run(["promtool", "check", "metrics"], input=metrics_text, capture_output=True, text=True)
        check("promtool check metrics", lint.returncode == 0, lint.stdout + lint.stderr)

        after = nginx_accepts(origin_port)
        # Each stub_status read is itself one direct accept.
        upstream_accepts = after - before - 1
        check(f"nginx accepted at most {max_conns} connections from eddy", 0 < upstream_accepts <= max_conns,
              f"{upstream_accepts} accepts")
        pools = json.loads(direct_get(f"http://127.0.0.1:{admin_port}/pools")[1])
        entry = pools.get(origin, {})
        check("/pools reports the origin", entry.get("opened_total", 0) == upstream_accepts and entry.get("in_use") == 0,
              json.dumps(entry))
        status, _ = direct_get(f"http://127.0.0.1:{admin_port}/healthz")
        check("/healthz", status == 200)

        # curl through a CONNECT tunnel (-p), as HTTPS_PROXY clients do
        # (after the accept count above: a tunnel is its own connection).
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-p", "-x", proxy, f"{origin}/hello"],
                             capture_output=True, text=True, timeout=30)
        check("curl -p through a CONNECT tunnel", out.returncode == 0 and out.stdout == "hello from nginx\n",
              out.stderr + out.stdout)

        # HTTPS_PROXY: a client-verified TLS session end to end through a
        # CONNECT tunnel.
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, "--cacert", f"{work}/ca.pem",
                              f"https://localhost:{tls_port}/"], capture_output=True, text=True, timeout=30)
        check("curl https through CONNECT, verified end to end", out.returncode == 0 and out.stdout == "tls hello\n",
              out.stderr + out.stdout)
        # CONNECT to a port not in connect_ports is refused.
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-p", "-x", proxy, "-o", "/dev/null", "-w", "%{http_connect}",
                              "http://127.0.0.1:25/"], capture_output=True, text=True, timeout=30)
        check("CONNECT to port 25 gets 403", out.stdout.strip() == "403", out.stdout + out.stderr)
        # TLS origination: plain HTTP in, pooled TLS out.
        out = subprocess.run(["curl", "-sS", "--noproxy", "", "-x", proxy, "http://secure.internal/"],
                             capture_output=True, text=True, timeout=30)
        check("TLS origination to nginx over https", out.returncode == 0 and out.stdout == "tls hello\n",
              out.stderr + out.stdout)
        # A route listener on a Unix socket.
        out = subprocess.run(["curl", "-sS", "--unix-socket", unix_sock, "http://localhost/hello"],
                             capture_output=True, text=True, timeout=30)
        check("curl --unix-socket to a route listener", out.returncode == 0 and out.stdout == "hello from nginx\n",
              out.stderr + out.stdout)

        # Stale connections: nginx closes idle connections after 1 s while
        # requests keep arriving 1.0-1.3 s apart: eddy must absorb every
        # stale connection (expiry, probe, retry), and the client sees no error.
        short = f"http://127.0.0.1:{short_port}"
        errors = 0
        for i in range(args.stale_requests):
            s = requests.Session()
            s.trust_env = False
            try:
                r = s.get(f"{short}/s{i}", proxies={"http": proxy}, timeout=30)
                errors += r.status_code != 200
            except requests.RequestException:
                errors += 1
            finally:
                s.close()
            time.sleep(1.0 + (i * 37 % 31) / 100.0)
        check(f"nginx keepalive_timeout 1s, {args.stale_requests} requests 1.0-1.3 s apart: zero errors", errors == 0,
              f"{errors} errors")
        metrics = direct_get(f"http://127.0.0.1:{admin_port}/metrics")[1]
        for line in metrics.splitlines():
            if line.startswith(("eddy_stale_retries_total{", "eddy_upstream_connections_closed_total{")) and short in line \
                    and not line.endswith(" 0"):
                print(f"     {line}")

        # Graceful stop: SIGTERM, exit 0.
        eddy.send_signal(signal.SIGTERM)
        try:
            code = eddy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        check("eddy exits 0 on SIGTERM", code == 0, f"exit {code}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if RESULTS["failed"]:
            for name in ("eddy.log", "error.log", "nginx.stderr"):
                path = os.path.join(work, name)
                if os.path.exists(path):
                    print(f"--- {name}\n{open(path).read()[-3000:]}")

    print(f"interop: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
