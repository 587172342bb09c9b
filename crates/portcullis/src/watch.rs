//! `config_source: file`: the file is watched, and a changed file is
//! validated whole and swapped in; a bad one is refused with its errors and
//! the last good config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::Live;

/// How often the file is looked at. Polling the content (not inotify)
/// survives editors that replace the file, bind mounts and ConfigMaps.
const POLL: Duration = Duration::from_millis(200);

pub async fn watch_file(path: PathBuf, live: Arc<Live>) {
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::time::sleep(POLL).await;
        let now = tokio::fs::read(&path).await.ok();
        if now.is_some() && now != last {
            last = now;
            reload(&path, &live);
        }
    }
}

/// Re-read the file and apply its resources. Node settings (`gateway:`)
/// need a restart; a change to them is reported, not applied.
pub fn reload(path: &Path, live: &Live) {
    let file = match portcullis_config::file::read(path) {
        Ok(f) => f,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            live.record_refusal(errors.clone());
            tracing::error!(path = %path.display(), ?errors, "config file refused; the last good config keeps serving");
            return;
        }
    };
    match live.apply(file.resources) {
        Ok(version) => tracing::info!(path = %path.display(), version, "config reloaded"),
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            tracing::error!(path = %path.display(), ?errors, "config file refused; the last good config keeps serving");
        }
    }
}
