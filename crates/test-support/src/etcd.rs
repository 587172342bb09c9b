//! A real `etcd` (Debian's etcd-server) on free loopback ports, in a
//! temporary data directory. Dropping the handle kills it. Tests stop and
//! start it again on the same ports and data to check how gateways ride out
//! an outage.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "etcd not found: install it with apt-get install -y etcd-server (scripts/test.sh does)"
        )
    })
}

impl EtcdServer {
    /// Start on free loopback ports and wait until `/health` says so.
    pub fn start() -> EtcdServer {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let mut server = EtcdServer {
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            child: None,
            dir,
        };
        server.restart();
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Start (again) on the same ports and data directory: what was written
    /// before a [`stop`] is still there.
    ///
    /// [`stop`]: EtcdServer::stop
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.child = Some(self.spawn());
            if self.wait_healthy(Duration::from_secs(15)) {
                return;
            }
            // The ports may still be held by the previous process: try again.
            self.stop();
            if Instant::now() > deadline {
                panic!(
                    "etcd did not become healthy on port {}; its log:\n{}",
                    self.client_port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        Command::new(binary())
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .args(["--logger", "zap", "--log-level", "warn"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start etcd")
    }

    /// Kill the server; its ports refuse connections until [`restart`].
    ///
    /// [`restart`]: EtcdServer::restart
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// One request to etcd's JSON gateway (`/v3/kv/range` and the like) or
    /// `/health`; the answer's body as JSON.
    pub fn http(&self, method: &str, path: &str, body: &str) -> std::io::Result<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        let (_, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text}")))?;
        serde_json::from_str(body).map_err(|e| std::io::Error::other(format!("{e}: {body}")))
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        // `AA==` is the key "\0": a range over nothing, for the header.
        let v = self
            .http(
                "POST",
                "/v3/kv/range",
                r#"{"key":"AA==","count_only":true}"#,
            )
            .expect("etcd range");
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .or_else(|| v["header"]["revision"].as_i64())
            .expect("a revision in the header")
    }

    /// Compact the history up to `revision` (physically): a watch that
    /// starts at or before it is refused.
    pub fn compact(&self, revision: i64) {
        let v = self
            .http(
                "POST",
                "/v3/kv/compaction",
                &format!(r#"{{"revision":"{revision}","physical":true}}"#),
            )
            .expect("etcd compaction");
        assert!(v.get("error").is_none(), "compaction failed: {v}");
    }

    fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let healthy = self
                .http("GET", "/health", "")
                .is_ok_and(|v| v["health"] == "true");
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
