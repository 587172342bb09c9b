//! Upstreams as the data plane serves them: resolved settings, nodes, a
//! balancer, and health. Health and least-conn counters live in
//! [`UpstreamState`], shared across snapshots by upstream id and config hash,
//! so a reload does not forget that a node is down.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::ConfigError;

use crate::model::{self, BalancerKind, HashOn, Nodes, PassHost, Scheme};

#[derive(Debug, Clone)]
pub struct UpstreamNode {
    pub host: String,
    pub port: u16,
    /// `host:port`, as a connection target, the plain-HTTP pool key and
    /// for the log (shared, so a request copies a pointer, not the text).
    pub authority: std::sync::Arc<str>,
    pub weight: u32,
    pub priority: i32,
}

/// Health and load of one upstream's nodes, kept across reloads.
#[derive(Debug)]
pub struct UpstreamState {
    pub healthy: Vec<AtomicBool>,
    pub in_flight: Vec<AtomicUsize>,
    /// Consecutive failures seen by passive checks, per node.
    pub failures: Vec<AtomicU32>,
    pub successes: Vec<AtomicU32>,
    cursor: AtomicUsize,
}

impl UpstreamState {
    pub fn new(nodes: usize) -> Self {
        UpstreamState {
            healthy: (0..nodes).map(|_| AtomicBool::new(true)).collect(),
            in_flight: (0..nodes).map(|_| AtomicUsize::new(0)).collect(),
            failures: (0..nodes).map(|_| AtomicU32::new(0)).collect(),
            successes: (0..nodes).map(|_| AtomicU32::new(0)).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn is_healthy(&self, node: usize) -> bool {
        self.healthy[node].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `upstreams/<id>` or `routes/<id>#upstream` for inline ones.
    pub key: String,
    pub name: Option<String>,
    pub nodes: Vec<UpstreamNode>,
    pub balancer: BalancerKind,
    pub hash_on: HashOn,
    pub hash_key: Option<String>,
    pub scheme: Scheme,
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    /// Further attempts after the first; APISIX's default is the node count - 1.
    pub retries: u32,
    pub retry_timeout: Option<Duration>,
    pub keepalive: model::KeepalivePool,
    pub checks: Option<model::Checks>,
    pub tls_verify: bool,
    pub state: Arc<UpstreamState>,
    /// Smooth weighted round robin, unrolled: the node order one full cycle
    /// of nginx's algorithm produces. Picking is then one atomic increment.
    rr_sequence: Vec<u16>,
    /// Consistent-hash ring: (point, node), sorted by point.
    ring: Vec<(u64, u16)>,
}

fn secs(field: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::new(
            field,
            "must be a number of seconds above 0 and at most 86400",
        ))
    }
}

impl Upstream {
    /// Resolve an upstream's settings. `state_for` gives the health state to
    /// use (kept from the previous snapshot when the upstream is unchanged).
    pub fn build(
        key: String,
        up: &model::Upstream,
        route_timeout: Option<&model::Timeout>,
        state_for: &dyn Fn(&str, usize) -> Arc<UpstreamState>,
    ) -> Result<Upstream, ConfigError> {
        let nodes = parse_nodes(&up.nodes)?;
        if nodes.len() > u16::MAX as usize {
            return Err(ConfigError::new("nodes", "too many nodes"));
        }
        let timeout = route_timeout
            .or(up.timeout.as_ref())
            .cloned()
            .unwrap_or_default();
        let connect_timeout = secs("timeout.connect", timeout.connect)?;
        let send_timeout = secs("timeout.send", timeout.send)?;
        let read_timeout = secs("timeout.read", timeout.read)?;
        let retry_timeout = match up.retry_timeout {
            Some(0.0) => None,
            Some(v) => Some(secs("retry_timeout", v)?),
            None => None,
        };
        if up.pass_host == PassHost::Rewrite && up.upstream_host.as_deref().unwrap_or("").is_empty()
        {
            return Err(ConfigError::new(
                "upstream_host",
                "required when pass_host is \"rewrite\"",
            ));
        }
        if up.balancer == BalancerKind::Chash
            && up.key.as_deref().unwrap_or("").is_empty()
            && up.hash_on != HashOn::Consumer
        {
            return Err(ConfigError::new("key", "required when type is \"chash\""));
        }
        if let Some(checks) = &up.checks {
            if let Some(active) = &checks.active {
                if !matches!(active.check_type.as_str(), "http" | "https" | "tcp") {
                    return Err(ConfigError::new(
                        "checks.active.type",
                        "expected http, https or tcp",
                    ));
                }
                secs("checks.active.timeout", active.timeout)?;
                secs("checks.active.healthy.interval", active.healthy.interval)?;
                secs(
                    "checks.active.unhealthy.interval",
                    active.unhealthy.interval,
                )?;
            }
        }
        let keepalive = up.keepalive_pool.clone().unwrap_or_default();
        let retries = up
            .retries
            .unwrap_or_else(|| nodes.len().saturating_sub(1) as u32);
        let state = state_for(&key, nodes.len());
        let rr_sequence = smooth_round_robin(&nodes);
        let ring = hash_ring(&nodes);
        Ok(Upstream {
            key,
            name: up.name.clone(),
            nodes,
            balancer: up.balancer,
            hash_on: up.hash_on,
            hash_key: up.key.clone(),
            scheme: up.scheme,
            pass_host: up.pass_host,
            upstream_host: up.upstream_host.clone(),
            connect_timeout,
            send_timeout,
            read_timeout,
            retries,
            retry_timeout,
            keepalive,
            checks: up.checks.clone(),
            tls_verify: up.tls.as_ref().is_none_or(|t| t.verify),
            state,
            rr_sequence,
            ring,
        })
    }

