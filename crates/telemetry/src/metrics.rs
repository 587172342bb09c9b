//! Prometheus metrics (prometheus-client), named after APISIX's where they
//! overlap (`apisix_http_status` → `portcullis_http_status`, ...); see
//! docs/metrics.md.
//!
//! Recording is cheap: a family lookup takes a read lock, so each worker
//! thread keeps its own cache of metric handles per (route, consumer,
//! upstream node) and per (route, plugin, result). A request touches only
//! its thread's cache and the metrics' atomics.

use std::cell::RefCell;
use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use std::sync::Arc;

use portcullis_core::consumer::Consumer;
use portcullis_core::decision::{DecisionRecord, Outcome};
use portcullis_core::request::RouteInfo;
use portcullis_core::RequestState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// APISIX's default latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 15] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// Past this many cached handle sets a thread starts its cache afresh, so
/// routes removed by reloads do not pin memory forever.
const CACHE_LIMIT: usize = 4096;

pub struct Metrics {
    registry: Registry,
    http_status: Family<Labels, Counter>,
    http_latency: HistogramFamily,
    bandwidth: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    dry_run: Family<Labels, Counter>,
    sink_records: Family<Labels, Counter>,
    config_version: Gauge,
    config_reloads: Family<Labels, Counter>,
    upstream_status: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_status = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_http_status",
            "HTTP responses by status code, route, service, consumer and upstream node (APISIX: apisix_http_status)",
            http_status.clone(),
        );
        let http_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "portcullis_http_latency",
            "Request latency in milliseconds; type=request (total), upstream, apisix (the gateway's own share) (APISIX: apisix_http_latency)",
            http_latency.clone(),
        );
        let bandwidth = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_bandwidth",
            "Body bytes; type=ingress (from clients) or egress (to clients) (APISIX: apisix_bandwidth)",
            bandwidth.clone(),
        );
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_decisions",
            "Decisions of enforcing plugins by route, plugin and result (allow, reject, would_reject)",
            decisions.clone(),
        );
        let dry_run = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_dry_run_would_reject",
            "Requests a dry-run plugin would have rejected, by route and plugin",
            dry_run.clone(),
        );
        let sink_records = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_sink_records",
            "Decision records per sink; result=sent, dropped (buffer full) or failed (delivery gave up)",
            sink_records.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "portcullis_config_version",
            "Version of the configuration snapshot serving requests",
            config_version.clone(),
        );
        let config_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "portcullis_config_reloads",
            "Configuration updates; result=applied or refused",
            config_reloads.clone(),
        );
        let upstream_status = Family::<Labels, Gauge>::default();
        registry.register(
            "portcullis_upstream_status",
            "Health of each upstream node: 1 healthy, 0 unhealthy (APISIX: apisix_upstream_status)",
            upstream_status.clone(),
        );
        Metrics {
            registry,
            http_status,
            http_latency,
            bandwidth,
            decisions,
            dry_run,
            sink_records,
            config_version,
            config_reloads,
            upstream_status,
        }
    }

    /// The counter a sink bumps for `result` (`sent`, `dropped`, `failed`).
    /// Sinks look it up once and keep it.
    pub fn sink_counter(&self, sink: &str, result: &'static str) -> Counter {
        self.sink_records.get_or_create_owned(&vec![
            ("sink", sink.to_string()),
            ("result", result.to_string()),
        ])
    }

    /// Set the configuration gauges from the live status (scrape time).
    pub fn set_config(&self, version: u64, applied: u64, refused: u64) {
        self.config_version.set(version as i64);
        for (result, total) in [("applied", applied), ("refused", refused)] {
            let c = self
                .config_reloads
                .get_or_create_owned(&vec![("result", result.to_string())]);
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
    }

    /// Report one upstream node's health (scrape time).
    pub fn set_upstream_status(&self, name: &str, node: &str, healthy: bool) {
        let (ip, port) = split_host_port(node);
        self.upstream_status
            .get_or_create(&vec![
                ("name", name.to_string()),
                ("ip", ip.to_string()),
                ("port", port.to_string()),
            ])
            .set(i64::from(healthy));
    }

    /// Forget every upstream status series, before re-reporting the current
    /// ones (so removed upstreams disappear).
    pub fn clear_upstream_status(&self) {
        self.upstream_status.clear();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Record one request: status, latencies, bandwidth, decisions.
    pub fn observe(&self, req: &RequestState, rec: &DecisionRecord<'_>) {
        // Pointers for the cache key; the Arcs are cloned only on a miss.
        let route = rec.route.map(|_| &req.route);
        let consumer = req.identity.as_ref().map(|i| &i.consumer);
        let node = rec.upstream_addr.map(host_of).unwrap_or("");
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let cache = &mut *cache;
            if cache.requests.len() > CACHE_LIMIT || cache.decisions.len() > CACHE_LIMIT {
                cache.requests.clear();
                cache.decisions.clear();
            }
            let owner = self as *const Metrics as usize;
            let key = RequestKey {
                owner,
                route: route.map_or(0, |r| Arc::as_ptr(r) as usize),
                consumer: consumer.map_or(0, |c| Arc::as_ptr(c) as usize),
                node: hash_str(node),
            };
            let handles = cache
                .requests
                .entry(key)
                .or_insert_with(|| self.request_handles(route.cloned(), consumer.cloned(), node));
            handles.status(rec.status).inc();
            let total = rec.latency.as_secs_f64() * 1000.0;
            handles.request.observe(total);
            if let Some(up) = rec.upstream_latency {
                let up = up.as_secs_f64() * 1000.0;
                handles.upstream.observe(up);
                handles.gateway.observe((total - up).max(0.0));
            } else {
                handles.gateway.observe(total);
            }
            if let Some(n) = rec.bytes_in {
                handles.ingress.inc_by(n);
            }
            if let Some(n) = rec.bytes_out {
                handles.egress.inc_by(n);
            }
            for d in rec.decisions {
                let key = (
                    owner,
                    key.route,
                    d.plugin.as_ptr() as usize,
                    d.plugin.len(),
                    d.outcome as u8,
                );
                let counters = cache.decisions.entry(key).or_insert_with(|| {
                    let route_id = rec.route.map_or(String::new(), |r| r.id.to_string());
                    DecisionHandles {
                        _route: route.cloned(),
                        count: self.decisions.get_or_create_owned(&vec![
                            ("route", route_id.clone()),
                            ("plugin", d.plugin.to_string()),
                            ("result", d.outcome.as_str().to_string()),
                        ]),
                        dry_run: (d.outcome == Outcome::WouldReject).then(|| {
                            self.dry_run.get_or_create_owned(&vec![
                                ("route", route_id),
                                ("plugin", d.plugin.to_string()),
                            ])
                        }),
                    }
                });
                counters.count.inc();
                if let Some(c) = &counters.dry_run {
                    c.inc();
                }
            }
        });
    }

    fn request_handles(
        &self,
        route: Option<Arc<RouteInfo>>,
        consumer: Option<Arc<Consumer>>,
        node: &str,
    ) -> RequestHandles {
        let route_id = route.as_ref().map_or(String::new(), |r| r.id.to_string());
        let service = route
            .as_ref()
            .and_then(|r| r.service_id.as_deref())
            .unwrap_or("")
            .to_string();
        let consumer_name = consumer
            .as_ref()
            .map_or(String::new(), |c| c.username.to_string());
        let base = |kind: &'static str| -> Labels {
            vec![
                ("type", kind.to_string()),
                ("route", route_id.clone()),
                ("service", service.clone()),
                ("consumer", consumer_name.clone()),
                ("node", node.to_string()),
            ]
        };
        RequestHandles {
            status_labels: vec![
                ("code", String::new()),
                ("route", route_id.clone()),
                // APISIX's matched_uri / matched_host: the route's own
                // patterns. Not carried by RouteInfo yet (docs/metrics.md).
                ("matched_uri", String::new()),
                ("matched_host", String::new()),
                ("service", service.clone()),
                ("consumer", consumer_name.clone()),
                ("node", node.to_string()),
            ],
            statuses: Vec::new(),
            request: self.http_latency.get_or_create_owned(&base("request")),
            upstream: self.http_latency.get_or_create_owned(&base("upstream")),
            gateway: self.http_latency.get_or_create_owned(&base("apisix")),
            ingress: self.bandwidth.get_or_create_owned(&base("ingress")),
            egress: self.bandwidth.get_or_create_owned(&base("egress")),
            status_family: self.http_status.clone(),
            _route: route,
            _consumer: consumer,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    /// Which registry the handles belong to (tests build several).
    owner: usize,
    route: usize,
    consumer: usize,
    node: u64,
}

