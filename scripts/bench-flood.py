#!/usr/bin/env python3
"""Connection-flood measurement for agent-server (issue 9, item 1), loopback only.

Holds IDLE idle TCP connections (no byte sent) and SLOW slowloris connections (a request line, then
one header byte every second) to a running server, re-opening any the server closes, while a
normal client sends GET /status/{id} on a new connection each time. Prints the normal client's
latency percentiles, its failures, how many flood connections the server closed, and the server's
RSS (from /proc, when --pid is given).

    scripts/bench-flood.py --url http://127.0.0.1:8000 --token T --job ID --pid PID \
        --idle 20000 --slow 1000 --seconds 60

The flood is spread over worker processes so that none needs more descriptors than its limit.
"""

import argparse
import asyncio
import errno
import http.client
import multiprocessing
import os
import resource
import statistics
import time
import urllib.parse


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def idle(reader, writer, stop_at, stats):
    """Sends nothing; waits for the server to close the connection or for the end."""
    try:
        remaining = max(0.0, stop_at - time.monotonic())
        if not await asyncio.wait_for(reader.read(1), timeout=remaining):
            stats["closed_by_server"] += 1
    except asyncio.TimeoutError:
        pass


async def slow(reader, writer, stop_at, stats):
    """Sends a request line, then one header byte a second, until the server closes or the end."""
    writer.write(b"GET /status/x HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    while time.monotonic() < stop_at:
        writer.write(b"X")
        await writer.drain()
        try:
            if not await asyncio.wait_for(reader.read(1), timeout=1.0):
                stats["closed_by_server"] += 1
                return
        except asyncio.TimeoutError:
            pass


async def hold(behave, host, port, stop_at, stats):
    """Keeps one connection open that behaves as `behave` says, re-opening it when it is closed."""
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["open"] += 1
        try:
            await behave(reader, writer, stop_at, stats)
        except OSError:
            stats["closed_by_server"] += 1  # reset by the server
        finally:
            stats["open"] -= 1
            writer.close()


def flood_worker(host, port, n_idle, n_slow, seconds, out):
    raise_nofile()

    async def main():
        stats = {"open": 0, "closed_by_server": 0, "connect_errors": 0}
        stop_at = time.monotonic() + seconds
        tasks = [hold(idle, host, port, stop_at, stats) for _ in range(n_idle)]
        tasks += [hold(slow, host, port, stop_at, stats) for _ in range(n_slow)]
        await asyncio.gather(*tasks)
        return stats

    out.put(asyncio.run(main()))


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--token")
    ap.add_argument("--job", required=True)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--idle", type=int, default=20000)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--per-worker", type=int, default=7000)
    ap.add_argument("--warmup", type=float, default=15)
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    assert host in ("127.0.0.1", "::1", "localhost"), "loopback only"

    total = args.idle + args.slow
    workers = max(1, -(-total // args.per_worker))
    out = multiprocessing.Queue()
    procs = []
    for i in range(workers):
        n_idle = args.idle // workers + (1 if i < args.idle % workers else 0)
        n_slow = args.slow // workers + (1 if i < args.slow % workers else 0)
        p = multiprocessing.Process(
            target=flood_worker, args=(host, port, n_idle, n_slow, args.seconds, out)
        )
        p.start()
        procs.append(p)

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    latencies, failures, no_port, rss = [], 0, 0, []
    started = time.monotonic()
    time.sleep(args.warmup)
    while time.monotonic() - started < args.seconds - 2:
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", f"/status/{args.job}", headers=headers)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                failures += 1
            else:
                latencies.append((time.monotonic() - t0) * 1000)
        except OSError as e:
            # Out of local ports (TIME_WAIT of the flood's own churn): the client host's limit,
            # not an answer of the server's; counted apart.
            if e.errno == errno.EADDRNOTAVAIL:
                no_port += 1
            else:
                failures += 1
        if args.pid:
            v = rss_kib(args.pid)
            if v:
                rss.append(v)
        time.sleep(0.05)

    stats = [out.get() for _ in procs]
    for p in procs:
        p.join()
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    print(f"flood: {args.idle} idle + {args.slow} slowloris over {workers} processes, {args.seconds:.0f} s")
    print(f"flood connections closed by the server: {sum(s['closed_by_server'] for s in stats)}, "
          f"connect errors: {sum(s['connect_errors'] for s in stats)}")
    print(f"normal client: {len(latencies)} answered, {failures} failed, {no_port} not sent "
          f"(this host out of local ports); "
          f"p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, max {latencies[-1] if latencies else float('nan'):.1f} ms")
    if rss:
        print(f"server RSS: max {max(rss) / 1024:.0f} MiB, median {statistics.median(rss) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
