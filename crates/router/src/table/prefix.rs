//! Byte trie of prefix uris (`/api/*`, `/api*`, `/files/*path`).
//!
//! A request walks the trie once along its path bytes to the deepest node that carries
//! routes; every node also links to its nearest ancestor that carries routes, so the
//! matching prefixes come out longest first by following links, with no buffer to fill.

#[derive(Debug, Default)]
pub(crate) struct PrefixTrie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte, searched by binary search.
    children: Vec<(u8, u32)>,
    /// Entry ids in candidate order (the caller inserts in that order).
    entries: Vec<u32>,
    /// Nearest proper ancestor with entries.
    up: Option<u32>,
}

impl PrefixTrie {
    pub(crate) fn new() -> Self {
        PrefixTrie {
            nodes: vec![Node::default()],
        }
    }

    pub(crate) fn insert(&mut self, prefix: &[u8], entry: u32) {
        let mut at = 0usize;
        for &byte in prefix {
            at = match self.nodes[at].children.binary_search_by_key(&byte, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(i, (byte, id as u32));
                    id
                }
            };
        }
        self.nodes[at].entries.push(entry);
    }

    /// Links every node to its nearest ancestor with entries; call once after inserting.
    pub(crate) fn finish(&mut self) {
        let mut stack = vec![(0u32, None::<u32>)];
        while let Some((id, up)) = stack.pop() {
            let node = &mut self.nodes[id as usize];
            node.up = up;
            let below = if node.entries.is_empty() {
                up
            } else {
                Some(id)
            };
            stack.extend(node.children.iter().map(|&(_, child)| (child, below)));
        }
    }

    /// Entries whose prefix starts `path`, longest prefix first.
    pub(crate) fn matches<'t>(&'t self, path: &[u8]) -> Matches<'t> {
        let mut at = 0usize;
        let mut deepest = None;
        for &byte in path {
            let node = &self.nodes[at];
            match node.children.binary_search_by_key(&byte, |c| c.0) {
                Ok(i) => at = node.children[i].1 as usize,
                Err(_) => break,
            }
            if !self.nodes[at].entries.is_empty() {
                deepest = Some(at as u32);
            }
        }
        Matches {
            trie: self,
            node: deepest,
            pos: 0,
        }
    }
}

pub(crate) struct Matches<'t> {
    trie: &'t PrefixTrie,
    node: Option<u32>,
    pos: usize,
}

impl Iterator for Matches<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            let node = &self.trie.nodes[self.node? as usize];
            if let Some(&entry) = node.entries.get(self.pos) {
                self.pos += 1;
                return Some(entry);
            }
            self.node = node.up;
            self.pos = 0;
        }
    }
}