struct RequestHandles {
    status_labels: Labels,
    statuses: Vec<(u16, Counter)>,
    request: Histogram,
    upstream: Histogram,
    gateway: Histogram,
    ingress: Counter,
    egress: Counter,
    status_family: Family<Labels, Counter>,
    // Held so that the pointers in the cache key stay unique while cached.
    _route: Option<Arc<RouteInfo>>,
    _consumer: Option<Arc<Consumer>>,
}

impl RequestHandles {
    fn status(&mut self, code: u16) -> &Counter {
        if let Some(i) = self.statuses.iter().position(|(c, _)| *c == code) {
            return &self.statuses[i].1;
        }
        self.status_labels[0].1 = code.to_string();
        let c = self.status_family.get_or_create_owned(&self.status_labels);
        self.statuses.push((code, c));
        &self.statuses[self.statuses.len() - 1].1
    }
}

struct DecisionHandles {
    _route: Option<Arc<RouteInfo>>,
    count: Counter,
    dry_run: Option<Counter>,
}

#[derive(Default)]
struct Cache {
    // FxHash: the keys are pointers and small integers the gateway made, not
    // client input, and SipHash showed up in the per-request profile.
    requests: HashMap<RequestKey, RequestHandles, FxBuildHasher>,
    decisions: HashMap<(usize, usize, usize, usize, u8), DecisionHandles, FxBuildHasher>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn hash_str(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// `10.0.0.1:80` → `10.0.0.1`; `[::1]:80` → `::1`; a name stays a name.
fn host_of(addr: &str) -> &str {
    split_host_port(addr).0
}

fn split_host_port(addr: &str) -> (&str, &str) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').unwrap_or(""));
        }
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (addr, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::decision::Decision;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_request_is_counted_with_apisix_labels_and_cached_handles() {
        let m = Metrics::new();
        let (head, ()) = http::Request::new(()).into_parts();
        let mut req = RequestState::new(head, "127.0.0.1:1000".parse().unwrap(), "http", 9080);
        req.route = Arc::new(RouteInfo {
            id: Arc::from("r1"),
            service_id: Some(Arc::from("s1")),
            ..Default::default()
        });
        let decisions = [Decision::allow("key-auth"), {
            let mut d = Decision::reject("ip-restriction", "x");
            d.outcome = Outcome::WouldReject;
            d
        }];
        for _ in 0..3 {
            let rec = DecisionRecord {
                time: SystemTime::now(),
                request_id: None,
                trace_id: [1; 16],
                route: Some(&req.route),
                identity: None,
                client_ip: req.client_ip,
                client_port: 1000,
                scheme: "http",
                method: "GET",
                host: None,
                path: "/",
                query: None,
                status: 200,
                latency: Duration::from_millis(12),
                upstream_latency: Some(Duration::from_millis(10)),
                upstream_addr: Some("127.0.0.1:8080"),
                upstream_attempts: 1,
                bytes_in: Some(5),
                bytes_out: Some(100),
                decisions: &decisions,
                headers: None,
                encoded: OnceLock::new(),
            };
            m.observe(&req, &rec);
        }
        let text = m.render();
        assert!(text.contains("portcullis_http_status_total{code=\"200\",route=\"r1\",matched_uri=\"\",matched_host=\"\",service=\"s1\",consumer=\"\",node=\"127.0.0.1\"} 3"), "{text}");
        assert!(text.contains("portcullis_bandwidth_total{type=\"egress\",route=\"r1\",service=\"s1\",consumer=\"\",node=\"127.0.0.1\"} 300"), "{text}");
        assert!(text.contains("portcullis_http_latency_count{type=\"upstream\",route=\"r1\",service=\"s1\",consumer=\"\",node=\"127.0.0.1\"} 3"), "{text}");
        assert!(
            text.contains(
                "portcullis_decisions_total{route=\"r1\",plugin=\"key-auth\",result=\"allow\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "portcullis_dry_run_would_reject_total{route=\"r1\",plugin=\"ip-restriction\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("10.0.0.1:80"), ("10.0.0.1", "80"));
        assert_eq!(split_host_port("[::1]:80"), ("::1", "80"));
        assert_eq!(split_host_port("example.com"), ("example.com", ""));
    }
}
