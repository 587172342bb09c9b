//! The snapshot: one immutable, fully validated configuration, compiled for
//! serving. Routes are compiled into the router, plugins constructed and
//! ordered, upstreams given their balancers. It is built off the request path
//! and swapped in whole, so a request sees one configuration from start to end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::request::RouteInfo;
use portcullis_core::{ConfigError, Consumer, Phase, Plugin};
use portcullis_plugins::consumers::{AddCredentials, CredentialSource};
use portcullis_plugins::{build_plugin, BuildContext, ConsumerIndex, SharedState};
use portcullis_router::{RouteSpec, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model;
use crate::raw::{Kind, RawConfig, RawResource};
use crate::upstream::{Upstream, UpstreamState};

/// A route ready to serve.
#[derive(Clone)]
pub struct CompiledRoute {
    pub info: Arc<RouteInfo>,
    /// Every plugin that applies (global rules first, then the route's merged
    /// set), sorted by phase, then priority.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where each phase starts in `plugins`; `phase_start[Phase::ALL.len()]`
    /// is `plugins.len()`.
    phase_start: [usize; Phase::ALL.len() + 1],
    /// The largest body any plugin on the route buffers.
    pub body_limit: Option<usize>,
    pub rewrites_response_body: bool,
    pub upstream: Option<Arc<Upstream>>,
    pub enable_websocket: bool,
}

impl CompiledRoute {
    pub fn plugins_in(&self, phase: Phase) -> &[Arc<dyn Plugin>] {
        let i = phase as usize;
        &self.plugins[self.phase_start[i]..self.phase_start[i + 1]]
    }
}

pub struct Snapshot {
    /// Increases with every successful build; reported by /readyz and metrics.
    pub version: u64,
    pub router: Router,
    /// Indexed like the router's specs.
    pub routes: Vec<CompiledRoute>,
    pub consumers: Arc<ConsumerIndex>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub ssls: Vec<model::Ssl>,
    /// Raw resources the snapshot was built from, for the Admin API's reads
    /// in file mode and for export.
    pub raw: Arc<RawConfig>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            router: Router::build(Vec::new())
                .unwrap_or_else(|_| unreachable!("an empty table builds")),
            routes: Vec::new(),
            consumers: Arc::new(ConsumerIndex::default()),
            upstreams: HashMap::new(),
            ssls: Vec::new(),
            raw: Arc::new(RawConfig::default()),
        }
    }
}

/// State that outlives snapshots: plugin state (limit counters) and upstream
/// health, each keyed so that only an edit of its own settings resets it.
#[derive(Default)]
pub struct Runtime {
    pub plugin_state: SharedState,
    /// Compiled routes of the last successful build, by route id.
    route_cache: std::sync::Mutex<HashMap<String, CachedRoute>>,
    upstream_state: std::sync::Mutex<HashMap<String, Arc<UpstreamState>>>,
    version: std::sync::atomic::AtomicU64,
}

impl Runtime {
    fn upstream_state(&self, key: &str, nodes: usize) -> Arc<UpstreamState> {
        let mut map = self
            .upstream_state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(s) if s.healthy.len() == nodes => s.clone(),
            _ => {
                let s = Arc::new(UpstreamState::new(nodes));
                map.insert(key.to_string(), s.clone());
                s
            }
        }
    }
}

struct CachedRoute {
    /// The route's raw value and its content hash: when the next build is
    /// handed the same shared value, the hash is not computed again.
    value: Arc<Value>,
    own_hash: u64,
    fingerprint: u64,
    /// `None`: the route is disabled (`status: 0`).
    compiled: Option<(RouteSpec, CompiledRoute)>,
}

/// Content hashes of the resources a route can draw on, so a route's
/// fingerprint covers everything its compiled form depends on. Consumers are
/// not among them: the credential index travels with each request.
struct Fingerprints<'a> {
    by_kind: HashMap<(Kind, &'a str), u64>,
    globals: u64,
}

