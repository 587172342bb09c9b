#!/usr/bin/env python3
"""Reads the per-round records bench/compare.sh wrote and prints medians and
the portcullis/nginx ratios.

    summarize.py WORKDIR

WORKDIR/rounds.tsv: proxy <TAB> round <TAB> wrk output file <TAB> CPU ticks used
WORKDIR/memory.tsv: proxy <TAB> VmHWM kB
WORKDIR/meta.env:   KEY=VALUE lines (scenario, duration, clk_tck, ...)
"""
import os
import re
import statistics
import sys

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(path):
    text = open(path).read()
    out = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    out["p99_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    out["p50_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    out["requests"] = int(m.group(1)) if m else None
    out["seconds"] = float(m.group(2)) * UNITS[m.group(3)] / 1000.0 if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["sock_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main():
    work = sys.argv[1]
    meta = {}
    for line in open(os.path.join(work, "meta.env")):
        k, _, v = line.rstrip("\n").partition("=")
        meta[k] = v
    clk = int(meta.get("clk_tck", "100"))
    rows = {}
    order = []
    bad = []
    for line in open(os.path.join(work, "rounds.tsv")):
        proxy, rnd, path, ticks = line.rstrip("\n").split("\t")
        r = parse_wrk(path)
        if r["rps"] is None or not r["requests"]:
            bad.append(f"{proxy} round {rnd}: wrk output not understood ({path})")
            continue
        if r["non2xx"] or r["sock_errors"]:
            bad.append(f"{proxy} round {rnd}: {r['non2xx']} non-2xx responses, {r['sock_errors']} socket errors")
        cpu_s = int(ticks) / clk
        r["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"]
        r["busy"] = cpu_s / r["seconds"] if r["seconds"] else None
        if proxy not in rows:
            rows[proxy] = []
            order.append(proxy)
        rows[proxy].append(r)
    mem = {}
    mem_path = os.path.join(work, "memory.tsv")
    if os.path.exists(mem_path):
        for line in open(mem_path):
            proxy, kb = line.split("\t")
            mem[proxy] = int(kb)

    def med(proxy, key):
        vals = [r[key] for r in rows.get(proxy, []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    print()
    print(f"scenario {meta.get('scenario')}: {meta.get('rounds')} rounds of {meta.get('duration')} s, "
          f"wrk -t{meta.get('threads')} -c{meta.get('connections')}, medians over rounds")
    print(f"machine: {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), load before run: {meta.get('loadavg')}")
    print("pinning: proxies on CPU 0; upstream nginx and wrk share CPU 1 (the load generator and the upstream compete)")
    print()
    hdr = f"{'proxy':<22} {'req/s':>10} {'CPU us/req':>11} {'busy':>6} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS':>10}  rounds (req/s)"
    print(hdr)
    print("-" * len(hdr))
    for proxy in order:
        per_round = " ".join(f"{r['rps']:.0f}" for r in rows[proxy])
        rss = mem.get(proxy)
        print(f"{proxy:<22} {fmt(med(proxy, 'rps'), '10.0f')} {fmt(med(proxy, 'cpu_us_per_req'), '11.2f')} "
              f"{fmt(med(proxy, 'busy') and 100 * med(proxy, 'busy'), '5.0f')}% {fmt(med(proxy, 'p50_ms'), '8.3f')} "
              f"{fmt(med(proxy, 'p99_ms'), '8.3f')} {fmt(rss and rss / 1024, '7.1f')} MiB  {per_round}")
    print()
    ng = "nginx"
    for proxy in order:
        if proxy == ng or ng not in rows:
            continue
        print(f"{proxy}/nginx: req/s {fmt(ratio(med(proxy, 'rps'), med(ng, 'rps')), '.2f')}x, "
              f"CPU/req {fmt(ratio(med(proxy, 'cpu_us_per_req'), med(ng, 'cpu_us_per_req')), '.2f')}x, "
              f"p99 {fmt(ratio(med(proxy, 'p99_ms'), med(ng, 'p99_ms')), '.2f')}x, "
              f"peak RSS {fmt(ratio(mem.get(proxy), mem.get(ng)), '.2f')}x")
    base = "portcullis-" + meta.get("baseline", "") if meta.get("baseline") else None
    if base in rows and "portcullis" in rows:
        print(f"portcullis {meta.get('scenario')}/{meta.get('baseline')}: req/s "
              f"{fmt(ratio(med('portcullis', 'rps'), med(base, 'rps')), '.2f')}x, CPU/req "
              f"{fmt(ratio(med('portcullis', 'cpu_us_per_req'), med(base, 'cpu_us_per_req')), '.2f')}x, p99 "
              f"{fmt(ratio(med('portcullis', 'p99_ms'), med(base, 'p99_ms')), '.2f')}x, peak RSS "
              f"{fmt(ratio(mem.get('portcullis'), mem.get(base)), '.2f')}x")
    if "floor" in rows and "portcullis" in rows:
        a, b = "portcullis", "floor"
        print(f"portcullis/floor: req/s {fmt(ratio(med(a, 'rps'), med(b, 'rps')), '.2f')}x, "
              f"CPU/req {fmt(ratio(med(a, 'cpu_us_per_req'), med(b, 'cpu_us_per_req')), '.2f')}x, "
              f"p99 {fmt(ratio(med(a, 'p99_ms'), med(b, 'p99_ms')), '.2f')}x")
    if "portcullis-alt" in rows and "portcullis" in rows:
        a, b = "portcullis-alt", "portcullis"
        print(f"portcullis-alt/portcullis: req/s {fmt(ratio(med(a, 'rps'), med(b, 'rps')), '.2f')}x, "
              f"CPU/req {fmt(ratio(med(a, 'cpu_us_per_req'), med(b, 'cpu_us_per_req')), '.2f')}x, "
              f"p99 {fmt(ratio(med(a, 'p99_ms'), med(b, 'p99_ms')), '.2f')}x, "
              f"peak RSS {fmt(ratio(mem.get(a), mem.get(b)), '.2f')}x")
    print()
    print("busy = proxy CPU time / wall time; below ~95% the proxy was not the bottleneck")
    print("(wrk or the upstream on CPU 1 was), and req/s ratios understate the CPU difference.")
    if bad:
        print()
        for b in bad:
            print("WARNING:", b)
        sys.exit(1)


if __name__ == "__main__":
    main()
