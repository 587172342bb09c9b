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
JWT_KEY = "bench-jwt"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"

# Scenarios and the portcullis scenario each is compared with (the plugin's
# cost is its CPU per request over that baseline's, in the same run).
SCENARIOS = {
    "bare": None,
    "key-auth": "bare",
    "jwt-hs256": "bare",
    "jwt-es256": "bare",
    "policy100": "bare",
    "policy100-context": "bare",
    "limit-count": "bare",
    "limit-count-redis": "bare",
    "telemetry": "bare",
    "audit": "bare",
    "post": None,
    "validation": "post",
}


def baseline_of(scenario):
    if routes_count(scenario):
        return "routes10" if scenario != "routes10" else None
    return SCENARIOS[scenario]


def request_body():
    """The 1 KiB JSON object POSTed by the post and validation scenarios."""
    import json
    items = [{"sku": f"SKU-{i:05d}", "qty": i % 7 + 1, "price": 10.5 + i} for i in range(12)]
    doc = {"order_id": "ord-0001", "customer": {"id": "cust-42", "email": "a@example.com"},
           "items": items, "note": ""}
    text = json.dumps(doc, separators=(",", ":"))
    doc["note"] = "x" * (1024 - len(text))
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) == 1024, len(text)
    return text


ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "customer", "items"],
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string", "pattern": "^ord-[0-9]{4}$"},
        "customer": {
            "type": "object", "required": ["id", "email"],
            "properties": {"id": {"type": "string", "maxLength": 64},
                           "email": {"type": "string", "maxLength": 254}},
        },
        "items": {
            "type": "array", "minItems": 1, "maxItems": 100,
            "items": {
                "type": "object", "required": ["sku", "qty", "price"], "additionalProperties": False,
                "properties": {"sku": {"type": "string", "pattern": "^SKU-[0-9]{5}$"},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                               "price": {"type": "number", "minimum": 0}},
            },
        },
        "note": {"type": "string", "maxLength": 2048},
    },
}


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_hs256():
    import hashlib
    import hmac
    import json
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"key": JWT_KEY, "exp": 4102444800}).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def jwt_es256(work):
    """An ES256 token signed with a fresh P-256 key (openssl); returns the
    token and the public key PEM."""
    import json
    import subprocess
    key = os.path.join(work, "jwt-es256.key")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    pub = subprocess.run(["openssl", "ec", "-in", key, "-pubout"], check=True, capture_output=True).stdout.decode()
    head = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"key": JWT_KEY, "exp": 4102444800}).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=f"{head}.{body}".encode(),
                         check=True, capture_output=True).stdout
    # DER SEQUENCE { INTEGER r, INTEGER s } -> r || s, 32 bytes each.
    def read_int(buf, i):
        assert buf[i] == 0x02
        n = buf[i + 1]
        v = buf[i + 2:i + 2 + n].lstrip(b"\x00")
        return v.rjust(32, b"\x00"), i + 2 + n
    i = 2 if der[1] < 0x80 else 3
    r, i = read_int(der, i)
    s_, _ = read_int(der, i)
    return f"{head}.{body}.{b64url(r + s_)}", pub


def policy100():
    """100 Cedar rules a platform team might write: per-team route access by
    header, plus the one rule that admits the measured request."""
    rules = []
    for i in range(99):
        rules.append(
            f'@id("team-{i}") permit(principal, action == Action::"POST", resource == Route::"svc-{i}") '
            f'when {{ context.headers.hasTag("x-team") && context.headers.getTag("x-team") == "team-{i}" '
            f'&& context.client_ip.isInRange(ip("10.{i}.0.0/16")) }};'
        )
    rules.append('@id("bench-read") permit(principal, action == Action::"GET", resource == Route::"bench");')
    return "\n".join(rules)


