//! `portcullis migrate --from SRC --to DST`: copy every resource from one
//! config source to another, so a team can start on one node and move to a
//! cluster (or back) without retyping anything.
//!
//! Sources and targets: `file:PATH` (a config file's resource sections),
//! `store:DATA_DIR` (the embedded store), `etcd:HOST[,HOST]/PREFIX`.
//! The target keeps what it has; the resources copied replace those with the
//! same id. The result is validated whole before anything is written.

use std::path::PathBuf;

use anyhow::Context;
use portcullis_config::settings::EtcdSettings;
use portcullis_config::{Kind, Live, RawConfig};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    File(PathBuf),
    Store(PathBuf),
    Etcd { hosts: Vec<String>, prefix: String },
}

pub fn parse_endpoint(spec: &str) -> anyhow::Result<Endpoint> {
    let (kind, rest) = spec.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("{spec}: expected file:PATH, store:DATA_DIR or etcd:HOST[,HOST]/PREFIX")
    })?;
    if rest.is_empty() {
        anyhow::bail!("{spec}: nothing after `{kind}:`");
    }
    match kind {
        "file" => Ok(Endpoint::File(PathBuf::from(rest))),
        "store" => Ok(Endpoint::Store(PathBuf::from(rest))),
        "etcd" => parse_etcd(rest),
        other => {
            anyhow::bail!("{spec}: unknown source kind `{other}` (expected file, store or etcd)")
        }
    }
}

/// `127.0.0.1:2379,127.0.0.2:2379/apisix`, `http://a:2379/apisix`; no
/// prefix means `/apisix`.
fn parse_etcd(spec: &str) -> anyhow::Result<Endpoint> {
    let parts: Vec<&str> = spec.split(',').collect();
    let mut hosts = Vec::new();
    let mut prefix = "/apisix".to_string();
    for (i, part) in parts.iter().enumerate() {
        let (scheme, rest) = part.split_once("://").unwrap_or(("http", part));
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if host.is_empty() {
            anyhow::bail!("etcd:{spec}: empty host");
        }
        if let Some(p) = path {
            if i + 1 != parts.len() {
                anyhow::bail!("etcd:{spec}: the prefix goes after the last host");
            }
            prefix = format!("/{p}");
        }
        hosts.push(format!("{scheme}://{host}"));
    }
    Ok(Endpoint::Etcd { hosts, prefix })
}

fn etcd_store(hosts: &[String], prefix: &str) -> anyhow::Result<portcullis_etcd::EtcdStore> {
    let settings = EtcdSettings {
        host: hosts.to_vec(),
        prefix: prefix.to_string(),
        ..EtcdSettings::default()
    };
    portcullis_etcd::EtcdStore::new(&settings, None).map_err(|e| anyhow::anyhow!("{e}"))
}

fn joined(errors: &[impl ToString]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  ")
}

async fn read(from: &Endpoint) -> anyhow::Result<RawConfig> {
    match from {
        Endpoint::File(path) => portcullis_config::file::read(path)
            .map(|f| f.resources)
            .map_err(|errors| {
                anyhow::anyhow!("cannot read {}:\n  {}", path.display(), joined(&errors))
            }),
        Endpoint::Store(dir) => crate::serve::open_store(dir)?
            .load_raw()
            .with_context(|| format!("cannot read the store in {}", dir.display())),
        Endpoint::Etcd { hosts, prefix } => etcd_store(hosts, prefix)?
            .load_once()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read etcd {}{prefix}: {e}", hosts.join(","))),
    }
}

fn check(candidate: RawConfig, target: &str) -> anyhow::Result<()> {
    Live::default().check(candidate).map_err(|errors| {
        anyhow::anyhow!(
            "refused: {target} would not hold a valid configuration:\n  {}",
            joined(&errors)
        )
    })
}

