#!/usr/bin/env python3
"""Drives headless Chromium against eddy's status page (run by
tests/it/status_page.rs, which starts eddy, the origins and the traffic).

Checks, in order:
  1. the page refreshes itself (at least two renders, no reload);
  2. after a refresh, its table shows every origin of /pools with the same
     idle / in-use / connecting / pending and opened / reused figures as
     /pools fetched at that moment (the traffic is quiet by then, so both
     describe the same state);
  3. the --saturated origin's row is marked saturated, the --failing one
     failing with its errors by Proxy-Status type, the --expect one neither,
     and it shows a reuse ratio and a request rate;
  4. no request leaves the admin port (every other request is refused and
     fails the check).
Saves a full-page screenshot to --screenshot. Exit status 0 when all hold.
"""

import argparse
import json
import sys
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright


def fetch_pools(admin):
    with urllib.request.urlopen(admin + "/pools", timeout=5) as r:
        return json.load(r)


def table(page):
    """The rendered rows: origin -> {field: text}, plus the row's classes."""
    return page.evaluate(
        """() => {
        const rows = {};
        for (const tr of document.querySelectorAll("#origins tr[data-origin]")) {
            const cells = {};
            for (const td of tr.querySelectorAll("td[data-field]")) {
                cells[td.dataset.field] = td.textContent.trim();
            }
            cells["_class"] = tr.className;
            rows[tr.dataset.origin] = cells;
        }
        return rows;
    }"""
    )


def refreshes(page):
    return int(page.evaluate("() => Number(document.body.dataset.refreshes || 0)"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--saturated", required=True, help="origin expected to be marked saturated")
    ap.add_argument("--expect", required=True, help="a healthy origin with traffic")
    ap.add_argument("--failing", required=True, help="an origin whose connections are refused")
    ap.add_argument("--screenshot", required=True)
    args = ap.parse_args()
    admin = args.admin.rstrip("/")
    admin_host = urllib.parse.urlsplit(admin).netloc
    outside = []
    problems = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=args.chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        # The narrowest common laptop screen: every column must fit.
        page = browser.new_page(viewport={"width": 1280, "height": 260})

        def guard(route):
            url = route.request.url
            if urllib.parse.urlsplit(url).netloc == admin_host:
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        page.route("**/*", guard)
        page.goto(admin + "/", wait_until="load")
        # Two renders: the first on load, the second from the timer.
        page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 2", timeout=15000)
        before = refreshes(page)
        page.wait_for_function(
            f"() => Number(document.body.dataset.refreshes || 0) > {before}", timeout=15000
        )
        rows = table(page)
        pools = fetch_pools(admin)

        for origin in (args.saturated, args.expect, args.failing):
            if origin not in rows:
                problems.append(f"{origin} is not on the page (rows: {sorted(rows)})")
        for origin, p in pools.items():
            row = rows.get(origin)
            if row is None:
                problems.append(f"/pools has {origin}, the page does not")
                continue
            shown = {
                "idle": str(p["idle"]),
                "in_use": str(p["in_use"]),
                "connecting": str(p["connecting"]),
                "opened_reused": f"{p['opened_total']} / {p['reused_total']}",
            }
            for field, want in shown.items():
                if row.get(field) != want:
                    problems.append(f"{origin} {field}: page {row.get(field)!r}, /pools {want!r}")
            if not row.get("pending", "").startswith(f"{p['pending']} /"):
                problems.append(f"{origin} pending: page {row.get('pending')!r}, /pools {p['pending']}")
        sat = rows.get(args.saturated, {})
        if "saturated" not in sat.get("_class", "") or sat.get("state") != "saturated":
            problems.append(f"{args.saturated} is not marked saturated: {sat}")
        other = rows.get(args.expect, {})
        if "saturated" in other.get("_class", ""):
            problems.append(f"{args.expect} is marked saturated: {other}")
        if "failing" in other.get("_class", ""):
            problems.append(f"{args.expect} is marked failing: {other}")
        reuse = other.get("reuse", "")
        if not reuse.endswith("%"):
            problems.append(f"{args.expect} shows no reuse ratio: {reuse!r}")
        # The rate depends on when the last sample was taken relative to the
        # traffic; that it is shown as a number is what can be checked.
        try:
            float(other.get("rps", ""))
        except ValueError:
            problems.append(f"{args.expect} shows no request rate: {other.get('rps')!r}")
        overflow = page.evaluate(
            """() => {
                const last = [...document.querySelectorAll("thead th")].pop();
                return {
                    page: document.documentElement.scrollWidth,
                    lastRight: last.getBoundingClientRect().right,
                    view: window.innerWidth,
                };
            }"""
        )
        if overflow["page"] > overflow["view"] or overflow["lastRight"] > overflow["view"]:
            problems.append(f"the table does not fit {overflow['view']} px: {overflow}")
        # Client mistakes are shown apart, and colour no origin's row.
        client = page.inner_text("#client-errors-list")
        if "http_request_error" not in client:
            problems.append(f"client errors not shown apart: {client!r}")
        for origin, row in rows.items():
            if origin == "none" or origin.startswith("none "):
                problems.append(f"the client errors have an origin row: {row}")
        bad = rows.get(args.failing, {})
        if "failing" not in bad.get("_class", "") or "connection_refused" not in bad.get("errors", ""):
            problems.append(f"{args.failing} is not marked failing with its errors: {bad}")

        page.screenshot(path=args.screenshot, full_page=True)
        browser.close()

    if outside:
        problems.append(f"requests outside the admin port: {outside}")
    for origin, row in sorted(rows.items()):
        print(f"{origin}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    print(f"screenshot: {args.screenshot}")
    if problems:
        for p in problems:
            print("FAIL", p)
        sys.exit(1)
    print("status page: all checks passed")


if __name__ == "__main__":
    main()
