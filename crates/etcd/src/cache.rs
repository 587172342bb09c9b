//! The last good configuration a node took from etcd, kept on its own disk
//! (`data_dir/etcd-cache.json`), so that a node started while etcd is away
//! still serves. Written whole and renamed into place: a crash leaves the
//! old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The file inside `data_dir`.
pub const CACHE_FILE: &str = "etcd-cache.json";

pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(CACHE_FILE)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedConfig {
    pub format: u32,
    /// The etcd prefix it was read from: a cache of another prefix is not used.
    pub prefix: String,
    /// The etcd revision the config is current at.
    pub revision: i64,
    /// Unix milliseconds of the last contact with etcd before it was written.
    pub contact_at_ms: u64,
    pub entries: Vec<CachedEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedEntry {
    pub key: String,
    pub value: Value,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl CachedConfig {
    pub fn contact_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.contact_at_ms)
    }
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write `config` to `path` atomically (temp file, fsync, rename).
pub fn write(path: &Path, config: &CachedConfig) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, config)?;
        f.flush()?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable; not every filesystem allows it.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read a cache file; `Ok(None)` when there is none.
pub fn read(path: &Path) -> std::io::Result<Option<CachedConfig>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_cache_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(read(&path).unwrap().is_none());
        let c = CachedConfig {
            format: 1,
            prefix: "/apisix".into(),
            revision: 7,
            contact_at_ms: 1_700_000_000_000,
            entries: vec![CachedEntry {
                key: "/apisix/routes/1".into(),
                value: serde_json::json!({"uri": "/a"}),
                create_revision: 3,
                mod_revision: 7,
            }],
        };
        write(&path, &c).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back.revision, 7);
        assert_eq!(back.entries[0].value["uri"], "/a");
        assert!(!path.with_extension("json.tmp").exists());
    }
}
