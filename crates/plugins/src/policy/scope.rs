//! Policies grouped by what their scope can match, so that a request is
//! handed only the policies that could apply to it.
//!
//! Cedar reads a policy as `principal-scope && action-scope &&
//! resource-scope && conditions`, left to right: a policy whose action or
//! resource scope does not match the request is unsatisfied before any
//! condition runs, and can neither permit, forbid nor fail. Leaving such
//! policies out therefore gives the same decision, the same deciding
//! policies and the same errors, while a set of a hundred per-route rules
//! costs a request about what its one or two matching rules cost.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicyId, PolicySet, ResourceConstraint};

use super::inputs::Inputs;

/// Each policy's context inputs, worked out once for all the groups it
/// lands in (`None`: not understood).
type InputsById = HashMap<PolicyId, Option<Inputs>>;

/// The policies that can apply to one (action, route), and what building
/// the request for them needs.
pub struct Scoped {
    pub policies: PolicySet,
    /// Whether any of them mentions `headers`: the header entity is the
    /// costly part of a request, and is left out when nothing reads it.
    pub needs_headers: bool,
    /// Whether any of them mentions `params`; the path-parameter entity is
    /// left out otherwise. (The context still names both entities: only
    /// reading a tag looks an entity up, and only a policy that names one
    /// reads its tags.)
    pub needs_params: bool,
    /// Whether any of them mentions `context` at all: when none does, the
    /// decision depends only on the consumer, the action and the route.
    pub needs_context: bool,
    /// The context values they read, when every one of them can be
    /// understood ([`super::inputs`]): the verdict is then remembered per
    /// those values.
    pub inputs: Option<Inputs>,
}

impl Scoped {
    fn of(policies: &[&Policy], inputs: &InputsById) -> Scoped {
        let texts: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
        let needs_headers = texts.iter().any(|t| t.contains("headers"));
        let needs_params = texts.iter().any(|t| t.contains("params"));
        let needs_context = texts.iter().any(|t| t.contains("context"));
        let set = PolicySet::from_policies(policies.iter().map(|p| (*p).clone()))
            .unwrap_or_else(|_| unreachable!("ids were unique in the whole set"));
        let mut read = Some(Inputs::default());
        for p in policies {
            read = match (read, inputs.get(p.id()).cloned().flatten()) {
                (Some(all), Some(one)) => Some(all.merge(one)),
                _ => None,
            };
        }
        Scoped {
            policies: set,
            needs_headers,
            needs_params,
            needs_context,
            inputs: read,
        }
    }
}

/// Past this many policy copies the grouping is not worth its memory (many
/// routes × many unscoped rules); every request then gets the whole set.
const MAX_COPIES: usize = 100_000;

/// For each action, a set per route some policy names, and one for every
/// other route. Actions are looked up by HTTP method, which hashes far
/// more cheaply than a Cedar entity id.
pub struct ScopeIndex {
    by_action: HashMap<http::Method, ActionSets>,
    /// Methods no policy's scope can name get everything (Cedar decides).
    all: Arc<Scoped>,
}

struct ActionSets {
    by_route: HashMap<String, Arc<Scoped>>,
    other: Arc<Scoped>,
}

impl ScopeIndex {
    /// `actions`: every action the schema declares, by the method it
    /// stands for; `is_route` tells a route entity from others.
    pub fn build(
        set: &PolicySet,
        actions: &HashMap<http::Method, EntityUid>,
        is_route: impl Fn(&EntityUid) -> bool,
    ) -> ScopeIndex {
        let policies: Vec<&Policy> = set.policies().collect();
        let inputs: InputsById = policies
            .iter()
            .map(|p| (p.id().clone(), Inputs::of(p)))
            .collect();
        let all = Arc::new(Scoped::of(&policies, &inputs));
        let mut by_action = HashMap::new();
        let mut copies = 0usize;
        for (method, action) in actions {
            let applies: Vec<&Policy> = policies
                .iter()
                .copied()
                .filter(|p| match p.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => &a == action,
                    ActionConstraint::In(list) => list.contains(action),
                })
                .collect();
            // Routes have no children, so `in Route::"x"` is `== Route::"x"`.
            let named_route = |p: &Policy| match p.resource_constraint() {
                ResourceConstraint::Eq(r) | ResourceConstraint::In(r) if is_route(&r) => {
                    Some(r.id().unescaped().to_string())
                }
                _ => None,
            };
            let mut general = Vec::new();
            let mut per_route: HashMap<String, Vec<&Policy>> = HashMap::new();
            for p in applies {
                match named_route(p) {
                    Some(route) => per_route.entry(route).or_default().push(p),
                    None => general.push(p),
                }
            }
            copies += general.len() * (per_route.len() + 1)
                + per_route.values().map(Vec::len).sum::<usize>();
            if copies > MAX_COPIES {
                return ScopeIndex {
                    by_action: HashMap::new(),
                    all,
                };
            }
            let by_route = per_route
                .into_iter()
                .map(|(route, own)| {
                    let mut both = general.clone();
                    both.extend(own);
                    (route, Arc::new(Scoped::of(&both, &inputs)))
                })
                .collect();
            by_action.insert(
                method.clone(),
                ActionSets {
                    by_route,
                    other: Arc::new(Scoped::of(&general, &inputs)),
                },
            );
        }
        ScopeIndex { by_action, all }
    }

    /// The policies that can apply to `method` on route `route_id`.
    pub fn select(&self, method: &http::Method, route_id: &str) -> &Scoped {
        match self.by_action.get(method) {
            Some(sets) => sets.by_route.get(route_id).unwrap_or(&sets.other),
            None => &self.all,
        }
    }
}
