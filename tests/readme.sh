#!/usr/bin/env bash
# The README's commands, run in order on a fresh clone, as a newcomer would.
#
#   bash tests/readme.sh        (run by .ci/run; about 6 minutes warm)
#
# It clones this repository's HEAD (what is committed, nothing else) into a
# scratch directory and runs every ```sh block of its README.md, in order, in
# one shell with `set -e`, so a failing command fails the script. Two things
# are done for it that a person does by hand:
#   - `cargo run --release` runs in the background, and the script waits for
#     eddy's /readyz before it goes on (a person opens another terminal);
#   - `cargo install` installs into the scratch directory, which is put first
#     on PATH, instead of ~/.cargo/bin.
# Blocks in other languages (the Python, Go, Java and Node snippets) are code
# for an application, not commands; the reuse matrix runs those clients.
#
# After the blocks it checks the quick start's claim from eddy's /pools: the
# 100 requests reached the origin over one connection. Everything it started
# is stopped by PID, and the scratch directory removed.
#
# The clone shares the checkout's target directory (CARGO_TARGET_DIR), so
# dependencies are not compiled again; eddy itself is, from the clone. cargo
# would then take the clone's builds of eddy (which carry the clone's path,
# env!("CARGO_MANIFEST_DIR")) as fresh for the checkout, whose sources are
# older: at the end the checkout's sources are touched, so its next build is
# its own.
# Needs: git, python3, curl, and the ports the README uses (3128, 9901, 8000)
# free on 127.0.0.1.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d)
eddy_pid=
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$work/eddy.log" ]; then
    echo "readme: failed ($rc); eddy (pid $eddy_pid) $(kill -0 "$eddy_pid" 2>/dev/null && echo runs || echo is gone); its log ends:"
    tail -20 "$work/eddy.log"
  fi
  # Background jobs the README started (the demo origin), then eddy.
  # Every background job and its children (the watchdog's sleep), by PID.
  for pid in $(jobs -p); do
    pkill -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
  find "$repo/src" "$repo/tests" -name '*.rs' -exec touch {} + 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 124' TERM INT
# A README command that never ends must fail the run, not hang it.
( sleep 1200; echo "readme: still running after 20 minutes; stopping"; kill -TERM $$ ) &

for port in 3128 9901 8000; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "readme: port $port on 127.0.0.1 is taken; the README's commands need it"
    exit 1
  fi
done

if [ -n "$(git -C "$repo" status --porcelain)" ]; then
  echo "readme: note: the working tree has changes; the clone has only what is committed"
fi
git clone -q --no-local "$repo" "$work/eddy"
cd "$work/eddy"
echo "readme: fresh clone of $(git rev-parse --short HEAD) in $work/eddy"

# `cargo run --release` as the README means it: eddy runs until stopped.
start_eddy() {
  cargo run --release "$@" > "$work/eddy.log" 2>&1 &
  eddy_pid=$!
  local deadline=$((SECONDS + 900)) # a cold release build takes minutes
  until curl -sf --noproxy '*' -o /dev/null http://127.0.0.1:9901/readyz; do
    if ! kill -0 "$eddy_pid" 2>/dev/null; then
      echo "readme: cargo run --release exited:"; tail -20 "$work/eddy.log"; exit 1
    fi
    if [ "$SECONDS" -gt "$deadline" ]; then
      echo "readme: eddy not ready after 15 minutes"; tail -20 "$work/eddy.log"; exit 1
    fi
    sleep 1
  done
  echo "readme: eddy is ready (pid $eddy_pid)"
}

export CARGO_INSTALL_ROOT=$work/install
export PATH=$work/install/bin:$PATH

# The ```sh blocks, with the one substitution above.
python3 - README.md > "$work/commands.sh" <<'EOF'
import re, shlex, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
lines = [l for b in blocks for l in b.splitlines()]
# CI takes this run's `cargo test` for its own: it must be the whole suite.
for command in ("cargo run --release", "cargo test"):
    if not any(re.match(re.escape(command) + r"\s*(#.*)?$", l) for l in lines):
        sys.exit(f"readme: no bare `{command}` in the README's sh blocks")
for i, block in enumerate(blocks, 1):
    # The block as written, then the block itself (one echo per block, so
    # continuations and here-documents stay intact).
    print(f"printf '%s\\n' {shlex.quote(f'--- README block {i}')}")
    print("printf '$ %s\\n' " + " ".join(shlex.quote(l) for l in block.splitlines()))
    for line in block.splitlines():
        if re.match(r"^cargo run --release\s*(#.*)?$", line):
            line = "start_eddy"
        print(line)
EOF
# shellcheck disable=SC1091
source "$work/commands.sh"

echo "--- checking the quick start's claim"
pools=$(curl -s --noproxy '*' http://127.0.0.1:9901/pools)
python3 - "$pools" <<'EOF'
import json, sys
pools = json.loads(sys.argv[1])
demo = pools.get("http://127.0.0.1:8000")
assert demo, f"no pool for the demo origin: {pools}"
assert demo["opened_total"] == 1, f"the demo's 100 requests opened {demo['opened_total']} connections"
assert demo["reused_total"] >= 99, f"only {demo['reused_total']} reuses"
print(f"readme: 100 requests, {demo['opened_total']} upstream connection, {demo['reused_total']} reuses")
EOF
echo "readme: every command of the README worked on a fresh clone"