    /// Choose a node. `hash` is the chash key's hash when the balancer is
    /// chash; `tried` lists nodes already tried for this request (retries
    /// go elsewhere when they can). Unhealthy nodes are skipped; when all are
    /// unhealthy every node is a candidate again, as nginx does, since
    /// refusing everything is worse than trying.
    pub fn pick(&self, hash: Option<u64>, tried: &[usize]) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize| !tried.contains(&i) && self.state.is_healthy(i);
        let any_usable = (0..n).any(usable);
        let usable = |i: usize| {
            if any_usable {
                usable(i)
            } else {
                !tried.contains(&i) || tried.len() >= n
            }
        };
        match self.balancer {
            BalancerKind::Chash => {
                let h = hash.unwrap_or(0);
                let start = self.ring.partition_point(|(p, _)| *p < h);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1 as usize)
                    .find(|&i| usable(i))
            }
            BalancerKind::LeastConn | BalancerKind::Ewma => {
                (0..n).filter(|&i| usable(i)).min_by_key(|&i| {
                    // in_flight / weight, compared without division.
                    let load = self.state.in_flight[i].load(Ordering::Relaxed) as u64 + 1;
                    let w = self.nodes[i].weight.max(1) as u64;
                    (load * 1_000_000) / w
                })
            }
            BalancerKind::Roundrobin => {
                let len = self.rr_sequence.len();
                if len == 0 {
                    return (0..n).find(|&i| usable(i));
                }
                let start = self.state.cursor.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.rr_sequence[(start + k) % len] as usize)
                    .find(|&i| usable(i))
                    .or_else(|| (0..n).find(|&i| usable(i)))
            }
        }
    }
}

fn parse_nodes(nodes: &Nodes) -> Result<Vec<UpstreamNode>, ConfigError> {
    let mut out = Vec::new();
    match nodes {
        Nodes::Map(map) => {
            for (addr, &weight) in map {
                let (host, port) = split_host_port(addr).ok_or_else(|| {
                    ConfigError::new(format!("nodes.{addr}"), "expected \"host:port\"")
                })?;
                out.push(node(host, port, weight, 0));
            }
        }
        Nodes::List(list) => {
            for (i, n) in list.iter().enumerate() {
                if n.host.is_empty() || n.host.contains('/') {
                    return Err(ConfigError::new(
                        format!("nodes[{i}].host"),
                        "expected a host name or address",
                    ));
                }
                out.push(node(
                    n.host.clone(),
                    n.port.unwrap_or(80),
                    n.weight,
                    n.priority,
                ));
            }
        }
    }
    Ok(out)
}

fn node(host: String, port: u16, weight: u32, priority: i32) -> UpstreamNode {
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
    .into();
    UpstreamNode {
        host,
        port,
        authority,
        weight,
        priority,
    }
}

