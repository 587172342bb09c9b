//! Behaviour of the route table: path patterns, candidate order, filters and errors.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use http::Method;
use serde_json::json;

use super::*;

fn uris(list: &[&str]) -> RouteSpec {
    RouteSpec {
        uris: list.iter().map(|s| s.to_string()).collect(),
        ..RouteSpec::default()
    }
}

fn router(specs: Vec<RouteSpec>) -> Router {
    Router::build(specs).unwrap_or_else(|e| panic!("routes should build: {e:?}"))
}

/// A request builder with sensible defaults, so each test states only what it is about.
struct Request {
    method: Method,
    host: Option<&'static str>,
    path: &'static str,
    remote_addr: IpAddr,
    vars: HashMap<&'static str, &'static str>,
}

fn get(path: &'static str) -> Request {
    Request {
        method: Method::GET,
        host: None,
        path,
        remote_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        vars: HashMap::new(),
    }
}

impl Request {
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = Some(h);
        self
    }
    fn from(mut self, ip: &str) -> Self {
        self.remote_addr = ip.parse().unwrap();
        self
    }
    fn var(mut self, k: &'static str, v: &'static str) -> Self {
        self.vars.insert(k, v);
        self
    }

    fn find(&self, router: &Router) -> Option<usize> {
        self.found(router).map(|f| f.index)
    }

    fn found(&self, router: &Router) -> Option<Found> {
        let input = MatchInput {
            method: &self.method,
            host: self.host,
            path: self.path,
            remote_addr: self.remote_addr,
            vars: &self.vars,
        };
        router.find(&input).map(|m| Found {
            index: m.index,
            uri: m.uri.to_owned(),
            params: m
                .params()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

/// An owned copy of a [`RouteMatch`], so assertions outlive the request.
#[derive(Debug, PartialEq)]
struct Found {
    index: usize,
    uri: String,
    params: Vec<(String, String)>,
}

impl Found {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn exact_route_matches_only_its_path() {
    let r = router(vec![uris(&["/a/b"])]);
    assert_eq!(get("/a/b").find(&r), Some(0));
    assert_eq!(get("/a/b/").find(&r), None);
    assert_eq!(get("/a").find(&r), None);
    assert_eq!(get("/A/B").find(&r), None);
}

#[test]
fn prefix_route_matches_deeper_paths_but_not_the_bare_parent() {
    let r = router(vec![uris(&["/api/*"])]);
    assert_eq!(get("/api/").find(&r), Some(0));
    assert_eq!(get("/api/users/1").find(&r), Some(0));
    assert_eq!(get("/api").find(&r), None);
    assert_eq!(get("/apis/x").find(&r), None);
}

#[test]
fn star_inside_the_last_segment_is_a_byte_prefix() {
    let r = router(vec![uris(&["/api*"])]);
    assert_eq!(get("/api").find(&r), Some(0));
    assert_eq!(get("/apis").find(&r), Some(0));
    assert_eq!(get("/api/x").find(&r), Some(0));
    assert_eq!(get("/ap").find(&r), None);
}

#[test]
fn route_without_uris_matches_every_path() {
    let r = router(vec![RouteSpec::default()]);
    assert_eq!(get("/").find(&r), Some(0));
    assert_eq!(get("/anything/at/all").find(&r), Some(0));
    assert_eq!(get("/x").found(&r).unwrap().uri, "/*");
}

#[test]
fn exact_route_beats_a_prefix_route_regardless_of_order() {
    let r = router(vec![uris(&["/api/*"]), uris(&["/api/health"])]);
    assert_eq!(get("/api/health").find(&r), Some(1));
    assert_eq!(get("/api/other").find(&r), Some(0));
}

#[test]
fn longer_prefix_is_tried_before_a_shorter_one() {
    let r = router(vec![uris(&["/*"]), uris(&["/api/*"]), uris(&["/api/v2/*"])]);
    assert_eq!(get("/api/v2/x").find(&r), Some(2));
    assert_eq!(get("/api/v1/x").find(&r), Some(1));
    assert_eq!(get("/web").find(&r), Some(0));
}

#[test]
fn shorter_prefix_serves_when_the_longer_ones_filters_refuse() {
    let mut admin = uris(&["/api/admin/*"]);
    admin.methods = vec![Method::POST];
    let r = router(vec![uris(&["/api/*"]), admin]);
    assert_eq!(get("/api/admin/x").method(Method::POST).find(&r), Some(1));
    assert_eq!(get("/api/admin/x").find(&r), Some(0));
}

#[test]
fn higher_priority_wins_for_the_same_uri() {
    let mut high = uris(&["/p"]);
    high.priority = 10;
    let r = router(vec![uris(&["/p"]), high.clone()]);
    assert_eq!(get("/p").find(&r), Some(1));

    let mut prefix_high = uris(&["/q/*"]);
    prefix_high.priority = 5;
    let r = router(vec![uris(&["/q/*"]), prefix_high]);
    assert_eq!(get("/q/x").find(&r), Some(1));
}

#[test]
fn equal_priority_keeps_insertion_order() {
    let r = router(vec![uris(&["/p"]), uris(&["/p"])]);
    assert_eq!(get("/p").find(&r), Some(0));
    let r = router(vec![uris(&["/p/*"]), uris(&["/p/*"])]);
    assert_eq!(get("/p/x").find(&r), Some(0));
}

#[test]
fn priority_does_not_beat_a_more_specific_path() {
    let mut catch_all = uris(&["/*"]);
    catch_all.priority = 100;
    let r = router(vec![catch_all, uris(&["/api/*"])]);
    assert_eq!(get("/api/x").find(&r), Some(1));
}

#[test]
fn dot_segments_are_matched_literally() {
    let r = router(vec![uris(&["/admin/*"]), uris(&["/api/*"])]);
    assert_eq!(get("/api/../admin/x").find(&r), Some(1));
    assert_eq!(get("/admin/x").find(&r), Some(0));
}

#[test]
fn path_parameters_capture_one_segment_each() {
    let r = router(vec![uris(&["/users/:id/posts/:post"])]);
    let found = get("/users/42/posts/7").found(&r).unwrap();
    assert_eq!(found.params, owned(&[("id", "42"), ("post", "7")]));
    assert_eq!(get("/users/42/posts").find(&r), None);
    assert_eq!(get("/users//posts/7").find(&r), None);
    assert_eq!(get("/users/42/posts/7/8").find(&r), None);
}

#[test]
fn parameter_route_reports_its_pattern_and_named_params() {
    let r = router(vec![uris(&["/users/:id"])]);
    let input = MatchInput {
        method: &Method::GET,
        host: None,
        path: "/users/abc",
        remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        vars: &crate::NoVars,
    };
    let m = r.find(&input).unwrap();
    assert_eq!(m.uri, "/users/:id");
    assert_eq!(m.param("id"), Some("abc"));
    assert_eq!(m.param("nope"), None);
}

#[test]
fn named_trailing_wildcard_captures_the_rest_of_the_path() {
    let r = router(vec![uris(&["/files/*path"])]);
    assert_eq!(
        get("/files/a/b.txt").found(&r).unwrap().param("path"),
        Some("a/b.txt")
    );
    assert_eq!(get("/files/").found(&r).unwrap().param("path"), Some(""));
    assert_eq!(get("/files").find(&r), None);
}

#[test]
fn parameters_and_trailing_wildcard_combine() {
    let r = router(vec![uris(&["/u/:user/*rest"]), uris(&["/v/:user/*"])]);
    let found = get("/u/ann/a/b").found(&r).unwrap();
    assert_eq!(found.params, owned(&[("user", "ann"), ("rest", "a/b")]));
    let found = get("/v/bob/x").found(&r).unwrap();
    assert_eq!(found.params, owned(&[("user", "bob")]));
    assert_eq!(get("/u/ann").find(&r), None);
}

#[test]
fn exact_route_beats_a_parameter_route() {
    let r = router(vec![uris(&["/users/:id"]), uris(&["/users/me"])]);
    assert_eq!(get("/users/me").find(&r), Some(1));
    assert_eq!(get("/users/42").find(&r), Some(0));
}

#[test]
fn parameter_route_beats_a_prefix_with_the_same_literal_start() {
    let r = router(vec![uris(&["/users/*"]), uris(&["/users/:id"])]);
    assert_eq!(get("/users/42").find(&r), Some(1));
    assert_eq!(get("/users/42/x").find(&r), Some(0));
}

#[test]
fn literal_segment_beats_a_parameter_after_the_same_start() {
    let r = router(vec![
        uris(&["/u/:id/*"]),
        uris(&["/u/:id/:tab"]),
        uris(&["/u/:id/posts"]),
    ]);
    assert_eq!(get("/u/1/posts").find(&r), Some(2));
    assert_eq!(get("/u/1/likes").find(&r), Some(1));
    assert_eq!(get("/u/1/likes/x").find(&r), Some(0));
}

#[test]
fn longer_literal_prefix_beats_a_parameter_route() {
    let r = router(vec![uris(&["/users/:id"]), uris(&["/users/adm*"])]);
    assert_eq!(get("/users/admin").find(&r), Some(1));
    assert_eq!(get("/users/bob").find(&r), Some(0));
}

#[test]
fn route_with_several_uris_matches_any_of_them() {
    let r = router(vec![uris(&["/a", "/b/*", "/c/:x"])]);
    assert_eq!(get("/a").find(&r), Some(0));
    assert_eq!(get("/b/1").find(&r), Some(0));
    assert_eq!(get("/c/1").found(&r).unwrap().uri, "/c/:x");
}

#[test]
fn method_filter_admits_only_listed_methods() {
    let mut spec = uris(&["/m"]);
    spec.methods = vec![Method::GET, Method::POST];
    let r = router(vec![spec]);
    assert_eq!(get("/m").find(&r), Some(0));
    assert_eq!(get("/m").method(Method::POST).find(&r), Some(0));
    assert_eq!(get("/m").method(Method::DELETE).find(&r), None);
}

#[test]
fn host_filter_requires_a_matching_host() {
    let mut spec = uris(&["/h"]);
    spec.hosts = vec!["api.example.com".into(), "*.example.org".into()];
    let r = router(vec![spec]);
    assert_eq!(get("/h").host("api.example.com:443").find(&r), Some(0));
    assert_eq!(get("/h").host("x.example.org").find(&r), Some(0));
    assert_eq!(get("/h").host("example.org").find(&r), None);
    assert_eq!(get("/h").find(&r), None, "no host at all");
}

#[test]
fn host_specific_route_falls_back_to_a_hostless_one() {
    let mut specific = uris(&["/x"]);
    specific.hosts = vec!["a.com".into()];
    let r = router(vec![specific, uris(&["/x"])]);
    assert_eq!(get("/x").host("a.com").find(&r), Some(0));
    assert_eq!(get("/x").host("b.com").find(&r), Some(1));
}

#[test]
fn remote_addr_filter_admits_only_listed_networks() {
    let mut spec = uris(&["/r"]);
    spec.remote_addrs = vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let r = router(vec![spec]);
    assert_eq!(get("/r").from("10.2.3.4").find(&r), Some(0));
    assert_eq!(get("/r").from("2001:db8::1").find(&r), Some(0));
    assert_eq!(get("/r").from("::ffff:10.2.3.4").find(&r), Some(0));
    assert_eq!(get("/r").from("11.2.3.4").find(&r), None);
}

#[test]
fn vars_filter_is_evaluated_against_the_request() {
    let mut spec = uris(&["/v"]);
    spec.vars = Some(json!([["arg_mode", "==", "beta"]]));
    let r = router(vec![spec, uris(&["/v"])]);
    assert_eq!(get("/v").var("arg_mode", "beta").find(&r), Some(0));
    assert_eq!(get("/v").var("arg_mode", "stable").find(&r), Some(1));
}

#[test]
fn every_filter_must_agree() {
    let spec = RouteSpec {
        uris: vec!["/all".into()],
        methods: vec![Method::PUT],
        hosts: vec!["a.com".into()],
        remote_addrs: vec!["10.0.0.0/8".parse().unwrap()],
        vars: Some(json!([["http_x", "==", "1"]])),
        priority: 0,
    };
    let r = router(vec![spec]);
    let ok = || {
        get("/all")
            .method(Method::PUT)
            .host("a.com")
            .from("10.0.0.1")
            .var("http_x", "1")
    };
    assert_eq!(ok().find(&r), Some(0));
    assert_eq!(ok().method(Method::GET).find(&r), None);
    assert_eq!(ok().host("b.com").find(&r), None);
    assert_eq!(ok().from("9.0.0.1").find(&r), None);
    assert_eq!(ok().var("http_x", "2").find(&r), None);
}

#[test]
fn empty_table_matches_nothing() {
    let r = router(vec![]);
    assert!(r.is_empty());
    assert_eq!(r.len(), 0);
    assert_eq!(get("/").find(&r), None);
}

#[test]
fn bad_fields_are_all_reported_with_route_index_and_position() {
    let mut bad_vars = uris(&["/ok"]);
    bad_vars.vars = Some(json!([["arg_a", "==", "1"], ["http_x", "=~~", "a"]]));
    let mut bad_host = uris(&["/ok"]);
    bad_host.hosts = vec!["good.com".into(), "a.*.com".into()];
    let errors = Router::build(vec![
        uris(&["/fine"]),
        uris(&["/ok", "no-slash"]),
        bad_host,
        bad_vars,
    ])
    .unwrap_err();
    assert_eq!(errors.len(), 3);
    assert_eq!(
        (errors[0].index, errors[0].field, errors[0].path.as_str()),
        (1, "uris", "[1]")
    );
    assert_eq!(
        (errors[1].index, errors[1].field, errors[1].path.as_str()),
        (2, "hosts", "[1]")
    );
    assert_eq!(
        (errors[2].index, errors[2].field, errors[2].path.as_str()),
        (3, "vars", "[1][1]")
    );
    assert!(
        errors[2]
            .to_string()
            .starts_with("vars[1][1]: unknown operator \"=~~\""),
        "{}",
        errors[2]
    );
}

#[test]
fn malformed_uris_are_refused() {
    for bad in [
        "",
        "api/*",
        "/a/*/b",
        "/a/x*y",
        "/a/:",
        "/a/:id/:id",
        "/a/:id/*id",
        "/a/:id/x*",
        "/a/:b.c",
        "/a/**",
    ] {
        let errors = Router::build(vec![uris(&[bad])]).expect_err(bad);
        assert_eq!(errors[0].field, "uris", "{bad}");
    }
}

#[test]
fn many_routes_with_the_same_prefix_are_tried_in_order() {
    let specs = (0..100)
        .map(|i| {
            let mut s = uris(&["/shared/*"]);
            s.hosts = vec![format!("h{i}.com")];
            s
        })
        .collect();
    let r = router(specs);
    assert_eq!(get("/shared/x").host("h57.com").find(&r), Some(57));
}

#[test]
fn many_parameter_matches_spill_without_losing_order() {
    let mut specs: Vec<RouteSpec> = (0..20)
        .map(|i| {
            let mut s = uris(&["/p/:a"]);
            s.hosts = vec![format!("h{i}.com")];
            s
        })
        .collect();
    specs.push(uris(&["/p/*"]));
    let r = router(specs);
    assert_eq!(get("/p/x").host("h13.com").find(&r), Some(13));
    assert_eq!(get("/p/x").host("other.com").find(&r), Some(20));
}

#[test]
fn ten_thousand_routes_build_and_match() {
    let mut specs = Vec::with_capacity(10_000);
    for i in 0..5_000 {
        specs.push(uris(&[&format!("/svc{i}/items")]));
        specs.push(uris(&[&format!("/svc{i}/*")]));
    }
    let r = router(specs);
    assert_eq!(r.len(), 10_000);
    let paths: Vec<(String, Option<usize>)> = [0usize, 1, 999, 2_500, 4_999]
        .iter()
        .flat_map(|&i| {
            [
                (format!("/svc{i}/items"), Some(2 * i)),
                (format!("/svc{i}/items/1"), Some(2 * i + 1)),
                (format!("/svc{i}/"), Some(2 * i + 1)),
                (format!("/svc{i}"), None),
            ]
        })
        .chain([("/svc5000/items".to_owned(), None)])
        .collect();
    for (path, expected) in &paths {
        let vars = crate::NoVars;
        let input = MatchInput {
            method: &Method::GET,
            host: None,
            path,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            vars: &vars,
        };
        assert_eq!(r.find(&input).map(|m| m.index), *expected, "{path}");
    }
}

#[test]
fn router_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}
