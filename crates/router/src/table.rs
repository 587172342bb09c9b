//! The route table: built once from every route's matching fields, then asked on each
//! request which route (by position in the input) serves it.
//!
//! # Candidate order
//!
//! As in APISIX's radixtree router, path patterns decide the order in which routes are
//! tried, and the first route whose methods, hosts, remote_addrs and vars all admit the
//! request wins:
//! 1. exact uris equal to the path;
//! 2. then prefix (`/api/*`) and parameterised (`/users/:id`) uris, the one with more
//!    literal text before its first variable part first; at equal length a parameterised
//!    uri before a bare prefix, and among parameterised uris literal segments before
//!    `:params` before a trailing `*`;
//! 3. among routes with the same pattern, higher `priority` first, then the earlier route.
//!
//! # Cost
//!
//! Exact uris sit in a hash map, prefixes in a byte trie walked once along the path, and
//! parameterised uris in a segment tree, so the work per request follows the path, not the
//! number of routes. Matching an exact or prefix uri without a captured parameter does not
//! allocate.
//!
//! Paths are compared byte for byte as received: no decoding, no dot-segment removal, so
//! `/api/../admin` is simply a path under `/api/` and never one under `/admin/`.

mod params;
mod prefix;
mod uri;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;

use http::Method;
use ipnet::IpNet;

use crate::expr::{ip_in_nets, Expr, VarLookup};
use crate::host::HostPattern;
use params::{Candidates, ParamTree};
use prefix::PrefixTrie;
use uri::{Segment, UriPattern};

/// The matching fields of one route, as the configuration gives them.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Each exact (`/a/b`), prefix (`/api/*`, `/api*`), parameterised (`/users/:id`) or
    /// capturing (`/files/*path`); empty means `/*`.
    pub uris: Vec<String>,
    /// Empty means any method.
    pub methods: Vec<Method>,
    /// Exact or `*.`-wildcard host names; empty means any host.
    pub hosts: Vec<String>,
    /// Empty means any client; a plain IP is expected as a /32 or /128 network.
    pub remote_addrs: Vec<IpNet>,
    /// A `vars` expression, see [`crate::expr`].
    pub vars: Option<serde_json::Value>,
    /// Higher is tried first among routes with the same uri pattern (APISIX default 0).
    pub priority: i32,
}

/// A route field that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}{path}: {message}")]
pub struct RouteSpecError {
    /// Position of the route in the input.
    pub index: usize,
    /// `"uris"`, `"hosts"` or `"vars"`.
    pub field: &'static str,
    /// Position inside the field as JSON indexes (`[2]` for `uris[2]`, `[1][1]` inside
    /// `vars`); empty when the field as a whole is wrong.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// What the table needs to know about a request.
#[derive(Clone, Copy)]
pub struct MatchInput<'a> {
    pub method: &'a Method,
    /// The `Host` header or the URI's authority, possibly with `:port`.
    pub host: Option<&'a str>,
    /// The raw path, without the query string.
    pub path: &'a str,
    pub remote_addr: IpAddr,
    pub vars: &'a dyn VarLookup,
}

/// The route that serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// Position of the route's spec in the input to [`Router::build`].
    pub index: usize,
    /// The uri pattern that matched, as configured (`/users/:id`; `/*` for a route without
    /// uris).
    pub uri: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

impl<'a> RouteMatch<'a> {
    /// Path parameters in pattern order: `:name` segments and a `*name` tail.
    pub fn params(&self) -> &[(&'a str, &'a str)] {
        &self.params
    }

    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// Compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Every (route, uri) pair; for prefix and parameterised uris the id is also the
    /// candidate rank, lower first.
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, Vec<u32>>,
    prefixes: PrefixTrie,
    params: ParamTree,
}

#[derive(Debug)]
struct Route {
    methods: Vec<Method>,
    hosts: Vec<HostPattern>,
    remote_addrs: Vec<IpNet>,
    vars: Option<Expr>,
}

#[derive(Debug)]
struct Entry {
    route: usize,
    uri: Box<str>,
    shape: Shape,
}

#[derive(Debug)]
enum Shape {
    Exact,
    Prefix {
        len: usize,
        capture: Option<Box<str>>,
    },
    Params {
        segments: Vec<Segment>,
        catch_all: Option<Option<Box<str>>>,
    },
}

/// Sort key that puts more specific patterns first; see the module docs.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    static_len: std::cmp::Reverse<usize>,
    /// 0 for parameterised, 1 for prefix.
    kind: u8,
    /// Per segment 2 literal, 1 param, 0 catch-all; higher first.
    shape: std::cmp::Reverse<Vec<u8>>,
    priority: std::cmp::Reverse<i32>,
    route: usize,
    uri: usize,
}

impl Route {
    fn admits(&self, input: &MatchInput<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(input.method))
            && (self.hosts.is_empty()
                || input
                    .host
                    .is_some_and(|host| self.hosts.iter().any(|p| p.matches(host))))
            && (self.remote_addrs.is_empty() || ip_in_nets(&self.remote_addrs, input.remote_addr))
            && self
                .vars
                .as_ref()
                .map_or(true, |vars| vars.eval(input.vars))
    }
}

