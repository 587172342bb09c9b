//! What a policy reads from a request's context, so that a verdict can be
//! remembered for the requests that agree on exactly those inputs.
//!
//! A decision is a function of the principal, the action, the resource and
//! the context values the applicable policies read. The first three are
//! keyed already (the consumer and route values, the method); this module
//! names the rest. Policies are type-checked against the schema before they
//! get here, so `context` is a record with known attributes, and `headers`
//! and `params` are entities that only have tags. A policy is understood
//! when every use of `context` is one of:
//!
//! - `context.<attr>` or `context has <attr>`, for any attribute but
//!   `headers` and `params`;
//! - `context.headers.hasTag("<name>")`, `context.headers.getTag("<name>")`,
//!   and the same on `context.params`, with a literal tag name.
//!
//! Anything else (a tag name computed at run time, `context.headers`
//! compared or passed whole) makes the policy's inputs unknown, and the
//! requests it applies to are evaluated every time.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cedar_policy::Policy;
use portcullis_core::RequestState;
use serde_json::{Map, Value};

use super::Clock;

/// Bytes of header and parameter values a remembered verdict's key may
/// hold; a request reading more is evaluated without being remembered, so
/// that large or ever-changing values cannot fill the memory of the cache.
const MAX_KEY_BYTES: usize = 1024;

/// The context inputs a set of policies reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Context attributes read, other than `headers` and `params`.
    pub attrs: BTreeSet<String>,
    /// Header names whose tags are read (as written in the policy).
    pub headers: BTreeSet<String>,
    /// Path parameter names whose tags are read.
    pub params: BTreeSet<String>,
}

impl Inputs {
    /// These inputs and `other`'s together.
    pub fn merge(mut self, other: Inputs) -> Inputs {
        self.attrs.extend(other.attrs);
        self.headers.extend(other.headers);
        self.params.extend(other.params);
        self
    }

    /// One policy's inputs, read from its JSON form (Cedar's public view of
    /// a policy's expressions).
    pub fn of(policy: &Policy) -> Option<Inputs> {
        let json = policy.to_json().ok()?;
        let mut inputs = Inputs::default();
        walk(&json, &mut inputs).then_some(inputs)
    }
}

/// One input's value in a request, as the context gives it to Cedar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Ip(IpAddr),
    Text(Box<str>),
    /// A header or parameter tag: absent, or its value.
    Tag(Option<Box<str>>),
    Long(i64),
    Bool(bool),
}

impl Inputs {
    /// The values of these inputs in `req`, in a fixed order (attributes,
    /// then headers, then parameters, each sorted by name); `None` when
    /// they are too large to remember.
    pub fn read(&self, req: &RequestState) -> Option<Vec<Input>> {
        let mut values =
            Vec::with_capacity(self.attrs.len() + self.headers.len() + self.params.len());
        let mut clock = None;
        for attr in &self.attrs {
            let mut now = || *clock.get_or_insert_with(Clock::now);
            values.push(match attr.as_str() {
                "client_ip" => Input::Ip(req.client_ip.to_canonical()),
                "method" => Input::Text(req.head.method.as_str().into()),
                "path" => Input::Text(req.path().into()),
                "host" => Input::Text(req.host().unwrap_or("").into()),
                "scheme" => Input::Text(req.scheme.into()),
                "authenticated" => Input::Bool(req.identity.is_some()),
                "now" => Input::Long(now().unix),
                "hour_utc" => Input::Long(now().hour_utc),
                "weekday_utc" => Input::Long(now().weekday_utc),
                // Not in the context: the policy errors the same way for
                // every request.
                _ => continue,
            });
        }
        let mut bytes = 0;
        let mut tag = |value: Option<String>| {
            bytes += value.as_ref().map_or(0, String::len);
            Input::Tag(value.map(String::into_boxed_str))
        };
        for name in &self.headers {
            values.push(tag(super::header_tag(req, name)));
        }
        for name in &self.params {
            // Every value under the name, should a route repeat one.
            let mut value: Option<String> = None;
            for (i, (_, v)) in req
                .path_params
                .iter()
                .filter(|(k, _)| k == name)
                .enumerate()
            {
                let joined = value.get_or_insert_with(String::new);
                if i > 0 {
                    joined.push('\0');
                }
                joined.push_str(v);
            }
            values.push(tag(value));
        }
        let text_bytes: usize = values
            .iter()
            .map(|v| match v {
                Input::Text(t) => t.len(),
                _ => 0,
            })
            .sum();
        (bytes + text_bytes <= MAX_KEY_BYTES).then_some(values)
    }
}