impl<'a> Fingerprints<'a> {
    fn new(raw: &'a RawConfig) -> Self {
        let mut by_kind = HashMap::new();
        for kind in [Kind::PluginConfigs, Kind::Upstreams] {
            for r in raw.of(kind) {
                by_kind.insert((kind, r.id.as_str()), value_hash(&r.value));
            }
        }
        // A service's hash covers the upstream it names, so a route behind
        // the service recompiles when that upstream changes.
        for r in raw.of(Kind::Services) {
            let upstream = id_of(&r.value, "upstream_id")
                .and_then(|id| by_kind.get(&(Kind::Upstreams, id.as_str())).copied())
                .unwrap_or(0);
            by_kind.insert(
                (Kind::Services, r.id.as_str()),
                value_hash(&r.value) ^ upstream.rotate_left(17),
            );
        }
        let globals = raw.of(Kind::GlobalRules).iter().fold(0u64, |acc, r| {
            acc.rotate_left(7) ^ value_hash(&r.value) ^ crate::upstream::hash_str(&r.id)
        });
        Fingerprints { by_kind, globals }
    }

    fn route(&self, r: &RawResource, own_hash: u64) -> u64 {
        let dep = |kind: Kind, id: Option<String>| -> u64 {
            id.map_or(1, |id| {
                self.by_kind.get(&(kind, id.as_str())).copied().unwrap_or(2)
            })
        };
        let mut fp = own_hash ^ self.globals.rotate_left(1);
        fp ^= dep(Kind::Upstreams, id_of(&r.value, "upstream_id")).rotate_left(13);
        fp ^= dep(Kind::PluginConfigs, id_of(&r.value, "plugin_config_id")).rotate_left(29);
        fp ^= dep(Kind::Services, id_of(&r.value, "service_id")).rotate_left(41);
        fp
    }
}

/// A reference field (`upstream_id`, ...) as APISIX accepts it: string or number.
fn id_of(v: &Value, field: &str) -> Option<String> {
    match v.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A hash of a JSON value's content, without allocating.
fn value_hash(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(v: &Value, h: &mut rustc_hash::FxHasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, *b).hash(h),
            Value::Number(n) => {
                2u8.hash(h);
                match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => u.hash(h),
                    (None, Some(i), _) => i.hash(h),
                    (None, None, Some(f)) => f.to_bits().hash(h),
                    _ => {}
                }
            }
            Value::String(s) => (3u8, s.as_str()).hash(h),
            Value::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|x| feed(x, h));
            }
            Value::Object(m) => {
                (5u8, m.len()).hash(h);
                for (k, x) in m {
                    k.hash(h);
                    feed(x, h);
                }
            }
        }
    }
    let mut h = rustc_hash::FxHasher::default();
    feed(v, &mut h);
    h.finish()
}

fn parse<T: DeserializeOwned>(r: &RawResource) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(&*r.value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string()).in_resource(r.origin.clone())
    })
}

/// Parse every resource of one kind; collect errors rather than stopping at
/// the first, so `validate` lists them all.
fn parse_all<'a, T: DeserializeOwned>(
    raw: &'a RawConfig,
    kind: Kind,
    errors: &mut Vec<ConfigError>,
) -> Vec<(&'a RawResource, T)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for r in raw.of(kind) {
        if !seen.insert(r.id.clone()) {
            errors.push(
                ConfigError::new("id", format!("duplicate id \"{}\"", r.id))
                    .in_resource(r.origin.clone()),
            );
            continue;
        }
        match parse::<T>(r) {
            Ok(t) => out.push((r, t)),
            Err(e) => errors.push(e),
        }
    }
    out
}

