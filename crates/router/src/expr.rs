//! `vars` expressions as APISIX routes carry them (the lua-resty-expr v1 language).
//!
//! A route's `vars` is compiled once, when the route table is built, and then evaluated
//! against every request that reaches the route's path. Compilation does all the work that
//! can fail (operator names, value types, regular expressions, CIDRs), so evaluation is a
//! plain walk over the compiled tree that never fails and never allocates beyond what the
//! [`VarLookup`] implementation itself does.
//!
//! # Language
//!
//! The top level is an array, either
//! - a list of conditions and nested expressions combined by AND:
//!   `[["arg_name", "==", "json"], ["http_x", "~~", "^a"]]`, or
//! - a logical expression: `["AND" | "OR" | "!AND" | "!OR", e1, e2, ...]`, where each `e`
//!   is a condition or a nested expression (logical, or a list combined by AND).
//!
//! An empty top-level array (`[]`) always matches, as in lua-resty-expr.
//!
//! A condition is `[var, op, value]`, `[var, "!", op, value]` (the result negated), or
//! `[var, value]`, shorthand for `[var, "==", value]`. Operators are case-insensitive:
//!
//! | operator | value | true when |
//! |---|---|---|
//! | `==` | string, number or `null` | the variable equals the string; or parses as a number equal to the number; or (`null`) is absent |
//! | `~=` | as `==` | exactly when `==` is false (so an absent variable is `~=` any string) |
//! | `>` `>=` `<` `<=` | number or numeric string | the variable parses as a number and compares so; otherwise false |
//! | `~~` | regular expression | the regex matches somewhere in the variable (unanchored, as `ngx.re.find`) |
//! | `~*` | regular expression | as `~~`, case-insensitively |
//! | `in` | array of strings / numbers | the variable `==` one of the elements |
//! | `has` | string | the variable contains the string as a substring (see below) |
//! | `ipmatch` | IP, CIDR, or an array of them | the variable parses as an IP address inside one of them |
//!
//! Numbers are parsed as Lua's `tonumber` does for the common cases (surrounding whitespace,
//! decimals, exponents, `0x` hex); `inf` and `nan` are not numbers.
//!
//! Differences from lua-resty-expr, all deliberate:
//! - `has`: in APISIX the left side is a Lua array (e.g. `graphql_root_fields`) and a plain
//!   string never "has" anything. Variables here are strings, so `has` is substring
//!   containment.
//! - Values that could never match in APISIX are refused at compile time instead of silently
//!   never matching: a non-numeric value for `>`, a non-array for `in`, booleans, a
//!   condition with a missing value.
//! - Regular expressions use the `regex` crate's syntax (no look-around or backreferences),
//!   and each is limited to [`REGEX_SIZE_LIMIT`] bytes of compiled program.
//! - A logical operator with a single operand (`["OR", c]`) is accepted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

#[cfg(test)]
mod tests;

/// Upper bound on one compiled regular expression, so a hostile or careless route cannot
/// make the gateway build a huge automaton.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Where expression variables come from: the gateway implements this for its request
/// (`uri`, `arg_*`, `http_*`, `cookie_*`, `remote_addr`, `host`, `request_method`, ...).
pub trait VarLookup {
    /// The variable's value, or `None` when the request has no such variable.
    fn var(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl<S: BuildHasher> VarLookup for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

impl<S: BuildHasher> VarLookup for HashMap<&str, &str, S> {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|v| Cow::Borrowed(*v))
    }
}

/// A request without variables: every variable is absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVars;

impl VarLookup for NoVars {
    fn var(&self, _name: &str) -> Option<Cow<'_, str>> {
        None
    }
}

/// Why an expression was refused, and where inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    path: String,
    reason: String,
}

