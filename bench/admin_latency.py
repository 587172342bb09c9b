#!/usr/bin/env python3
"""Helper of bench/admin_latency.sh.

    admin_latency.py gen OUT --routes N --upstream HOST:PORT
        A resource file for `portcullis import`: upstream `u1` and N routes
        `/r{i}/*` shaped like crates/config/examples/snapshot_rebuild.rs's
        (methods, request-id, proxy-rewrite), so both figures describe the
        same table.

    admin_latency.py measure --admin URL --data URL --key KEY --writes W [--json OUT]
        W times: PUT /apisix/admin/routes/adm-lat-{i} (a new route on a new
        path), then poll the data plane on that path as fast as one
        keep-alive connection allows until it answers 200. Reports the PUT's
        round trip (sent -> 2xx read), and from the 2xx to the first response
        the new route served (the end of that 200), with how many polls it
        took; for comparison, the round trip of a request to an old route
        (/r0/x) made just before each PUT. Everything on keep-alive
        connections, time.perf_counter().
"""
import argparse
import http.client
import json
import math
import socket
import statistics
import sys
import time
import urllib.parse


def gen(a):
    host, port = a.upstream.rsplit(":", 1)
    out = [
        "upstreams:",
        f'  - {{ id: u1, type: roundrobin, nodes: {{ "{host}:{port}": 1 }} }}',
        "routes:",
    ]
    for i in range(a.routes):
        out.append(
            f'  - {{ id: r{i}, uri: "/r{i}/*", methods: [GET, POST], upstream_id: u1, '
            f'plugins: {{ request-id: {{}}, proxy-rewrite: {{ headers: {{ set: {{ x-route: "r{i}-0" }} }} }} }} }}'
        )
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


def conn(url):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.connect()
    # Nagle off: each poll is one small request.
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, data


def pct(values, p):
    s = sorted(values)
    # nearest-rank percentile
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def measure(a):
    admin = conn(a.admin)
    data = conn(a.data)
    hdr = {"X-API-KEY": a.key, "Content-Type": "application/json"}
    put_rtt, ack_to_served, polls_needed, served_rtt, baseline_rtt = [], [], [], [], []
    run = int(time.time())
    for i in range(a.writes):
        rid = f"adm-lat-{run}-{i}"
        path = f"/{rid}/x"
        st, _ = call(data, "GET", path)
        if st != 404:
            sys.exit(f"{path} answered {st} before its route was written")
        # Baseline: a route that has been served for a while, same connection.
        t0 = time.perf_counter()
        st, _ = call(data, "GET", "/r0/x")
        baseline_rtt.append((time.perf_counter() - t0) * 1000)
        if st != 200:
            sys.exit(f"/r0/x answered {st}")
        body = json.dumps({"uri": f"/{rid}/*", "upstream_id": "u1"})
        t_send = time.perf_counter()
        st, resp = call(admin, "PUT", f"/apisix/admin/routes/{rid}", body, hdr)
        t_ack = time.perf_counter()
        if st not in (200, 201):
            sys.exit(f"PUT {rid} answered {st}: {resp[:300]!r}")
        polls = 0
        deadline = t_ack + a.timeout
        while True:
            t_poll = time.perf_counter()
            st, _ = call(data, "GET", path)
            polls += 1
            t_done = time.perf_counter()
            if st == 200:
                break
            if t_done > deadline:
                sys.exit(f"route {rid} not served {a.timeout}s after its 2xx (last status {st})")
        put_rtt.append((t_ack - t_send) * 1000)
        ack_to_served.append((t_done - t_ack) * 1000)
        served_rtt.append((t_done - t_poll) * 1000)
        polls_needed.append(polls)
        if a.pause:
            time.sleep(a.pause)

    def stats(v):
        return {
            "median_ms": round(statistics.median(v), 3),
            "p99_ms": round(pct(v, 99), 3),
            "max_ms": round(max(v), 3),
            "min_ms": round(min(v), 3),
        }

    out = {
        "writes": a.writes,
        "put_round_trip": stats(put_rtt),
        "ack_to_served": stats(ack_to_served),
        "served_request_round_trip": stats(served_rtt),
        "baseline_request_round_trip": stats(baseline_rtt),
        "served_on_first_poll": sum(1 for p in polls_needed if p == 1),
        "max_polls": max(polls_needed),
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("out")
    g.add_argument("--routes", type=int, default=10000)
    g.add_argument("--upstream", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--admin", required=True)
    m.add_argument("--data", required=True)
    m.add_argument("--key", required=True)
    m.add_argument("--writes", type=int, default=100)
    m.add_argument("--timeout", type=float, default=5.0)
    m.add_argument("--pause", type=float, default=0.0, help="seconds between writes")
    m.add_argument("--json")
    a = p.parse_args()
    {"gen": gen, "measure": measure}[a.cmd](a)


if __name__ == "__main__":
    main()