/// `host:port`, `[v6]:port`, or a bare host (port 80).
fn split_host_port(addr: &str) -> Option<(String, u16)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None if !addr.is_empty() => Some((addr.to_string(), 80)),
        None => None,
    }
}

/// One cycle of nginx's smooth weighted round robin. Weights are divided by
/// their gcd and the cycle is capped, so a cycle stays short.
fn smooth_round_robin(nodes: &[UpstreamNode]) -> Vec<u16> {
    let weights: Vec<i64> = nodes.iter().map(|n| n.weight as i64).collect();
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
    let total: i64 = weights.iter().sum();
    let cycle = total.min(10_000) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(cycle);
    for _ in 0..cycle {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u16);
    }
    seq
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// 160 points per unit of weight (capped), like ketama.
fn hash_ring(nodes: &[UpstreamNode]) -> Vec<(u64, u16)> {
    let mut ring = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let points = (n.weight.min(100) * 160) as usize;
        for p in 0..points {
            ring.push((hash_str(&format!("{}#{p}", n.authority)), i as u16));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a, 64-bit: stable across processes and versions, so every gateway
/// node maps a key to the same upstream node.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // Final mix so that similar keys spread over the ring.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(json: serde_json::Value) -> Upstream {
        let m: model::Upstream = serde_json::from_value(json).unwrap();
        Upstream::build("upstreams/1".into(), &m, None, &|_, n| {
            Arc::new(UpstreamState::new(n))
        })
        .unwrap()
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let up = upstream(serde_json::json!({"nodes": {"a:1": 5, "b:1": 1, "c:1": 1}}));
        let picks: Vec<_> = (0..7)
            .map(|_| up.nodes[up.pick(None, &[]).unwrap()].host.clone())
            .collect();
        assert_eq!(picks.iter().filter(|h| *h == "a").count(), 5);
        // Smooth: the heavy node is never picked more than twice in a row... a a b a c a a
        assert_ne!(picks[..5].iter().filter(|h| *h == "a").count(), 5);
    }

    #[test]
    fn unhealthy_nodes_are_skipped_until_all_are_down() {
        let up = upstream(serde_json::json!({"nodes": {"a:1": 1, "b:1": 1}}));
        up.state.healthy[0].store(false, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(up.pick(None, &[]), Some(1));
        }
        up.state.healthy[1].store(false, Ordering::Relaxed);
        assert!(up.pick(None, &[]).is_some());
    }

    #[test]
    fn retry_avoids_the_node_already_tried() {
        let up = upstream(serde_json::json!({"nodes": {"a:1": 1, "b:1": 1}}));
        assert_eq!(up.pick(None, &[0]), Some(1));
        assert_eq!(up.pick(None, &[1]), Some(0));
    }

    #[test]
    fn chash_is_stable_for_a_key() {
        let up = upstream(
            serde_json::json!({"type": "chash", "key": "remote_addr", "nodes": {"a:1": 1, "b:1": 1, "c:1": 1}}),
        );
        let h = hash_str("10.0.0.1");
        let first = up.pick(Some(h), &[]);
        for _ in 0..10 {
            assert_eq!(up.pick(Some(h), &[]), first);
        }
    }

    #[test]
    fn least_conn_prefers_the_idle_node() {
        let up = upstream(serde_json::json!({"type": "least_conn", "nodes": {"a:1": 1, "b:1": 1}}));
        up.state.in_flight[0].store(3, Ordering::Relaxed);
        assert_eq!(up.pick(None, &[]), Some(1));
    }

    #[test]
    fn node_addresses_parse_in_all_apisix_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:8080"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(split_host_port("[::1]:81"), Some(("::1".into(), 81)));
        assert_eq!(
            split_host_port("example.com"),
            Some(("example.com".into(), 80))
        );
        assert_eq!(split_host_port("a:b"), None);
    }

    #[test]
    fn chash_without_key_is_refused() {
        let m: model::Upstream =
            serde_json::from_value(serde_json::json!({"type": "chash", "nodes": {"a:1": 1}}))
                .unwrap();
        let err = Upstream::build("u".into(), &m, None, &|_, n| {
            Arc::new(UpstreamState::new(n))
        })
        .unwrap_err();
        assert_eq!(err.field, "key");
    }
}
