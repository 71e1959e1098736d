"""The processes a benchmark script starts: each is started until it
listens, measured from /proc, and stopped by PID at the end. Shared by
bench.py and profile.py."""

import os
import signal
import socket
import subprocess
import sys
import time


class Procs:
    """Processes started in one work directory, and stopped together."""

    def __init__(self, work):
        self.work = work
        self.started = []

    def write(self, name, text):
        """Writes a file into the work directory; returns its path."""
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, name, argv, port):
        """Starts argv (output in NAME.log) and waits until port listens."""
        out = open(os.path.join(self.work, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
        self.started.append(p)
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

    def stop_all(self):
        """SIGTERM to every process started here, then SIGKILL after 10 s."""
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.started:
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
    """User + system clock ticks the processes have used."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total