/// Validate a raw configuration and compile it. Every error found is
/// returned, each naming its resource and field.
pub fn build(raw: RawConfig, runtime: &Runtime) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let upstream_defs: Vec<(&RawResource, model::Upstream)> =
        parse_all(&raw, Kind::Upstreams, &mut errors);
    let service_defs: Vec<(&RawResource, model::Service)> =
        parse_all(&raw, Kind::Services, &mut errors);
    let consumer_defs: Vec<(&RawResource, model::Consumer)> =
        parse_all(&raw, Kind::Consumers, &mut errors);
    let credential_defs: Vec<(&RawResource, model::Credential)> =
        parse_all(&raw, Kind::Credentials, &mut errors);
    let group_defs: Vec<(&RawResource, model::PluginSet)> =
        parse_all(&raw, Kind::ConsumerGroups, &mut errors);
    let plugin_config_defs: Vec<(&RawResource, model::PluginSet)> =
        parse_all(&raw, Kind::PluginConfigs, &mut errors);
    let global_defs: Vec<(&RawResource, model::PluginSet)> =
        parse_all(&raw, Kind::GlobalRules, &mut errors);
    let ssl_defs: Vec<(&RawResource, model::Ssl)> = parse_all(&raw, Kind::Ssls, &mut errors);

    // Upstreams by id.
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    for (r, def) in &upstream_defs {
        let key = format!(
            "upstreams/{}#{:x}",
            r.id,
            portcullis_plugins::context::config_hash(&r.value)
        );
        match Upstream::build(key, def, None, &|k, n| runtime.upstream_state(k, n)) {
            Ok(u) => {
                upstreams.insert(r.id.clone(), Arc::new(u));
            }
            Err(e) => errors.push(e.in_resource(r.origin.clone())),
        }
    }
    let services: HashMap<&str, (&RawResource, &model::Service)> = service_defs
        .iter()
        .map(|(r, s)| (r.id.as_str(), (*r, s)))
        .collect();
    let plugin_configs: HashMap<&str, &model::PluginSet> = plugin_config_defs
        .iter()
        .map(|(r, p)| (r.id.as_str(), p))
        .collect();
    let groups: HashMap<&str, &model::PluginSet> =
        group_defs.iter().map(|(r, g)| (r.id.as_str(), g)).collect();

    // Consumers and their credentials.
    let mut index = ConsumerIndex::default();
    let mut consumers: HashMap<String, Arc<Consumer>> = HashMap::new();
    for (r, c) in &consumer_defs {
        if let Some(g) = &c.group_id {
            if !groups.contains_key(g.0.as_str()) {
                errors.push(
                    ConfigError::new("group_id", format!("failed to fetch consumer group info by consumer group id [{g}], response code: 404"))
                        .in_resource(r.origin.clone()),
                );
            }
        }
        let consumer = Arc::new(Consumer {
            username: Arc::from(c.username.as_str()),
            group_id: c.group_id.as_ref().map(|g| Arc::from(g.0.as_str())),
            labels: c.labels.clone(),
        });
        index.add_consumer(consumer.clone());
        if let Err(e) = index.add(CredentialSource {
            consumer: consumer.clone(),
            credential_id: None,
            plugins: &c.plugins,
        }) {
            errors.push(e.in_resource(r.origin.clone()));
        }
        consumers.insert(c.username.clone(), consumer);
    }
    for (r, cred) in &credential_defs {
        let (user, cred_id) = r.id.split_once('/').unwrap_or((&r.id, ""));
        let Some(consumer) = consumers.get(user) else {
            errors.push(ConfigError::new("", "consumer not found").in_resource(r.origin.clone()));
            continue;
        };
        if let Err(e) = index.add(CredentialSource {
            consumer: consumer.clone(),
            credential_id: Some(Arc::from(cred_id)),
            plugins: &cred.plugins,
        }) {
            errors.push(e.in_resource(r.origin.clone()));
        }
    }
    let index = Arc::new(index);

    // Global rules: built once, shared by every route.
    let mut global_plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    for (r, g) in &global_defs {
        let owner = format!("global_rules/{}", r.id);
        match build_plugins(
            g.plugins.iter().map(|(k, v)| (k.as_str(), v)),
            &owner,
            &index,
            runtime,
        ) {
            Ok(p) => global_plugins.extend(p),
            Err(e) => errors.extend(e.into_iter().map(|e| e.in_resource(r.origin.clone()))),
        }
    }

    // Routes. A route whose own config and everything it draws on (service,
    // plugin_config, upstream, global rules) is unchanged since the last build
    // is taken from the cache instead of being parsed and compiled again, so
    // one write among 10,000 routes does not pay for the other 9,999.
    let fingerprints = Fingerprints::new(&raw);
    let mut cache = runtime
        .route_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut next_cache: HashMap<String, CachedRoute> =
        HashMap::with_capacity(raw.of(Kind::Routes).len());
    let mut specs = Vec::new();
    let mut routes = Vec::new();
    let mut spec_origin = Vec::new();
    let mut seen_ids = HashSet::new();
    for r in raw.of(Kind::Routes) {
        if !seen_ids.insert(r.id.as_str()) {
            errors.push(
                ConfigError::new("id", format!("duplicate id \"{}\"", r.id))
                    .in_resource(r.origin.clone()),
            );
            continue;
        }
        let cached = cache.remove(&r.id);
        let own_hash = match &cached {
            Some(c) if Arc::ptr_eq(&c.value, &r.value) => c.own_hash,
            _ => value_hash(&r.value),
        };
        let fingerprint = fingerprints.route(r, own_hash);
        let compiled = match cached {
            Some(hit) if hit.fingerprint == fingerprint => Ok(hit.compiled),
            _ => parse::<model::Route>(r)
                .map_err(|e| vec![e])
                .and_then(|route| {
                    compile_route(
                        r,
                        &route,
                        &services,
                        &plugin_configs,
                        &upstreams,
                        &global_plugins,
                        &index,
                        runtime,
                    )
                    .and_then(|c| {
                        crate::tiers::check_route(&route, &services, &plugin_configs, &global_defs)
                            .map(|()| c)
                    })
                }),
        };
        match compiled {
            Ok(compiled) => {
                if let Some((spec, route)) = &compiled {
                    specs.push(spec.clone());
                    routes.push(route.clone());
                    spec_origin.push(r.origin.clone());
                }
                next_cache.insert(
                    r.id.clone(),
                    CachedRoute {
                        value: r.value.clone(),
                        own_hash,
                        fingerprint,
                        compiled,
                    },
                );
            }
            Err(e) => errors.extend(e.into_iter().map(|e| {
                if e.resource.is_empty() {
                    e.in_resource(r.origin.clone())
                } else {
                    e
                }
            })),
        }
    }
    if errors.is_empty() {
        *cache = next_cache;
    }
    drop(cache);
    let router = match Router::build(specs) {
        Ok(router) => Some(router),
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| {
                ConfigError::new(format!("{}{}", e.field, e.path), e.message)
                    .in_resource(spec_origin[e.index].clone())
            }));
            None
        }
    };

    let mut ssls = Vec::new();
    for (r, s) in ssl_defs {
        if let Err(e) = crate::ssl::parse(&s) {
            errors.push(e.in_resource(r.origin.clone()));
        }
        ssls.push(s);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let version = runtime
        .version
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    Ok(Snapshot {
        version,
        router: router.unwrap_or_else(|| unreachable!("router errors return above")),
        routes,
        consumers: index,
        upstreams,
        ssls,
        raw: Arc::new(raw),
    })
}

