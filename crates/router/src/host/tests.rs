//! Behaviour of host patterns.

use super::*;

fn host(pattern: &str) -> HostPattern {
    HostPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn exact_host_matches_case_insensitively() {
    let p = host("API.Example.com");
    assert!(p.matches("api.example.com"));
    assert!(p.matches("API.EXAMPLE.COM"));
    assert!(!p.matches("api.example.org"));
    assert!(!p.matches("www.api.example.com"));
}

#[test]
fn request_port_is_ignored() {
    assert!(host("api.example.com").matches("api.example.com:8443"));
    assert!(host("*.example.com").matches("a.example.com:80"));
    assert!(host("[::1]").matches("[::1]:9080"));
    assert!(host("127.0.0.1").matches("127.0.0.1:9080"));
}

#[test]
fn trailing_dot_names_the_same_host() {
    assert!(host("api.example.com").matches("api.example.com."));
    assert!(host("api.example.com.").matches("api.example.com"));
}

#[test]
fn wildcard_host_matches_one_or_more_labels() {
    let p = host("*.example.com");
    assert!(p.is_wildcard());
    assert!(p.matches("a.example.com"));
    assert!(p.matches("a.b.example.com"));
    assert!(p.matches("A.EXAMPLE.COM"));
}

#[test]
fn wildcard_host_does_not_match_the_apex_domain() {
    let p = host("*.example.com");
    assert!(!p.matches("example.com"));
    assert!(!p.matches(".example.com"));
}

#[test]
fn wildcard_host_does_not_match_across_a_label_boundary() {
    assert!(!host("*.example.com").matches("badexample.com"));
    assert!(!host("*.example.com").matches("example.com.evil.org"));
}

#[test]
fn malformed_patterns_are_refused() {
    for bad in [
        "",
        "*",
        "a.*.com",
        "*example.com",
        "api.example.com:80",
        "http://a.com",
        "a..com",
        "a b.com",
        "[::1",
        "[nope]",
        "*.[::1]",
    ] {
        assert!(
            HostPattern::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn error_names_the_pattern() {
    let e = HostPattern::parse("a.*.com").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid host pattern \"a.*.com\": "),
        "{e}"
    );
}

#[test]
fn display_shows_the_normalised_pattern() {
    assert_eq!(host("*.Example.COM").to_string(), "*.example.com");
    assert_eq!(host("Api.Example.com.").to_string(), "api.example.com");
}

#[test]
fn strip_port_keeps_ipv6_addresses_whole() {
    assert_eq!(strip_port("a.com:80"), "a.com");
    assert_eq!(strip_port("a.com"), "a.com");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("::1"), "::1");
}
