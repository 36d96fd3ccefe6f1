"""CPU time a server spends per request or per key, user and kernel, from /proc.

    python -m tools.cpu_per_op [--scenarios c50big,mget100big] [--reps 3] [--secs 5]
                               [--memd CMD] [--memcached CMD]

On a machine shared with other jobs, throughput (ops/s) moves with what
the others do; the CPU time the server itself burns per unit of work moves
much less, because the time it waits for a core is not counted.  This runs
compare.py's scenarios (its C load generator mcload, same arguments) and
reads the server's utime and stime from ``/proc/<pid>/stat`` around the
measured window: the figure is µs of server CPU per request (c50*) or per
key (mget*), and the ratio memd / memcached (lower is better for memd;
1 / ratio is comparable with compare.py's throughput ratio when each
server is CPU-bound).  mcload is compare.py's (``$TMPDIR/mcload-bin``; run
compare.py once to build it, or pass ``--mcload``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from tools.multicore_compare import stop
from tools.soak import free_port

MCLOAD = os.path.join(tempfile.gettempdir(), "mcload-bin")
MEMD = sys.executable + " -m memd -p {port} -m 1024"
MEMCACHED = "memcached -U 0 -l 127.0.0.1 -m 1024 -t 1 -u root -p {port}"
SCENARIOS = {       # compare.py's, same mcload arguments: (args, unit)
    "c50": (["-c", "50", "-d", "1", "-k", "10000"], "ops"),
    "mget100": (["-c", "50", "-d", "1", "-m", "100", "-k", "10000"], "keys"),
    "c50big": (["-c", "50", "-d", "1", "-k", "1000000"], "ops"),
    "mget100big": (["-c", "50", "-d", "1", "-m", "100", "-k", "1000000"], "keys"),
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])       # utime, stime


def one(cmd: str, scenario: str, secs: float, mcload: str) -> dict:
    port = free_port()
    p = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "exec " + cmd.format(port=port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        args, unit = SCENARIOS[scenario]
        keys = args[args.index("-k") + 1]
        subprocess.run(["taskset", "-c", "1", mcload, "-p", str(port), "-F", "-k", keys],
                       capture_output=True, check=True, timeout=900)
        before = cpu_ticks(p.pid)
        out = subprocess.run(["taskset", "-c", "1", mcload, "-p", str(port), "-N", "-w", "0",
                              "-t", str(secs)] + args,
                             capture_output=True, text=True, timeout=secs + 120).stdout
        after = cpu_ticks(p.pid)
        line = next((l for l in out.splitlines() if l.startswith("RESULT")), "")
        r = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
        work = (r.get("ops", 0) if unit == "ops" else r.get("keys_s", 0) * secs) or 1
        user = (after[0] - before[0]) / TICK * 1e6 / work
        kernel = (after[1] - before[1]) / TICK * 1e6 / work
        return {"user_us": user, "kernel_us": kernel, "total_us": user + kernel,
                "per_s": r.get("ops_s" if unit == "ops" else "keys_s", 0)}
    finally:
        stop(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="c50big,mget100big")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--memd", default=MEMD)
    ap.add_argument("--memcached", default=MEMCACHED)
    ap.add_argument("--mcload", default=MCLOAD)
    args = ap.parse_args(argv)
    if not os.path.exists(args.mcload):
        sys.exit("no mcload at %s: run compare.py once, or pass --mcload" % args.mcload)
    for sc in args.scenarios.split(","):
        got: dict[str, list[dict]] = {"memd": [], "memcached": []}
        for rep in range(args.reps):
            order = [("memd", args.memd), ("memcached", args.memcached)]
            for name, cmd in (order if rep % 2 == 0 else order[::-1]):
                got[name].append(one(cmd, sc, args.secs, args.mcload))
        med = {n: {k: statistics.median(r[k] for r in got[n]) for k in got[n][0]} for n in got}
        unit = "request" if SCENARIOS[sc][1] == "ops" else "key"
        print("%-10s CPU us per %-7s memd %.2f (user %.2f, kernel %.2f)  memcached %.2f "
              "(user %.2f, kernel %.2f)  ratio %.2f  [memd reps %s]" % (
                  sc, unit, med["memd"]["total_us"], med["memd"]["user_us"],
                  med["memd"]["kernel_us"], med["memcached"]["total_us"],
                  med["memcached"]["user_us"], med["memcached"]["kernel_us"],
                  med["memd"]["total_us"] / max(med["memcached"]["total_us"], 1e-9),
                  ", ".join("%.2f" % r["total_us"] for r in got["memd"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