impl ExprError {
    fn new(path: &str, reason: impl Into<String>) -> Self {
        ExprError {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// Position inside the expression as JSON indexes, e.g. `[1][1]`; empty for the
    /// expression as a whole. A caller prefixes it with where the expression lives
    /// (`routes[3].vars[1][1]`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the position.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ExprError {}

/// A compiled `vars` expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// `None` for `[]`, which matches every request.
    root: Option<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Group { logic: Logic, operands: Vec<Node> },
    Condition(Condition),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logic {
    And,
    Or,
    NotAnd,
    NotOr,
}

impl Logic {
    fn parse(word: &str) -> Option<Logic> {
        // lua-resty-expr upper-cases the word before looking it up.
        if word.eq_ignore_ascii_case("and") {
            Some(Logic::And)
        } else if word.eq_ignore_ascii_case("or") {
            Some(Logic::Or)
        } else if word.eq_ignore_ascii_case("!and") {
            Some(Logic::NotAnd)
        } else if word.eq_ignore_ascii_case("!or") {
            Some(Logic::NotOr)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
struct Condition {
    var: Box<str>,
    negated: bool,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Operand),
    Ne(Operand),
    Compare(Ordering, f64),
    Regex(Regex),
    In(Vec<Operand>),
    Has(Box<str>),
    IpMatch(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy)]
enum Ordering {
    Gt,
    Ge,
    Lt,
    Le,
}

/// The right-hand side of `==`, `~=` and `in`.
#[derive(Debug, Clone)]
enum Operand {
    Str(Box<str>),
    Num(f64),
    /// JSON `null`: lua-resty-expr turns it into `nil`, which only an absent variable equals.
    Absent,
}

impl Operand {
    fn equals(&self, var: Option<&str>) -> bool {
        match self {
            Operand::Str(s) => var == Some(&**s),
            Operand::Num(n) => var.and_then(lua_number) == Some(*n),
            Operand::Absent => var.is_none(),
        }
    }
}

const OPERATORS: &[&str] = &[
    "==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch",
];

impl Expr {
    /// Compiles a `vars` value. Errors name the position relative to `value`.
    pub fn compile(value: &Value) -> Result<Expr, ExprError> {
        let items = value.as_array().ok_or_else(|| {
            ExprError::new("", format!("must be an array, found {}", kind(value)))
        })?;
        let Some(first) = items.first() else {
            return Ok(Expr { root: None });
        };
        let is_expression = match first {
            Value::Array(_) => true,
            Value::String(s) => Logic::parse(s).is_some(),
            _ => false,
        };
        if !is_expression {
            // lua-resty-expr refuses this too: a bare condition at the top is almost always
            // a missing pair of brackets, and reading it as one would hide the mistake.
            return Err(ExprError::new(
                "",
                "must be a list of conditions or start with AND, OR, !AND or !OR; \
                 wrap a single condition in another array: [[\"arg_name\", \"==\", \"json\"]]",
            ));
        }
        let mut path = String::new();
        Ok(Expr {
            root: Some(compile_node(items, &mut path)?),
        })
    }

    /// Whether the request's variables satisfy the expression.
    pub fn eval(&self, vars: &dyn VarLookup) -> bool {
        match &self.root {
            None => true,
            Some(node) => node.eval(vars),
        }
    }
}

impl Node {
    fn eval(&self, vars: &dyn VarLookup) -> bool {
        match self {
            Node::Condition(c) => c.eval(vars),
            Node::Group { logic, operands } => match logic {
                Logic::And => operands.iter().all(|n| n.eval(vars)),
                Logic::Or => operands.iter().any(|n| n.eval(vars)),
                Logic::NotAnd => !operands.iter().all(|n| n.eval(vars)),
                Logic::NotOr => !operands.iter().any(|n| n.eval(vars)),
            },
        }
    }
}

impl Condition {
    fn eval(&self, vars: &dyn VarLookup) -> bool {
        let value = vars.var(&self.var);
        self.test.eval(value.as_deref()) != self.negated
    }
}

impl Test {
    fn eval(&self, var: Option<&str>) -> bool {
        match self {
            Test::Eq(operand) => operand.equals(var),
            Test::Ne(operand) => !operand.equals(var),
            Test::Compare(ordering, right) => {
                let Some(left) = var.and_then(lua_number) else {
                    return false;
                };
                match ordering {
                    Ordering::Gt => left > *right,
                    Ordering::Ge => left >= *right,
                    Ordering::Lt => left < *right,
                    Ordering::Le => left <= *right,
                }
            }
            Test::Regex(re) => var.is_some_and(|v| re.is_match(v)),
            Test::In(options) => options.iter().any(|o| o.equals(var)),
            Test::Has(needle) => var.is_some_and(|v| v.contains(&**needle)),
            Test::IpMatch(nets) => var
                .and_then(parse_ip)
                .is_some_and(|ip| ip_in_nets(nets, ip)),
        }
    }
}

/// Whether `ip` lies in one of `nets`, also trying the IPv4 form of an IPv4-mapped IPv6
/// address, which is how a dual-stack listener reports IPv4 clients.
pub(crate) fn ip_in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    nets.iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// Lua's `tonumber` for the strings a request can carry; `None` for anything it would
/// reject. Rust's float parser alone would also accept `inf`, `nan` and `infinity`.
fn lua_number(s: &str) -> Option<f64> {
    let trimmed = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, body) = match trimmed.as_bytes().first()? {
        b'-' => (true, &trimmed[1..]),
        b'+' => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let magnitude = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()? as f64
    } else {
        match body.as_bytes().first()? {
            b'0'..=b'9' | b'.' => {}
            _ => return None,
        }
        body.parse::<f64>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs `f` with `[index]` appended to `path`, restoring it afterwards, so one buffer
/// serves the whole compilation.
fn at<T>(path: &mut String, index: usize, f: impl FnOnce(&mut String) -> T) -> T {
    let len = path.len();
    path.push_str(&format!("[{index}]"));
    let out = f(path);
    path.truncate(len);
    out
}

fn compile_node(items: &[Value], path: &mut String) -> Result<Node, ExprError> {
    let Some(first) = items.first() else {
        return Err(ExprError::new(path, "empty expression"));
    };
    match first {
        Value::Array(_) => {
            let operands = compile_operands(items, 0, path)?;
            Ok(Node::Group {
                logic: Logic::And,
                operands,
            })
        }
        Value::String(word) if Logic::parse(word).is_some() => {
            if items.len() < 2 {
                return Err(ExprError::new(
                    path,
                    format!("logical operator \"{word}\" needs at least one operand"),
                ));
            }
            let operands = compile_operands(&items[1..], 1, path)?;
            Ok(Node::Group {
                logic: Logic::parse(word).unwrap_or(Logic::And),
                operands,
            })
        }
        _ => compile_condition(items, path).map(Node::Condition),
    }
}

fn compile_operands(
    items: &[Value],
    offset: usize,
    path: &mut String,
) -> Result<Vec<Node>, ExprError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            at(path, i + offset, |path| match item {
                Value::Array(inner) => compile_node(inner, path),
                other => Err(ExprError::new(
                    path,
                    format!(
                        "expected a condition or a nested expression (an array), found {}",
                        kind(other)
                    ),
                )),
            })
        })
        .collect()
}

fn compile_condition(items: &[Value], path: &mut String) -> Result<Condition, ExprError> {
    let var = match &items[0] {
        Value::String(s) if !s.is_empty() => s.as_str(),
        Value::String(_) => return Err(at(path, 0, |p| ExprError::new(p, "empty variable name"))),
        other => {
            return Err(at(path, 0, |p| {
                ExprError::new(
                    p,
                    format!("variable name must be a string, found {}", kind(other)),
                )
            }))
        }
    };
    let (negated, op_index) = match items.len() {
        2 => {
            if let Value::String(s) = &items[1] {
                if s == "!" || OPERATORS.iter().any(|op| s.eq_ignore_ascii_case(op)) {
                    return Err(at(path, 1, |p| {
                        ExprError::new(p, format!("operator \"{s}\" needs a value after it"))
                    }));
                }
            }
            let operand = at(path, 1, |p| operand(&items[1], p))?;
            return Ok(Condition {
                var: var.into(),
                negated: false,
                test: Test::Eq(operand),
            });
        }
        3 => (false, 1),
        4 => {
            if items[1].as_str() != Some("!") {
                return Err(at(path, 1, |p| {
                    ExprError::new(
                        p,
                        format!(
                            "a four-element condition is [var, \"!\", op, value]; expected \"!\", found {}",
                            items[1]
                        ),
                    )
                }));
            }
            (true, 2)
        }
        n => {
            return Err(ExprError::new(
                path,
                format!(
                    "a condition is [var, op, value], [var, \"!\", op, value] or [var, value]; \
                     found {n} elements"
                ),
            ))
        }
    };
    let op = match &items[op_index] {
        Value::String(s) => s.as_str(),
        other => {
            return Err(at(path, op_index, |p| {
                ExprError::new(
                    p,
                    format!("operator must be a string, found {}", kind(other)),
                )
            }))
        }
    };
    if op == "!" {
        return Err(at(path, op_index, |p| {
            ExprError::new(
                p,
                "\"!\" must be followed by an operator and a value: [var, \"!\", op, value]",
            )
        }));
    }
    let value = &items[op_index + 1];
    let lower = op.to_ascii_lowercase();
    let test = match lower.as_str() {
        "==" => Test::Eq(at(path, op_index + 1, |p| operand(value, p))?),
        "~=" => Test::Ne(at(path, op_index + 1, |p| operand(value, p))?),
        ">" | ">=" | "<" | "<=" => {
            let ordering = match lower.as_str() {
                ">" => Ordering::Gt,
                ">=" => Ordering::Ge,
                "<" => Ordering::Lt,
                _ => Ordering::Le,
            };
            Test::Compare(ordering, at(path, op_index + 1, |p| number(value, op, p))?)
        }
        "~~" | "~*" => Test::Regex(at(path, op_index + 1, |p| regex(value, lower == "~*", p))?),
        "in" => Test::In(at(path, op_index + 1, |p| in_list(value, p))?),
        "has" => match value {
            Value::String(s) => Test::Has(s.as_str().into()),
            other => {
                return Err(at(path, op_index + 1, |p| {
                    ExprError::new(p, format!("\"has\" needs a string, found {}", kind(other)))
                }))
            }
        },
        "ipmatch" => Test::IpMatch(at(path, op_index + 1, |p| networks(value, p))?),
        _ => {
            return Err(at(path, op_index, |p| {
                ExprError::new(
                    p,
                    format!(
                        "unknown operator \"{op}\" (expected one of ==, ~=, >, >=, <, <=, ~~, ~*, in, has, ipmatch)"
                    ),
                )
            }))
        }
    };
    Ok(Condition {
        var: var.into(),
        negated,
        test,
    })
}

fn operand(value: &Value, path: &str) -> Result<Operand, ExprError> {
    match value {
        Value::String(s) => Ok(Operand::Str(s.as_str().into())),
        Value::Number(n) => n
            .as_f64()
            .map(Operand::Num)
            .ok_or_else(|| ExprError::new(path, format!("number {n} is out of range"))),
        Value::Null => Ok(Operand::Absent),
        other => Err(ExprError::new(
            path,
            format!("expected a string, a number or null, found {}", kind(other)),
        )),
    }
}

fn number(value: &Value, op: &str, path: &str) -> Result<f64, ExprError> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => lua_number(s),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ExprError::new(
            path,
            format!("\"{op}\" compares numbers; {value} is not a number"),
        )
    })
}