def policy100_context():
    """policy100 with the rule that admits the measured request reading the
    request's context (client address and a header), so Cedar evaluates
    every request instead of the plugin reusing a remembered verdict."""
    rules = policy100().split("\n")[:-1]
    rules.append(
        '@id("bench-read") permit(principal, action == Action::"GET", resource == Route::"bench") '
        'when { context.client_ip.isInRange(ip("127.0.0.0/8")) && !context.headers.hasTag("x-blocked") };'
    )
    return "\n".join(rules)


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
    elif s.startswith("jwt-"):
        # nginx (open source) cannot verify a JWT; the closest is checking
        # that the header is present.
        guard = '      if ($http_authorization = "") { return 401; }\n'
    elif s in ("limit-count", "limit-count-redis"):
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
        # The telemetry scenario writes every decision record to a file (one
        # sink); every other scenario keeps metrics only.
        '  access_log: %s' % (f'"{a.work}/access-{a.port}.log"' if s == "telemetry" else '"off"'),
        # The bare proxy: the audit store (on by default) writes every
        # request to SQLite with a hash chain and is measured on its own
        # (PORTCULLIS_BENCH_AUDIT=1 keeps it on).
        "  audit: { enabled: %s }" % ("true" if s == "audit" or os.environ.get("PORTCULLIS_BENCH_AUDIT") == "1" else "false"),
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
    elif s == "limit-count-redis":
        plugins = (", plugins: { limit-count: { count: 1000000000, time_window: 3600, rejected_code: 429, "
                   f'policy: redis, redis_host: "127.0.0.1", redis_port: {a.redis} }} }}')
    elif s.startswith("jwt-"):
        plugins = ", plugins: { jwt-auth: {} }"
    elif s == "policy100":
        import json
        plugins = ", plugins: { policy: { policies: %s } }" % json.dumps(policy100())
    elif s == "policy100-context":
        import json
        plugins = ", plugins: { policy: { policies: %s } }" % json.dumps(policy100_context())
    elif s == "validation":
        import json
        plugins = ", plugins: { request-validation: { body_schema: %s } }" % json.dumps(ORDER_SCHEMA)
    n = routes_count(s)
    if n:
        for i in range(n):
            out.append(f'  - {{ id: r{i}, uri: "/r{i}/*", upstream_id: up }}')
        out.append(f'  - {{ id: bench, uri: "/bench/*", upstream_id: up{plugins} }}')
    else:
        out.append(f'  - {{ id: bench, uri: "/*", upstream_id: up{plugins} }}')
    if s == "key-auth":
        out += ["consumers:", f"  - {{ username: bench, plugins: {{ key-auth: {{ key: {API_KEY} }} }} }}"]
    elif s == "jwt-hs256":
        out += ["consumers:",
                f"  - {{ username: bench, plugins: {{ jwt-auth: {{ key: {JWT_KEY}, secret: {JWT_SECRET} }} }} }}"]
    elif s == "jwt-es256":
        import json
        with open(os.path.join(a.work, "jwt-es256.pub")) as f:
            pub = f.read()
        out += ["consumers:",
                f"  - {{ username: bench, plugins: {{ jwt-auth: {{ key: {JWT_KEY}, algorithm: ES256, "
                f"public_key: {json.dumps(pub)} }} }} }}"]
    return "\n".join(out) + "\n"


def client_args(a):
    """What compare.sh's wrk sends, as shell-quoted words: extra headers, or
    a Lua script for a POST body."""
    import shlex
    s = a.scenario
    words = []
    if s == "key-auth":
        words = ["-H", f"apikey: {API_KEY}"]
    elif s == "jwt-hs256":
        words = ["-H", f"Authorization: Bearer {jwt_hs256()}"]
    elif s == "jwt-es256":
        token, pub = jwt_es256(a.work)
        with open(os.path.join(a.work, "jwt-es256.pub"), "w") as f:
            f.write(pub)
        words = ["-H", f"Authorization: Bearer {token}"]
    elif s in ("post", "validation"):
        lua = os.path.join(a.work, "post.lua")
        body = request_body()
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\n')
            f.write('wrk.headers["Content-Type"] = "application/json"\n')
            f.write("wrk.body = [[%s]]\n" % body)
        with open(os.path.join(a.work, "post.json"), "w") as f:
            f.write(body)
        words = ["-s", lua]
    return " ".join(shlex.quote(w) for w in words)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["upstream", "nginx", "portcullis", "client", "baseline"])
    p.add_argument("out")
    p.add_argument("--work", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", type=int)
    p.add_argument("--admin", type=int)
    p.add_argument("--metrics", type=int)
    p.add_argument("--redis", type=int)
    p.add_argument("--scenario", default="bare")
    a = p.parse_args()
    if a.kind == "baseline":
        print(baseline_of(a.scenario) or "")
        return
    if a.kind == "client":
        print(client_args(a))
        return
    text = {"upstream": upstream_conf, "nginx": nginx_conf, "portcullis": portcullis_conf}[a.kind](a)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
