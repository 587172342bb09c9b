//! `portcullis openapi import`: an OpenAPI 3.0 or 3.1 document becomes
//! APISIX routes, one per operation, each with a request-validation plugin
//! built from the operation's parameters and JSON body (docs/openapi-import.md).
//!
//! The document is read as plain JSON values (so 3.0 and 3.1 are one code
//! path), local `$ref`s are inlined ([`refs`]), OpenAPI's schema dialect is
//! turned into JSON Schema draft 7 (3.0) or 2020-12 (3.1) ([`dialect`]),
//! `--strict` closes objects ([`strict`]), and the routes are written out or
//! merged into a config file ([`merge`]). Every problem in the document is
//! reported with the JSON pointer of where it is.

mod dialect;
mod merge;
mod refs;
mod routes;
mod spec;
mod strict;

use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

#[derive(clap::Subcommand)]
pub enum OpenapiCommand {
    /// Turn an OpenAPI 3.0/3.1 document (JSON or YAML) into routes that
    /// validate path, query, header parameters and JSON bodies
    /// (docs/openapi-import.md).
    Import(ImportArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The OpenAPI document.
    spec: PathBuf,
    /// The id of the upstream every route sends to.
    #[arg(long)]
    upstream: String,
    /// Write the routes here instead of stdout.
    #[arg(long, short, conflicts_with = "into")]
    output: Option<PathBuf>,
    /// Merge the routes into this config file: routes with the same ids are
    /// replaced, everything else is kept; the result must validate.
    #[arg(long)]
    into: Option<PathBuf>,
    /// Refuse properties and query arguments the document does not declare,
    /// and read-only properties in requests.
    #[arg(long)]
    strict: bool,
    /// Put before every route id.
    #[arg(long, default_value = "")]
    id_prefix: String,
}

/// A problem with the document, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// JSON pointer into the document ("" for the document itself).
    pub pointer: String,
    pub message: String,
}

impl SpecError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at #{}: {}", self.pointer, self.message)
    }
}

impl std::error::Error for SpecError {}

/// One segment of a JSON pointer, escaped (`~` → `~0`, `/` → `~1`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

pub fn run(command: OpenapiCommand) -> anyhow::Result<()> {
    match command {
        OpenapiCommand::Import(args) => import(&args),
    }
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    routes::check_id("--upstream", &args.upstream)?;
    if !args.id_prefix.is_empty() {
        routes::check_id("--id-prefix", &args.id_prefix)?;
    }
    let spec = spec::read(&args.spec)?;
    let options = routes::Options {
        upstream_id: args.upstream.clone(),
        id_prefix: args.id_prefix.clone(),
        strict: args.strict,
    };
    let imported = routes::generate(&spec, &options)
        .with_context(|| format!("{} is not importable", args.spec.display()))?;
    for warning in &imported.warnings {
        eprintln!("portcullis: warning: {warning}");
    }
    match &args.into {
        Some(target) => {
            let report = merge::into_file(target, &imported.routes)?;
            eprintln!(
                "portcullis: {}: {} route(s) imported ({} replaced, {} added)",
                target.display(),
                imported.routes.len(),
                report.replaced,
                report.added
            );
            for id in report.stale {
                eprintln!(
                    "portcullis: warning: route {id} was imported from OpenAPI for upstream {} and is not in this document; it is kept",
                    args.upstream
                );
            }
        }
        None => {
            let yaml = serde_norway::to_string(
                &json!({ "routes": Value::Array(imported.routes.clone()) }),
            )
            .context("cannot write the routes as YAML")?;
            match &args.output {
                Some(path) => std::fs::write(path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{yaml}"),
            }
        }
    }
    Ok(())
}