impl Router {
    /// Compiles the specs. Index `i` of a [`RouteMatch`] is the position of its spec here.
    /// Every error of every spec is reported, not just the first.
    pub fn build(specs: Vec<RouteSpec>) -> Result<Router, Vec<RouteSpecError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::with_capacity(specs.len());
        // (rank or exact ordering key, uri, shape)
        let mut exact = Vec::new();
        let mut ranked = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let mut fail = |field, path: String, message: String| {
                errors.push(RouteSpecError {
                    index,
                    field,
                    path,
                    message,
                })
            };
            let uris = if spec.uris.is_empty() {
                vec!["/*".to_owned()]
            } else {
                spec.uris
            };
            for (position, text) in uris.into_iter().enumerate() {
                let pattern = match uri::parse(&text) {
                    Ok(p) => p,
                    Err(message) => {
                        fail("uris", format!("[{position}]"), message);
                        continue;
                    }
                };
                let uri: Box<str> = text.into();
                match pattern {
                    UriPattern::Exact => {
                        exact.push((std::cmp::Reverse(spec.priority), index, position, uri))
                    }
                    UriPattern::Prefix { len, capture } => ranked.push((
                        Rank {
                            static_len: std::cmp::Reverse(len),
                            kind: 1,
                            shape: std::cmp::Reverse(Vec::new()),
                            priority: std::cmp::Reverse(spec.priority),
                            route: index,
                            uri: position,
                        },
                        Entry {
                            route: index,
                            uri,
                            shape: Shape::Prefix { len, capture },
                        },
                    )),
                    UriPattern::Params {
                        static_len,
                        segments,
                        catch_all,
                    } => {
                        let mut shape: Vec<u8> = segments
                            .iter()
                            .map(|s| match s {
                                Segment::Literal(_) => 2,
                                Segment::Param(_) => 1,
                            })
                            .collect();
                        if catch_all.is_some() {
                            shape.push(0);
                        }
                        ranked.push((
                            Rank {
                                static_len: std::cmp::Reverse(static_len),
                                kind: 0,
                                shape: std::cmp::Reverse(shape),
                                priority: std::cmp::Reverse(spec.priority),
                                route: index,
                                uri: position,
                            },
                            Entry {
                                route: index,
                                uri,
                                shape: Shape::Params {
                                    segments,
                                    catch_all,
                                },
                            },
                        ))
                    }
                }
            }
            let mut hosts = Vec::with_capacity(spec.hosts.len());
            for (position, host) in spec.hosts.iter().enumerate() {
                match HostPattern::parse(host) {
                    Ok(p) => hosts.push(p),
                    Err(e) => fail("hosts", format!("[{position}]"), e.to_string()),
                }
            }
            let vars = match spec.vars.as_ref().map(Expr::compile).transpose() {
                Ok(v) => v,
                Err(e) => {
                    fail("vars", e.path().to_owned(), e.reason().to_owned());
                    None
                }
            };
            routes.push(Route {
                methods: spec.methods,
                hosts,
                remote_addrs: spec.remote_addrs,
                vars,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if ranked.len() + exact.len() > u32::MAX as usize {
            return Err(vec![RouteSpecError {
                index: 0,
                field: "uris",
                path: String::new(),
                message: "too many uris in one route table".to_owned(),
            }]);
        }

        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(ranked.len() + exact.len());
        let mut prefixes = PrefixTrie::new();
        let mut params = ParamTree::new();
        // Inserting in rank order keeps every per-node list in candidate order.
        for (_, entry) in ranked {
            let id = entries.len() as u32;
            match &entry.shape {
                Shape::Prefix { len, .. } => prefixes.insert(&entry.uri.as_bytes()[..*len], id),
                Shape::Params {
                    segments,
                    catch_all,
                } => params.insert(segments, catch_all.is_some(), id),
                Shape::Exact => {}
            }
            entries.push(entry);
        }
        prefixes.finish();

        exact.sort();
        let mut exact_index: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (_, route, _, uri) in exact {
            let id = entries.len() as u32;
            exact_index.entry(uri.clone()).or_default().push(id);
            entries.push(Entry {
                route,
                uri,
                shape: Shape::Exact,
            });
        }

        Ok(Router {
            routes,
            entries,
            exact: exact_index,
            prefixes,
            params,
        })
    }

    /// The first route, in candidate order, that admits the request.
    pub fn find<'a>(&'a self, input: &MatchInput<'a>) -> Option<RouteMatch<'a>> {
        let path = input.path;
        if let Some(ids) = self.exact.get(path) {
            if let Some(found) = ids.iter().find_map(|&id| self.try_entry(id, input)) {
                return Some(found);
            }
        }

        let mut prefixes = self.prefixes.matches(path.as_bytes()).peekable();
        let mut candidates = Candidates::new();
        let mut parameterised: &[u32] = &[];
        if !self.params.is_empty() {
            self.params.collect(path, &mut candidates);
            parameterised = candidates.sorted();
        }
        // Both streams are in rank order; merge them.
        loop {
            let id = match (prefixes.peek(), parameterised.first()) {
                (Some(&p), Some(&q)) if q < p => {
                    parameterised = &parameterised[1..];
                    q
                }
                (Some(_), _) => prefixes.next()?,
                (None, Some(&q)) => {
                    parameterised = &parameterised[1..];
                    q
                }
                (None, None) => return None,
            };
            if let Some(found) = self.try_entry(id, input) {
                return Some(found);
            }
        }
    }

    fn try_entry<'a>(&'a self, id: u32, input: &MatchInput<'a>) -> Option<RouteMatch<'a>> {
        let entry = &self.entries[id as usize];
        if !self.routes[entry.route].admits(input) {
            return None;
        }
        let mut params = Vec::new();
        match &entry.shape {
            Shape::Exact | Shape::Prefix { capture: None, .. } => {}
            Shape::Prefix {
                len,
                capture: Some(name),
            } => params.push((&**name, input.path.get(*len..).unwrap_or(""))),
            Shape::Params {
                segments,
                catch_all,
            } => uri::extract_params(segments, catch_all, input.path, &mut params),
        }
        Some(RouteMatch {
            index: entry.route,
            uri: &entry.uri,
            params,
        })
    }

    /// Number of routes (specs), not of uris.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