fn regex(value: &Value, case_insensitive: bool, path: &str) -> Result<Regex, ExprError> {
    let Value::String(pattern) = value else {
        return Err(ExprError::new(
            path,
            format!(
                "expected a regular expression string, found {}",
                kind(value)
            ),
        ));
    };
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ExprError::new(path, format!("invalid regular expression: {e}")))
}

fn in_list(value: &Value, path: &mut String) -> Result<Vec<Operand>, ExprError> {
    let Value::Array(items) = value else {
        return Err(ExprError::new(
            path,
            format!("\"in\" needs an array of values, found {}", kind(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            at(path, i, |p| match item {
                Value::String(_) | Value::Number(_) => operand(item, p),
                other => Err(ExprError::new(
                    p,
                    format!("expected a string or a number, found {}", kind(other)),
                )),
            })
        })
        .collect()
}

fn networks(value: &Value, path: &mut String) -> Result<Vec<IpNet>, ExprError> {
    fn one(value: &Value, path: &str) -> Result<IpNet, ExprError> {
        let Value::String(s) = value else {
            return Err(ExprError::new(
                path,
                format!(
                    "expected an IP address or CIDR string, found {}",
                    kind(value)
                ),
            ));
        };
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| ExprError::new(path, format!("\"{s}\" is not an IP address or CIDR")))
    }
    match value {
        Value::Array(items) if items.is_empty() => Err(ExprError::new(
            path,
            "\"ipmatch\" needs at least one IP address or CIDR",
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| at(path, i, |p| one(item, p)))
            .collect(),
        other => Ok(vec![one(other, path)?]),
    }
}
