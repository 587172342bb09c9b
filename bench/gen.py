#!/usr/bin/env python3
"""Writes the configs bench/compare.sh runs: the upstream nginx, the nginx
proxy and portcullis, for one scenario.

    gen.py upstream   OUT --work DIR --port P
    gen.py nginx      OUT --work DIR --port P --upstream U --scenario S
    gen.py portcullis OUT --work DIR --port P --upstream U --scenario S --admin A --metrics M

Every scenario serves the measured request `GET /bench/item` (compare.sh
sends it) from the same upstream: a fixed 1 KiB body.
"""
import argparse
import os
import re

BODY = ("portcullis bench " * 64)[:1023] + "\n"  # exactly 1 KiB
assert len(BODY.encode()) == 1024
API_KEY = "bench-key-0123456789"


def routes_count(scenario):
    m = re.fullmatch(r"routes(\d+)", scenario)
    return int(m.group(1)) if m else 0


def nginx_common(work, name):
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = os.path.join(work, "nginx-tmp", name)
    os.makedirs(tmp, exist_ok=True)
    return f"""{user}worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_temp_paths(work, name):
    tmp = os.path.join(work, "nginx-tmp", name)
    return "\n".join(
        f"  {d}_temp_path {tmp}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def upstream_conf(a):
    return nginx_common(a.work, "upstream") + f"""http {{
  access_log off;
{nginx_temp_paths(a.work, "upstream")}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{a.port} backlog=4096;
    location / {{
      default_type text/plain;
      return 200 "{BODY.rstrip(chr(10))}\\n";
    }}
  }}
}}
"""


def nginx_conf(a):
    s = a.scenario
    extra_http = ""
    guard = ""
    if s == "key-auth":
        # What key-auth does, the nginx way: a header compared to a constant.
        guard = f'      if ($http_apikey != "{API_KEY}") {{ return 401; }}\n'
    elif s == "limit-count":
        # nginx has no fixed-window counter; limit_req on the client address
        # with a rate never reached is the closest per-request bookkeeping.
        extra_http = "  limit_req_zone $binary_remote_addr zone=bench:10m rate=100000000r/s;\n"
        guard = "      limit_req zone=bench burst=100000000 nodelay;\n"
    locations = []
    n = routes_count(s)
    if n:
        for i in range(n):
            locations.append(f"    location /r{i}/ {{ proxy_pass http://up; }}")
        locations.append(f"    location /bench/ {{\n{guard}      proxy_pass http://up;\n    }}")
    else:
        locations.append(f"    location / {{\n{guard}      proxy_pass http://up;\n    }}")
    locs = "\n".join(locations)
    return nginx_common(a.work, "nginx") + f"""http {{
  access_log off;
{nginx_temp_paths(a.work, "nginx")}
  # Client side: keep wrk's connections open, as portcullis does.
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{extra_http}  upstream up {{
    server 127.0.0.1:{a.upstream};
    keepalive 64;
    keepalive_requests 1000;   # portcullis's keepalive_pool.requests default
  }}
  server {{
    listen 127.0.0.1:{a.port} backlog=4096;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    # The headers portcullis (like APISIX) adds upstream.
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header X-Forwarded-Port $server_port;
{locs}
  }}
}}
"""


def portcullis_conf(a):
    s = a.scenario
    data_dir = os.path.join(a.work, f"data-{a.port}")
    out = [
        "gateway:",
        f'  listen: ["127.0.0.1:{a.port}"]',
        f'  admin: {{ listen: "127.0.0.1:{a.admin}" }}',
        f'  metrics: {{ listen: "127.0.0.1:{a.metrics}" }}',
        "  config_source: file",
        f'  data_dir: "{data_dir}"',
        "  workers: 1",
        '  access_log: "off"',
        # The bare proxy: the audit store (on by default) writes every
        # request to SQLite with a hash chain and is measured on its own
        # (PORTCULLIS_BENCH_AUDIT=1 keeps it on).
        "  audit: { enabled: %s }" % ("true" if os.environ.get("PORTCULLIS_BENCH_AUDIT") == "1" else "false"),
        "  log_level: error",
        "upstreams:",
        "  - id: up",
        "    type: roundrobin",
        f'    nodes: {{ "127.0.0.1:{a.upstream}": 1 }}',
        "routes:",
    ]
    plugins = ""
    if s == "key-auth":
        plugins = ", plugins: { key-auth: {} }"
    elif s == "limit-count":
        plugins = ", plugins: { limit-count: { count: 1000000000, time_window: 3600, rejected_code: 429 } }"
    n = routes_count(s)
    if n:
        for i in range(n):
            out.append(f'  - {{ id: r{i}, uri: "/r{i}/*", upstream_id: up }}')
        out.append(f'  - {{ id: bench, uri: "/bench/*", upstream_id: up{plugins} }}')
    else:
        out.append(f'  - {{ id: bench, uri: "/*", upstream_id: up{plugins} }}')
    if s == "key-auth":
        out += ["consumers:", f"  - {{ username: bench, plugins: {{ key-auth: {{ key: {API_KEY} }} }} }}"]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["upstream", "nginx", "portcullis"])
    p.add_argument("out")
    p.add_argument("--work", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", type=int)
    p.add_argument("--admin", type=int)
    p.add_argument("--metrics", type=int)
    p.add_argument("--scenario", default="bare")
    a = p.parse_args()
    text = {"upstream": upstream_conf, "nginx": nginx_conf, "portcullis": portcullis_conf}[a.kind](a)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
