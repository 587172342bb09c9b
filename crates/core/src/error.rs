//! Configuration errors that name the field at fault.
//!
//! Every source (file, Admin API, etcd) reports through this one type, so a
//! mistake reads the same wherever it was made: `routes[2].upstream.nodes:
//! expected at least one node` in a file, `upstream.nodes: ...` in an Admin
//! API answer.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the resource sits, as the source names it: `routes[2]` for a file,
    /// `routes/42` for the store. Empty for node settings.
    pub resource: String,
    /// Field path inside the resource, dot separated: `upstream.nodes`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            resource: String::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn in_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// Prefix the field path, as an error climbs out of a nested structure.
    pub fn under(mut self, parent: &str) -> Self {
        self.field = join_path(parent, &self.field);
        self
    }

    /// The path without the resource prefix, for answers about one resource.
    pub fn field_message(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

pub fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (false, true) => parent.to_string(),
        (false, false) if child.starts_with('[') => format!("{parent}{child}"),
        (false, false) => format!("{parent}.{child}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = join_path(&self.resource, &self.field);
        if path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{path}: {}", self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_joins_resource_and_field() {
        let e = ConfigError::new("nodes", "must not be empty")
            .under("upstream")
            .in_resource("routes[2]");
        assert_eq!(e.to_string(), "routes[2].upstream.nodes: must not be empty");
        assert_eq!(e.field_message(), "upstream.nodes: must not be empty");
    }

    #[test]
    fn index_segments_attach_without_a_dot() {
        assert_eq!(join_path("uris", "[1]"), "uris[1]");
    }
}