fn build_plugins<'a>(
    plugins: impl IntoIterator<Item = (&'a str, &'a Value)>,
    owner: &str,
    consumers: &Arc<ConsumerIndex>,
    runtime: &Runtime,
) -> Result<Vec<Arc<dyn Plugin>>, Vec<ConfigError>> {
    let ctx = BuildContext {
        consumers,
        owner,
        state: &runtime.plugin_state,
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, conf) in plugins {
        match build_plugin(name, conf, &ctx) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => {}
            Err(e) => errors.push(e.under("plugins")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    r: &RawResource,
    route: &model::Route,
    services: &HashMap<&str, (&RawResource, &model::Service)>,
    plugin_configs: &HashMap<&str, &model::PluginSet>,
    upstreams: &HashMap<String, Arc<Upstream>>,
    global_plugins: &[Arc<dyn Plugin>],
    consumers: &Arc<ConsumerIndex>,
    runtime: &Runtime,
) -> Result<Option<(RouteSpec, CompiledRoute)>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let err = |field: &str, msg: String| ConfigError::new(field, msg);

    let service = match &route.service_id {
        Some(id) => match services.get(id.0.as_str()) {
            Some((_, s)) => Some(*s),
            None => {
                errors.push(err(
                    "service_id",
                    format!(
                        "failed to fetch service info by service id [{id}], response code: 404"
                    ),
                ));
                None
            }
        },
        None => None,
    };

    // Plugins: service < plugin_config < route, by name (APISIX's precedence).
    let mut merged: BTreeMap<&str, &Value> = BTreeMap::new();
    if let Some(s) = service {
        merged.extend(s.plugins.iter().map(|(k, v)| (k.as_str(), v)));
    }
    if let Some(id) = &route.plugin_config_id {
        match plugin_configs.get(id.0.as_str()) {
            Some(pc) => merged.extend(pc.plugins.iter().map(|(k, v)| (k.as_str(), v))),
            None => errors.push(err(
                "plugin_config_id",
                format!("failed to fetch plugin config info by plugin config id [{id}], response code: 404"),
            )),
        }
    }
    merged.extend(route.plugins.iter().map(|(k, v)| (k.as_str(), v)));

    // Upstream: the route's own, else the service's.
    let route_timeout = route.timeout.as_ref();
    let inline_key = |what: &str, value: &Value| {
        format!(
            "{}#{what}#{:x}",
            r.origin.replace('[', "/").replace(']', ""),
            portcullis_plugins::context::config_hash(value)
        )
    };
    let upstream = if let Some(up) = &route.upstream {
        let key = inline_key("upstream", r.value.get("upstream").unwrap_or(&Value::Null));
        match Upstream::build(key, up, route_timeout, &|k, n| runtime.upstream_state(k, n)) {
            Ok(u) => Some(Arc::new(u)),
            Err(e) => {
                errors.push(e.under("upstream"));
                None
            }
        }
    } else if let Some(id) = &route.upstream_id {
        match upstreams.get(&id.0) {
            Some(u) => Some(with_route_timeout(u, route_timeout)),
            None => {
                errors.push(err(
                    "upstream_id",
                    format!(
                        "failed to fetch upstream info by upstream id [{id}], response code: 404"
                    ),
                ));
                None
            }
        }
    } else if let Some(s) = service {
        if let Some(up) = &s.upstream {
            let (sr, _) = services[route
                .service_id
                .as_ref()
                .map(|i| i.0.as_str())
                .unwrap_or_default()];
            let key = inline_key(
                "service-upstream",
                sr.value.get("upstream").unwrap_or(&Value::Null),
            );
            match Upstream::build(key, up, route_timeout, &|k, n| runtime.upstream_state(k, n)) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    errors.push(e.under("upstream").in_resource(sr.origin.clone()));
                    None
                }
            }
        } else if let Some(id) = &s.upstream_id {
            match upstreams.get(&id.0) {
                Some(u) => Some(with_route_timeout(u, route_timeout)),
                None => {
                    errors.push(err(
                        "service_id",
                        format!("the service's upstream [{id}] does not exist"),
                    ));
                    None
                }
            }
        } else {
            None
        }
    } else {
        None
    };

    let owner = format!("routes/{}", r.id);
    let route_plugins = match build_plugins(merged, &owner, consumers, runtime) {
        Ok(p) => p,
        Err(e) => {
            errors.extend(e);
            Vec::new()
        }
    };

    // Match conditions.
    let mut uris = route.uris.clone();
    if let Some(u) = &route.uri {
        uris.insert(0, u.clone());
    }
    if uris.is_empty() {
        errors.push(err("uri", "required: set uri or uris".into()));
    }
    for (i, u) in uris.iter().enumerate() {
        if !u.starts_with('/') {
            errors.push(err(
                if route.uri.is_some() && i == 0 {
                    "uri"
                } else {
                    "uris"
                },
                format!("\"{u}\" must start with /"),
            ));
        }
    }
    let mut methods = Vec::new();
    for m in &route.methods {
        const KNOWN: [&str; 9] = [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
        ];
        if !KNOWN.contains(&m.as_str()) {
            errors.push(err(
                "methods",
                format!(
                    "unknown method \"{m}\" (expected one of {})",
                    KNOWN.join(", ")
                ),
            ));
        } else if let Ok(m) = http::Method::from_bytes(m.as_bytes()) {
            methods.push(m);
        }
    }
    let mut hosts = route.hosts.clone();
    if let Some(h) = &route.host {
        hosts.insert(0, h.clone());
    }
    if hosts.is_empty() {
        if let Some(s) = service {
            hosts = s.hosts.clone();
        }
    }
    let mut remote_addrs = Vec::new();
    for a in route.remote_addr.iter().chain(route.remote_addrs.iter()) {
        match parse_cidr(a) {
            Some(net) => remote_addrs.push(net),
            None => errors.push(err(
                "remote_addrs",
                format!("\"{a}\" is not an IP address or CIDR"),
            )),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if route.status == 0 {
        return Ok(None);
    }

    let mut plugins: Vec<Arc<dyn Plugin>> = global_plugins
        .iter()
        .cloned()
        .chain(route_plugins)
        .collect();
    plugins.sort_by_key(|p| (p.phase(), std::cmp::Reverse(p.priority())));
    let mut phase_start = [plugins.len(); Phase::ALL.len() + 1];
    for (i, phase) in Phase::ALL.iter().enumerate() {
        phase_start[i] = plugins
            .iter()
            .position(|p| p.phase() >= *phase)
            .unwrap_or(plugins.len());
    }
    let body_limit = plugins.iter().filter_map(|p| p.body_limit()).max();
    let rewrites_response_body = plugins.iter().any(|p| p.rewrites_response_body());

    let info = Arc::new(RouteInfo {
        id: Arc::from(r.id.as_str()),
        name: route.name.as_deref().map(Arc::from),
        service_id: route.service_id.as_ref().map(|s| Arc::from(s.0.as_str())),
        labels: route.labels.clone(),
    });
    let spec = RouteSpec {
        uris,
        methods,
        hosts,
        remote_addrs,
        vars: route.vars.clone(),
        priority: route.priority,
    };
    let enable_websocket = route
        .enable_websocket
        .or(service.and_then(|s| s.enable_websocket))
        .unwrap_or(false);
    Ok(Some((
        spec,
        CompiledRoute {
            info,
            plugins,
            phase_start,
            body_limit,
            rewrites_response_body,
            upstream,
            enable_websocket,
        },
    )))
}

/// A route's own `timeout` overrides its upstream's; the upstream is shared,
/// so the route gets a copy with its timeouts.
fn with_route_timeout(up: &Arc<Upstream>, timeout: Option<&model::Timeout>) -> Arc<Upstream> {
    match timeout {
        None => up.clone(),
        Some(t) => {
            let mut copy = Upstream::clone(up);
            copy.connect_timeout = std::time::Duration::from_secs_f64(t.connect.max(0.001));
            copy.send_timeout = std::time::Duration::from_secs_f64(t.send.max(0.001));
            copy.read_timeout = std::time::Duration::from_secs_f64(t.read.max(0.001));
            Arc::new(copy)
        }
    }
}

pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}
