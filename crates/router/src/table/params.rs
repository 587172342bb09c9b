//! Segment tree of parameterised uris (`/users/:id`, `/u/:id/*rest`).
//!
//! Each node branches on the next path segment: a literal child looked up by the segment's
//! text, one shared child for any `:name` (names live with the route entry, so
//! `/u/:id` and `/u/:uid` share a node), and routes that end at the node or catch all of
//! the rest below it. A request follows at most two children per segment (its literal
//! and the parameter), so the cost follows the path's depth and the shape of the patterns,
//! not the number of routes; only patterns that offer both a literal and a parameter at
//! many consecutive levels make the walk branch much.

use std::collections::HashMap;

use super::uri::Segment;

#[derive(Debug, Default)]
pub(crate) struct ParamTree {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    /// Entries whose pattern ends exactly here.
    terminal: Vec<u32>,
    /// Entries whose pattern ends here in `*` / `*name`.
    catch_all: Vec<u32>,
}

/// Matched entry ids, kept inline for the usual handful so matching does not allocate.
pub(crate) struct Candidates {
    inline: [u32; 8],
    len: usize,
    spill: Vec<u32>,
}

impl Candidates {
    pub(crate) fn new() -> Self {
        Candidates {
            inline: [0; 8],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn extend(&mut self, ids: &[u32]) {
        for &id in ids {
            if self.spill.is_empty() && self.len < self.inline.len() {
                self.inline[self.len] = id;
                self.len += 1;
            } else {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.inline);
                }
                self.spill.push(id);
            }
        }
    }

    /// The ids in ascending order, which is candidate order.
    pub(crate) fn sorted(&mut self) -> &[u32] {
        let ids = if self.spill.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill[..]
        };
        ids.sort_unstable();
        ids
    }
}

impl ParamTree {
    pub(crate) fn new() -> Self {
        ParamTree {
            nodes: vec![Node::default()],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        let root = &self.nodes[0];
        root.literals.is_empty()
            && root.param.is_none()
            && root.terminal.is_empty()
            && root.catch_all.is_empty()
    }

    pub(crate) fn insert(&mut self, segments: &[Segment], catch_all: bool, entry: u32) {
        let mut at = 0usize;
        for segment in segments {
            let existing = match segment {
                Segment::Literal(text) => self.nodes[at].literals.get(text).copied(),
                Segment::Param(_) => self.nodes[at].param,
            };
            at = match existing {
                Some(child) => child as usize,
                None => {
                    let id = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    match segment {
                        Segment::Literal(text) => {
                            self.nodes[at].literals.insert(text.clone(), id);
                        }
                        Segment::Param(_) => self.nodes[at].param = Some(id),
                    }
                    id as usize
                }
            };
        }
        let node = &mut self.nodes[at];
        if catch_all {
            node.catch_all.push(entry);
        } else {
            node.terminal.push(entry);
        }
    }

    /// Adds every entry whose pattern matches `path` to `out`, in no particular order.
    pub(crate) fn collect(&self, path: &str, out: &mut Candidates) {
        if path.starts_with('/') {
            self.walk(0, path, Some(1), out);
        }
    }

    /// `segment_start` is the byte offset of the next segment, or `None` once the path is
    /// used up.
    fn walk(&self, id: usize, path: &str, segment_start: Option<usize>, out: &mut Candidates) {
        let node = &self.nodes[id];
        let Some(start) = segment_start else {
            out.extend(&node.terminal);
            return;
        };
        out.extend(&node.catch_all);
        let end = path[start..].find('/').map(|i| start + i);
        let segment = &path[start..end.unwrap_or(path.len())];
        let next = end.map(|e| e + 1);
        if let Some(&child) = node.literals.get(segment) {
            self.walk(child as usize, path, next, out);
        }
        if !segment.is_empty() {
            if let Some(child) = node.param {
                self.walk(child as usize, path, next, out);
            }
        }
    }
}
