//! The real `portcullis` binary, started on free loopback ports with a
//! config file the test writes. Dropping the handle kills the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Gateway {
    pub child: Child,
    pub http_port: u16,
    pub admin_port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// Path of the binary built by cargo for integration tests of the
/// `portcullis` package, or found next to the test executable.
pub fn binary_path() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_BIN_EXE_portcullis") {
        return PathBuf::from(p);
    }
    let mut p = std::env::current_exe().expect("current exe");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("portcullis")
}

impl Gateway {
    /// Write `config` (YAML; `{HTTP_PORT}`, `{ADMIN_PORT}`, `{METRICS_PORT}`
    /// and `{DATA_DIR}` are replaced) and start `portcullis serve` on it.
    /// A `gateway:` section listing the ports is prepended when the config
    /// has none.
    pub fn start(config: &str) -> Gateway {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = crate::free_port();
        let admin_port = crate::free_port();
        let metrics_port = crate::free_port();
        let mut text = String::new();
        if !config.contains("gateway:") {
            text.push_str(&default_gateway_section());
        }
        text.push_str(config);
        let text = text
            .replace("{HTTP_PORT}", &http_port.to_string())
            .replace("{ADMIN_PORT}", &admin_port.to_string())
            .replace("{METRICS_PORT}", &metrics_port.to_string())
            .replace("{DATA_DIR}", &dir.path().join("data").display().to_string());
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, text).expect("write config");
        let child = spawn(&config_path, env);
        let gw = Gateway {
            child,
            http_port,
            admin_port,
            metrics_port,
            dir,
            config_path,
        };
        gw.wait_ready();
        gw
    }

    /// Restart the process on the same config and data directory.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.config_path, env);
        self.wait_ready();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// An Admin API call with `key` (a header and its value); a null
    /// `body` sends none. Panics when the call cannot be made at all.
    pub async fn admin_as(
        &self,
        key: (&str, &str),
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> crate::Response {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        crate::request(method, &self.admin_url(path), &[key], body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// Wait until the data plane accepts connections and /healthz answers.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).is_ok();
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("portcullis did not start listening within 20 s");
    }

    pub fn write_config(&self, config: &str) {
        write_atomically(&self.config_path, config);
    }

    /// What the process wrote to stderr so far (logs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// What the process wrote to stdout so far (access log lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub fn default_gateway_section() -> String {
    "gateway:\n  listen: [\"127.0.0.1:{HTTP_PORT}\"]\n  admin:\n    listen: \"127.0.0.1:{ADMIN_PORT}\"\n    keys:\n      - { name: ops, key: test-admin-key, role: admin }\n      - { name: auditor, key: test-viewer-key, role: viewer }\n  metrics:\n    listen: \"127.0.0.1:{METRICS_PORT}\"\n  data_dir: \"{DATA_DIR}\"\n  workers: 1\n  access_log: \"off\"\n".to_string()
}

fn spawn(config_path: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(binary_path());
    cmd.arg("serve").arg("--config").arg(config_path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Output goes to files beside the config, so a failing test can show it.
    let dir = config_path.parent().expect("config has a directory");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("stdout log");
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .expect("stderr log");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it with cargo build)",
                binary_path().display()
            )
        })
}

/// Replace a file in one step, as editors and config management do.
pub fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
