//! A real `redis-server` on a free loopback port, in a temporary directory,
//! with persistence off. Dropping the handle kills it. Tests stop and
//! restart it on the same port to check how the gateway rides out an
//! outage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The `redis-server` on PATH; panics with how to get one.
pub(crate) fn binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("redis-server not found: install it with apt-get install -y redis-server (scripts/test.sh does)")
    })
}

impl RedisServer {
    /// Start on a free loopback port and wait until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut server = RedisServer {
            port: crate::free_port(),
            child: None,
            dir,
        };
        server.restart();
        server
    }

    /// Start (again) on the same port. Data is not kept across a restart.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.spawn();
            self.child = Some(child);
            if self.wait_ping(Duration::from_secs(5)) {
                return;
            }
            // The port may still be held by the previous process: try again.
            self.stop();
            if Instant::now() > deadline {
                panic!("redis-server did not answer PING on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("redis log file");
        Command::new(binary())
            .args(["--save", "", "--appendonly", "no", "--port"])
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start redis-server")
    }

    /// Kill the server; the port refuses connections until [`restart`].
    ///
    /// [`restart`]: RedisServer::restart
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Send one inline command and return the raw reply (for PING, FLUSHALL,
    /// DBSIZE and the like).
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn wait_ping(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
