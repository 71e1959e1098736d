#!/usr/bin/env python3
"""The reuse matrix's Python driver: `requests`, as legacy apps use it.

    py_requests.py plain     requests.request(...) per call: a new
                             connection for every request
    py_requests.py session   one requests.Session per command

Reads one JSON command per line, {"method", "url", "body", "n", "proxy"},
sends the request n times and prints {"results": [[status, digest], ...]}.
"""
import hashlib
import json
import sys

import requests

PATTERN = b"0123456789abcdef"
SIZES = {"1k": 1024, "64k": 64 * 1024, "1m": 1024 * 1024, "chunked": 100 * 1024}


def body_bytes(kind):
    size = SIZES[kind]
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def pieces(data):
    # A generator: requests sends it with Transfer-Encoding: chunked.
    for i in range(0, len(data), 10 * 1024):
        yield data[i:i + 10 * 1024]


def run(mode, cmd):
    proxies = {"http": cmd["proxy"]} if cmd["proxy"] else {"http": None}
    session = requests.Session() if mode == "session" else None
    if session is not None:
        session.trust_env = False
    results = []
    try:
        for _ in range(cmd["n"]):
            data = None
            if cmd["body"] == "chunked":
                data = pieces(body_bytes("chunked"))
            elif cmd["body"]:
                data = body_bytes(cmd["body"])
            if session is not None:
                r = session.request(cmd["method"], cmd["url"], data=data, proxies=proxies, timeout=30)
            else:
                r = requests.request(cmd["method"], cmd["url"], data=data, proxies=proxies, timeout=30)
            results.append([r.status_code, hashlib.sha256(r.content).hexdigest()[:16]])
    except requests.RequestException as e:
        return {"results": results, "error": repr(e)}
    finally:
        if session is not None:
            session.close()
    return {"results": results}


def main():
    mode = sys.argv[1]
    for line in sys.stdin:
        print(json.dumps(run(mode, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