/// Collect what `node` reads into `inputs`; false at a use of `context`
/// that is not understood.
fn walk(node: &Value, inputs: &mut Inputs) -> bool {
    match node {
        Value::Object(map) => {
            if let Some(attr) = context_attr(map) {
                if attr == "headers" || attr == "params" {
                    // Only a tag lookup (below) is understood on these.
                    return false;
                }
                inputs.attrs.insert(attr.to_string());
                return true;
            }
            if let Some((entity, name)) = tag_lookup(map) {
                match (entity, name) {
                    ("headers", Some(name)) => inputs.headers.insert(name.to_string()),
                    ("params", Some(name)) => inputs.params.insert(name.to_string()),
                    _ => return false,
                };
                return true;
            }
            if is_context(map) {
                return false;
            }
            map.values().all(|v| walk(v, inputs))
        }
        Value::Array(items) => items.iter().all(|v| walk(v, inputs)),
        _ => true,
    }
}

/// `{"Var": "context"}`.
fn is_context(map: &Map<String, Value>) -> bool {
    map.len() == 1 && map.get("Var").and_then(Value::as_str) == Some("context")
}

/// The single operator of an expression node and its operand.
fn operator(map: &Map<String, Value>) -> Option<(&str, &Map<String, Value>)> {
    if map.len() != 1 {
        return None;
    }
    let (op, operand) = map.iter().next()?;
    Some((op.as_str(), operand.as_object()?))
}

/// `context.<attr>` or `context has <attr>` (for `has a.b`, the first name).
fn context_attr(map: &Map<String, Value>) -> Option<&str> {
    let (op, operand) = operator(map)?;
    if op != "." && op != "has" {
        return None;
    }
    let left = operand.get("left")?.as_object()?;
    if !is_context(left) {
        return None;
    }
    match operand.get("attr")? {
        Value::String(attr) => Some(attr),
        Value::Array(path) => path.first()?.as_str(),
        _ => None,
    }
}

/// `context.<headers|params>.hasTag(x)` or `.getTag(x)`: the entity's
/// attribute name and the tag name when it is a literal string.
fn tag_lookup(map: &Map<String, Value>) -> Option<(&str, Option<&str>)> {
    let (op, operand) = operator(map)?;
    if op != "hasTag" && op != "getTag" {
        return None;
    }
    let entity = context_attr(operand.get("left")?.as_object()?)?;
    if entity != "headers" && entity != "params" {
        return None;
    }
    let name = operand
        .get("right")
        .and_then(Value::as_object)
        .filter(|right| right.len() == 1)
        .and_then(|right| right.get("Value"))
        .and_then(Value::as_str);
    Some((entity, name))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn inputs(text: &str) -> Option<Inputs> {
        Inputs::of(&Policy::from_str(text).unwrap())
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_policy_without_context_reads_nothing() {
        assert_eq!(
            inputs(
                r#"permit(principal == Consumer::"a", action, resource) when { principal.hasTag("team") };"#
            ),
            Some(Inputs::default())
        );
    }

    #[test]
    fn attributes_and_literal_tags_are_named() {
        let got = inputs(
            r#"permit(principal, action, resource) when {
                context.client_ip.isInRange(ip("127.0.0.0/8"))
                && !context.headers.hasTag("x-blocked")
                && (context has hour_utc && context.hour_utc < 18)
                && context.params.getTag("id") == "42"
            };"#,
        )
        .unwrap();
        assert_eq!(got.attrs, set(&["client_ip", "hour_utc"]));
        assert_eq!(got.headers, set(&["x-blocked"]));
        assert_eq!(got.params, set(&["id"]));
    }

    #[test]
    fn computed_tag_names_and_whole_entities_are_not_understood() {
        assert_eq!(
            inputs(
                r#"permit(principal, action, resource) when { context.headers.hasTag(context.path) };"#
            ),
            None
        );
        assert_eq!(
            inputs(
                r#"permit(principal, action, resource) when { context.headers == Headers::"request" };"#
            ),
            None
        );
        assert_eq!(
            inputs(r#"permit(principal, action, resource) when { context.params has id };"#),
            None
        );
    }

    #[test]
    fn inputs_merge_and_unknown_stays_unknown() {
        let known = Policy::from_str(
            r#"permit(principal, action, resource) when { context.path == "/a" };"#,
        )
        .unwrap();
        let unknown = Policy::from_str(
            r#"permit(principal, action, resource) when { context.headers.hasTag(context.host) };"#,
        )
        .unwrap();
        let known = Inputs::of(&known).unwrap();
        assert_eq!(known.attrs, set(&["path"]));
        assert_eq!(Inputs::of(&unknown), None);
        let host = inputs(r#"permit(principal, action, resource) when { context.host == "a" };"#);
        assert_eq!(known.merge(host.unwrap()).attrs, set(&["host", "path"]));
    }
}