async fn write(to: &Endpoint, to_spec: &str, raw: RawConfig, force: bool) -> anyhow::Result<usize> {
    match to {
        Endpoint::File(path) => {
            if path.exists() && !force {
                anyhow::bail!("{} exists: give --force to replace it", path.display());
            }
            check(raw.clone(), to_spec)?;
            let yaml = to_yaml(&raw);
            let tmp = path.with_extension("migrate.tmp");
            std::fs::write(&tmp, yaml)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(raw.len())
        }
        Endpoint::Store(dir) => {
            let store = crate::serve::open_store(dir)?;
            portcullis_admin::import(&store, raw).map_err(|e| anyhow::anyhow!("refused: {e}"))
        }
        Endpoint::Etcd { hosts, prefix } => {
            let store = etcd_store(hosts, prefix)?;
            let mut candidate = store.load_once().await.map_err(|e| {
                anyhow::anyhow!("cannot read etcd {}{prefix}: {e}", hosts.join(","))
            })?;
            for kind in Kind::ALL {
                for r in raw.of(kind) {
                    candidate.upsert(kind, r.clone());
                }
            }
            check(candidate, to_spec)?;
            store
                .import(&raw)
                .await
                .map_err(|e| anyhow::anyhow!("writing to etcd failed: {e}"))
        }
    }
}

/// Resources as config file YAML, in APISIX's standalone sections
/// (credentials as consumers entries with id `user/credentials/cid`),
/// without the sources' timestamps. Secrets are written in clear.
pub fn to_yaml(raw: &RawConfig) -> String {
    let file_value = |kind: Kind, id: &str, value: &Value| -> Value {
        let mut v = value.clone();
        if let Value::Object(obj) = &mut v {
            obj.remove("create_time");
            obj.remove("update_time");
            match kind {
                Kind::Consumers => {}
                Kind::Credentials => {
                    let file_id = match id.split_once('/') {
                        Some((user, cred)) => format!("{user}/credentials/{cred}"),
                        None => id.to_string(),
                    };
                    obj.insert("id".into(), Value::String(file_id));
                }
                _ => {
                    obj.insert("id".into(), Value::String(id.to_string()));
                }
            }
        }
        v
    };
    let mut doc = Map::new();
    for (section, kind) in portcullis_config::file::SECTIONS {
        let mut items: Vec<Value> = raw
            .of(kind)
            .iter()
            .map(|r| file_value(kind, &r.id, &r.value))
            .collect();
        if kind == Kind::Consumers {
            items.extend(
                raw.of(Kind::Credentials)
                    .iter()
                    .map(|r| file_value(Kind::Credentials, &r.id, &r.value)),
            );
        }
        if !items.is_empty() {
            doc.insert(section.to_string(), Value::Array(items));
        }
    }
    serde_norway::to_string(&Value::Object(doc)).unwrap_or_default()
}

pub fn run(from: &str, to: &str, force: bool) -> anyhow::Result<()> {
    let source = parse_endpoint(from)?;
    let target = parse_endpoint(to)?;
    if source == target {
        anyhow::bail!("--from and --to are the same");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let n = rt.block_on(async {
        let raw = read(&source).await?;
        write(&target, to, raw, force).await
    })?;
    eprintln!("migrated {n} resources from {from} to {to}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("etcd:127.0.0.1:2379,127.0.0.2:2379/custom/p").unwrap(),
            Endpoint::Etcd {
                hosts: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.2:2379".into()
                ],
                prefix: "/custom/p".into()
            }
        );
        assert_eq!(
            parse_endpoint("etcd:https://e:2379").unwrap(),
            Endpoint::Etcd {
                hosts: vec!["https://e:2379".into()],
                prefix: "/apisix".into()
            }
        );
        assert_eq!(
            parse_endpoint("store:/var/lib/p").unwrap(),
            Endpoint::Store("/var/lib/p".into())
        );
        assert!(parse_endpoint("etcd:a:1/p,b:2").is_err());
        assert!(parse_endpoint("s3:x").is_err());
    }
}
