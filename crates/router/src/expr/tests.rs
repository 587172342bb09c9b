//! Behaviour of `vars` expressions: every operator, negation, logical nesting, and the
//! errors a configuration author sees.

use std::collections::HashMap;

use serde_json::json;

use super::*;

fn vars(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    pairs.iter().copied().collect()
}

fn eval(expr: Value, pairs: &[(&'static str, &'static str)]) -> bool {
    Expr::compile(&expr)
        .unwrap_or_else(|e| panic!("{expr} should compile: {e}"))
        .eval(&vars(pairs))
}

fn error(expr: Value) -> String {
    match Expr::compile(&expr) {
        Ok(_) => panic!("{expr} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn equality_compares_strings_exactly() {
    let e = json!([["arg_name", "==", "json"]]);
    assert!(eval(e.clone(), &[("arg_name", "json")]));
    assert!(!eval(e.clone(), &[("arg_name", "JSON")]));
    assert!(!eval(e, &[]));
}

#[test]
fn equality_with_a_number_compares_numerically() {
    let e = json!([["arg_n", "==", 10]]);
    assert!(eval(e.clone(), &[("arg_n", "10")]));
    assert!(eval(e.clone(), &[("arg_n", "10.0")]));
    assert!(eval(e.clone(), &[("arg_n", " 0xA ")]));
    assert!(!eval(e.clone(), &[("arg_n", "ten")]));
    assert!(!eval(e, &[]));
}

#[test]
fn equality_with_null_means_the_variable_is_absent() {
    let e = json!([["http_x_debug", "==", null]]);
    assert!(eval(e.clone(), &[]));
    assert!(!eval(e, &[("http_x_debug", "")]));
}

#[test]
fn two_element_condition_means_equality() {
    let e = json!([["arg_name", "json"]]);
    assert!(eval(e.clone(), &[("arg_name", "json")]));
    assert!(!eval(e, &[("arg_name", "xml")]));
}

#[test]
fn inequality_is_true_for_an_absent_variable() {
    let e = json!([["arg_name", "~=", "json"]]);
    assert!(eval(e.clone(), &[]));
    assert!(eval(e.clone(), &[("arg_name", "xml")]));
    assert!(!eval(e, &[("arg_name", "json")]));
    let numeric = json!([["arg_n", "~=", 3]]);
    assert!(eval(numeric.clone(), &[("arg_n", "three")]));
    assert!(!eval(numeric, &[("arg_n", "3")]));
}

#[test]
fn numeric_comparisons_parse_the_variable_as_a_number() {
    let cases = [
        (">", "11", true),
        (">", "10", false),
        (">=", "10", true),
        (">=", "9.5", false),
        ("<", "9", true),
        ("<", "10", false),
        ("<=", "10", true),
        ("<=", "1e2", false),
        (">", "-0x10", false),
    ];
    for (op, value, expected) in cases {
        let e = json!([["arg_age", op, 10]]);
        let vars: HashMap<&str, &str> = [("arg_age", value)].into_iter().collect();
        let got = Expr::compile(&e).unwrap().eval(&vars);
        assert_eq!(got, expected, "{value} {op} 10");
    }
}

#[test]
fn numeric_comparison_is_false_for_a_non_numeric_or_absent_variable() {
    for op in [">", ">=", "<", "<="] {
        let e = json!([["arg_age", op, "10"]]);
        assert!(!eval(e.clone(), &[("arg_age", "old")]), "{op}");
        assert!(!eval(e.clone(), &[("arg_age", "inf")]), "{op}");
        assert!(!eval(e.clone(), &[("arg_age", "nan")]), "{op}");
        assert!(!eval(e, &[]), "{op}");
    }
}

#[test]
fn numeric_comparison_with_a_non_numeric_constant_is_refused() {
    assert_eq!(
        error(json!([["arg_age", ">", "old"]])),
        "[0][2]: \">\" compares numbers; \"old\" is not a number"
    );
}

#[test]
fn regex_condition_searches_anywhere_in_the_variable() {
    let e = json!([["http_user_agent", "~~", "bot[0-9]+"]]);
    assert!(eval(e.clone(), &[("http_user_agent", "my-bot42/1.0")]));
    assert!(!eval(e.clone(), &[("http_user_agent", "my-BOT42/1.0")]));
    assert!(!eval(e, &[]));
}

#[test]
fn case_insensitive_regex_condition() {
    let e = json!([["http_user_agent", "~*", "^curl/"]]);
    assert!(eval(e.clone(), &[("http_user_agent", "CURL/8.0")]));
    assert!(!eval(e, &[("http_user_agent", "wget curl/")]));
}

#[test]
fn negated_regex_condition() {
    let e = json!([["uri", "!", "~~", "^/internal/"]]);
    assert!(eval(e.clone(), &[("uri", "/public/x")]));
    assert!(!eval(e.clone(), &[("uri", "/internal/x")]));
    // An absent variable fails `~~`, so its negation holds.
    assert!(eval(e, &[]));
}

#[test]
fn in_matches_any_listed_value() {
    let e = json!([["arg_env", "in", ["dev", "staging", 3]]]);
    assert!(eval(e.clone(), &[("arg_env", "staging")]));
    assert!(eval(e.clone(), &[("arg_env", "3")]));
    assert!(!eval(e.clone(), &[("arg_env", "prod")]));
    assert!(!eval(e, &[]));
}

#[test]
fn has_is_substring_containment_for_string_variables() {
    let e = json!([["http_accept", "has", "json"]]);
    assert!(eval(
        e.clone(),
        &[("http_accept", "text/html, application/json")]
    ));
    assert!(!eval(e.clone(), &[("http_accept", "text/html")]));
    assert!(!eval(e, &[]));
}

#[test]
fn ipmatch_accepts_a_single_cidr_or_a_list() {
    let single = json!([["remote_addr", "ipmatch", "10.0.0.0/8"]]);
    assert!(eval(single.clone(), &[("remote_addr", "10.1.2.3")]));
    assert!(!eval(single.clone(), &[("remote_addr", "11.1.2.3")]));
    assert!(!eval(single.clone(), &[("remote_addr", "not-an-ip")]));
    assert!(!eval(single, &[]));

    let list = json!([["remote_addr", "ipmatch", ["127.0.0.1", "fe80::/16"]]]);
    assert!(eval(list.clone(), &[("remote_addr", "127.0.0.1")]));
    assert!(!eval(list.clone(), &[("remote_addr", "127.0.0.2")]));
    assert!(eval(list.clone(), &[("remote_addr", "[fe80::1]")]));
    assert!(eval(list, &[("remote_addr", "::ffff:127.0.0.1")]));
}

#[test]
fn operators_are_case_insensitive() {
    assert!(eval(json!([["arg_a", "IN", ["x"]]]), &[("arg_a", "x")]));
    assert!(eval(
        json!([["ip", "IPMatch", "1.2.3.0/24"]]),
        &[("ip", "1.2.3.4")]
    ));
}

#[test]
fn list_of_conditions_requires_all_of_them() {
    let e = json!([["arg_a", "==", "1"], ["arg_b", "==", "2"]]);
    assert!(eval(e.clone(), &[("arg_a", "1"), ("arg_b", "2")]));
    assert!(!eval(e, &[("arg_a", "1"), ("arg_b", "3")]));
}

#[test]
fn or_needs_any_operand() {
    let e = json!(["OR", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]);
    assert!(eval(e.clone(), &[("arg_b", "2")]));
    assert!(!eval(e, &[("arg_a", "2")]));
}

#[test]
fn negated_and_and_negated_or() {
    let not_and = json!(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]);
    assert!(!eval(not_and.clone(), &[("arg_a", "1"), ("arg_b", "2")]));
    assert!(eval(not_and, &[("arg_a", "1")]));

    let not_or = json!(["!or", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]);
    assert!(eval(not_or.clone(), &[]));
    assert!(!eval(not_or, &[("arg_b", "2")]));
}

#[test]
fn nested_or_inside_and() {
    let e = json!([
        "AND",
        ["arg_name", "==", "json"],
        ["OR", ["arg_weight", ">", 10], ["arg_height", "!", ">", 15]]
    ]);
    assert!(eval(
        e.clone(),
        &[("arg_name", "json"), ("arg_weight", "11")]
    ));
    assert!(eval(
        e.clone(),
        &[("arg_name", "json"), ("arg_height", "3")]
    ));
    assert!(!eval(
        e.clone(),
        &[
            ("arg_name", "json"),
            ("arg_weight", "1"),
            ("arg_height", "20")
        ]
    ));
    assert!(!eval(e, &[("arg_name", "xml"), ("arg_weight", "11")]));
}

#[test]
fn nested_list_of_conditions_is_an_and() {
    let e = json!([
        "OR",
        [["arg_a", "==", "1"], ["arg_b", "==", "2"]],
        ["arg_c", "==", "3"]
    ]);
    assert!(eval(e.clone(), &[("arg_a", "1"), ("arg_b", "2")]));
    assert!(!eval(e.clone(), &[("arg_a", "1")]));
    assert!(eval(e, &[("arg_c", "3")]));
}

#[test]
fn empty_expression_matches_everything() {
    assert!(eval(json!([]), &[]));
}

#[test]
fn no_vars_makes_every_variable_absent() {
    let e = Expr::compile(&json!([["arg_a", "~=", "x"], ["arg_b", "==", null]])).unwrap();
    assert!(e.eval(&NoVars));
}

#[test]
fn unknown_operator_is_refused_with_its_position() {
    let e = Expr::compile(&json!([["arg_a", "==", "1"], ["http_x", "=~~", "a"]])).unwrap_err();
    assert_eq!(e.path(), "[1][1]");
    assert!(e.reason().starts_with("unknown operator \"=~~\""), "{e}");
    assert!(
        e.to_string()
            .starts_with("[1][1]: unknown operator \"=~~\""),
        "{e}"
    );
}

#[test]
fn error_position_reaches_into_nested_expressions() {
    let msg = error(json!([
        "OR",
        ["arg_a", "==", "1"],
        ["AND", ["arg_b", "in", "x"]]
    ]));
    assert_eq!(
        msg,
        "[2][1][2]: \"in\" needs an array of values, found a string"
    );
}

#[test]
fn bare_condition_at_the_top_is_refused() {
    let msg = error(json!(["arg_name", "==", "json"]));
    assert!(msg.contains("wrap a single condition"), "{msg}");
}

#[test]
fn non_array_expression_is_refused() {
    assert_eq!(error(json!({"a": 1})), "must be an array, found an object");
}

#[test]
fn invalid_regex_is_refused_with_its_position() {
    let msg = error(json!([["uri", "~~", "(unclosed"]]));
    assert!(
        msg.starts_with("[0][2]: invalid regular expression"),
        "{msg}"
    );
}

#[test]
fn oversized_regex_is_refused() {
    let msg = error(json!([["uri", "~~", "\\w{500}\\w{500}\\w{500}"]]));
    assert!(
        msg.starts_with("[0][2]: invalid regular expression"),
        "{msg}"
    );
    assert!(msg.contains("size limit"), "{msg}");
}

#[test]
fn four_element_condition_must_have_a_bang() {
    let msg = error(json!([["arg_a", "not", "==", "1"]]));
    assert!(msg.starts_with("[0][1]: a four-element condition"), "{msg}");
}

#[test]
fn bang_without_operator_is_refused() {
    let msg = error(json!([["arg_a", "!", "x"]]));
    assert!(msg.starts_with("[0][1]: \"!\" must be followed"), "{msg}");
}

#[test]
fn operator_without_value_is_refused() {
    assert_eq!(
        error(json!([["arg_a", "in"]])),
        "[0][1]: operator \"in\" needs a value after it"
    );
}

#[test]
fn malformed_conditions_are_refused() {
    assert!(error(json!([["arg_a"]])).starts_with("[0]: a condition is"));
    assert!(error(json!([["arg_a", "==", "1", "2", "3"]])).starts_with("[0]: a condition is"));
    assert_eq!(
        error(json!([[1, "==", "1"]])),
        "[0][0]: variable name must be a string, found a number"
    );
    assert_eq!(
        error(json!([["", "==", "1"]])),
        "[0][0]: empty variable name"
    );
    assert_eq!(
        error(json!([["a", "==", true]])),
        "[0][2]: expected a string, a number or null, found a boolean"
    );
    assert_eq!(
        error(json!([["a", "==", "1"], "b"])),
        "[1]: expected a condition or a nested expression (an array), found a string"
    );
    assert_eq!(
        error(json!(["OR"])),
        "logical operator \"OR\" needs at least one operand"
    );
    assert_eq!(
        error(json!([["a", "==", "1"], []])),
        "[1]: empty expression"
    );
    assert_eq!(
        error(json!([["a", "has", 1]])),
        "[0][2]: \"has\" needs a string, found a number"
    );
}

#[test]
fn invalid_cidr_is_refused_with_its_position() {
    assert_eq!(
        error(json!([[
            "remote_addr",
            "ipmatch",
            ["10.0.0.0/8", "10.0.0.0/99"]
        ]])),
        "[0][2][1]: \"10.0.0.0/99\" is not an IP address or CIDR"
    );
    assert_eq!(
        error(json!([["remote_addr", "ipmatch", []]])),
        "[0][2]: \"ipmatch\" needs at least one IP address or CIDR"
    );
}

#[test]
fn lua_number_follows_tonumber() {
    assert_eq!(lua_number("42"), Some(42.0));
    assert_eq!(lua_number(" -1.5e1\t"), Some(-15.0));
    assert_eq!(lua_number("0x1f"), Some(31.0));
    assert_eq!(lua_number(".5"), Some(0.5));
    for bad in ["", "-", "inf", "-infinity", "NaN", "1a", "0x", "0xg", "1 2"] {
        assert_eq!(lua_number(bad), None, "{bad:?}");
    }
}
