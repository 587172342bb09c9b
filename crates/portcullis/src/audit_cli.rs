//! `portcullis audit verify|query`: read the audit file directly (the
//! gateway may be running; SQLite's WAL lets both work).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; name the records (and batches) changed, removed
    /// or moved.
    Verify {
        /// The config file whose `gateway.data_dir` holds the audit file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List audit records, newest first, as a table or JSON.
    Query(QueryArgs),
    /// Counts by outcome, grouped.
    Summary {
        #[command(flatten)]
        q: QueryArgs,
        /// Columns to group by, e.g. consumer,route.
        #[arg(long, default_value = "consumer,route")]
        group_by: String,
    },
}

#[derive(Args)]
pub struct QueryArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    consumer: Option<String>,
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    tier: Option<String>,
    /// A code (403) or a class (4xx).
    #[arg(long)]
    status: Option<String>,
    /// allow, reject, would_reject, error (or a detector / action for events).
    #[arg(long)]
    decision: Option<String>,
    /// request, alert, quarantine.create, quarantine.lift, quarantine.expire.
    #[arg(long)]
    event: Option<String>,
    #[arg(long)]
    request_id: Option<String>,
    /// RFC 3339, unix seconds, or relative (-1h).
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long)]
    cursor: Option<String>,
    /// JSON (the Admin API's answer) instead of a table.
    #[arg(long)]
    json: bool,
}

fn audit_path(config: &Path) -> anyhow::Result<PathBuf> {
    let file = portcullis_config::file::read(config).map_err(|errors| {
        anyhow::anyhow!(
            "invalid config {}: {}",
            config.display(),
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let path = file.gateway.audit.path(&file.gateway.data_dir);
    if !path.exists() {
        anyhow::bail!("no audit file at {}", path.display());
    }
    Ok(path)
}

impl QueryArgs {
    fn filter(&self) -> anyhow::Result<portcullis_audit::Filter> {
        let limit = self.limit.to_string();
        portcullis_audit::Filter::from_args(|k| match k {
            "consumer" => self.consumer.clone(),
            "route" => self.route.clone(),
            "tier" => self.tier.clone(),
            "status" => self.status.clone(),
            "decision" => self.decision.clone(),
            "event" => self.event.clone(),
            "request_id" => self.request_id.clone(),
            "from" => self.from.clone(),
            "to" => self.to.clone(),
            "limit" => Some(limit.clone()),
            "cursor" => self.cursor.clone(),
            _ => None,
        })
        .map_err(|e| anyhow::anyhow!(e))
    }
}

/// Returns the process exit code.
pub fn run(cmd: AuditCommand) -> anyhow::Result<bool> {
    match cmd {
        AuditCommand::Verify { config, json } => {
            let path = audit_path(&config)?;
            let conn = portcullis_audit::store::open_read(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let v = portcullis_audit::store::verify(&conn).context("cannot read the audit file")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.ok {
                println!(
                    "{}: ok, {} records (seq {}..{}) in {} batches, head {}",
                    path.display(),
                    v.rows,
                    v.first_seq.unwrap_or(0),
                    v.last_seq.unwrap_or(0),
                    v.batches,
                    v.head_hash.as_deref().unwrap_or("-")
                );
            } else {
                println!("{}: TAMPERED ({} records read)", path.display(), v.rows);
                for p in &v.problems {
                    println!("  record {} (batch {}): {}", p.seq, p.batch, p.what);
                }
            }
            Ok(v.ok)
        }
        AuditCommand::Query(q) => {
            let path = audit_path(&q.config)?;
            let conn = portcullis_audit::store::open_read(&path)?;
            let v = portcullis_audit::store::query(&conn, &q.filter()?)?;
            if q.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&v);
            }
            Ok(true)
        }
        AuditCommand::Summary { q, group_by } => {
            let path = audit_path(&q.config)?;
            let conn = portcullis_audit::store::open_read(&path)?;
            let groups: Vec<String> = group_by
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let v = portcullis_audit::store::summary(&conn, &q.filter()?, &groups)
                .map_err(|e| anyhow::anyhow!(e))?;
            if q.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut header: Vec<String> = groups.clone();
                header.extend(
                    ["total", "allow", "reject", "would_reject", "error"].map(String::from),
                );
                let rows: Vec<Vec<String>> = v["groups"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|g| header.iter().map(|h| cell(&g[h.as_str()])).collect())
                            .collect()
                    })
                    .unwrap_or_default();
                print_rows(&header, &rows);
            }
            Ok(true)
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(v: &Value) {
    let header: Vec<String> = [
        "seq",
        "time",
        "event",
        "consumer",
        "route",
        "tier",
        "method",
        "path",
        "status",
        "decision",
        "plugin",
        "request_id",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = v["list"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| header.iter().map(|h| cell(&r[h.as_str()])).collect())
                .collect()
        })
        .unwrap_or_default();
    print_rows(&header, &rows);
    println!(
        "{} shown of {} matching{}",
        rows.len(),
        v["total"],
        match v["next_cursor"].as_str() {
            Some(c) => format!("; next page: --cursor {c}"),
            None => String::new(),
        }
    );
}

fn print_rows(header: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count().min(48));
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(48).collect();
                format!("{c:<w$}")
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header);
    for r in rows {
        line(r);
    }
}
