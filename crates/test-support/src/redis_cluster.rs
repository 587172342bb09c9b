//! A real Redis Cluster on loopback: `redis-server` processes in cluster
//! mode, with persistence off, formed by hand (slots split evenly over the
//! masters with CLUSTER ADDSLOTS, nodes introduced with CLUSTER MEET,
//! replicas attached with CLUSTER REPLICATE) and ready once every node
//! reports `cluster_state:ok`. Optionally with replicas and a password.
//! Dropping the handle kills every node.
//!
//! The node timeout is 2 s (Redis's default is 15 s): a dead master is
//! declared failed, and a replica promoted, within seconds.
//!
//! A node can be killed and started again on the same port: it reads its
//! `nodes-<port>.conf` back and rejoins with the same id and slots (its data
//! is gone, as after a crash without persistence).
//!
//! Needs only `redis-server` (no `redis-cli`); any version with cluster
//! support (3.0+) will do.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Redis Cluster's hash slots.
pub const SLOTS: u16 = 16384;

pub struct RedisCluster {
    nodes: Vec<Node>,
    masters: usize,
    password: Option<String>,
    node_timeout: Duration,
    dir: tempfile::TempDir,
}

/// The shape of a cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub masters: usize,
    /// Replicas per master. A replica takes over when its master has been
    /// unreachable for the node timeout (2 s).
    pub replicas: usize,
    /// `requirepass` (and `masterauth`) on every node.
    pub password: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas: 0,
            password: None,
        }
    }
}

struct Node {
    port: u16,
    child: Option<Child>,
}

/// One RESP reply, as far as the tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply (empty otherwise).
    pub fn text(&self) -> &str {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) | Reply::Error(s) => s,
            _ => "",
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            _ => &[],
        }
    }
}

/// A loopback port whose cluster bus port (port + 10000, as every Redis
/// version computes it) is free as well.
fn cluster_port() -> u16 {
    loop {
        let port = crate::free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// `masters` masters and no replicas, slots split evenly.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with(ClusterOptions {
            masters,
            ..ClusterOptions::default()
        })
    }

    /// Nodes `0..masters` are the masters; replicas follow, replica `r`
    /// (counting from 0) serving master `r % masters`.
    pub fn start_with(options: ClusterOptions) -> RedisCluster {
        assert!(options.masters >= 1, "a cluster needs a master");
        let dir = tempfile::tempdir().expect("tempdir for the redis cluster");
        let count = options.masters * (1 + options.replicas);
        let mut cluster = RedisCluster {
            nodes: (0..count)
                .map(|_| Node {
                    port: cluster_port(),
                    child: None,
                })
                .collect(),
            masters: options.masters,
            password: options.password,
            node_timeout: Duration::from_secs(2),
            dir,
        };
        for i in 0..count {
            cluster.spawn(i);
        }
        for i in 0..count {
            cluster.wait_ping(i);
        }
        cluster.form(options.replicas);
        cluster
    }

    fn form(&self, replicas: usize) {
        let per_master = SLOTS as usize / self.masters;
        for m in 0..self.masters {
            let first = m * per_master;
            let last = if m + 1 == self.masters {
                SLOTS as usize
            } else {
                first + per_master
            };
            let slots: Vec<String> = (first..last).map(|s| s.to_string()).collect();
            let mut args = vec!["CLUSTER", "ADDSLOTS"];
            args.extend(slots.iter().map(String::as_str));
            self.expect_ok(m, &args);
        }
        for i in 0..self.nodes.len() {
            // Distinct epochs up front, as redis-cli does, so the nodes need
            // not settle collisions among themselves.
            self.expect_ok(i, &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]);
        }
        let first = self.nodes[0].port.to_string();
        for i in 1..self.nodes.len() {
            self.expect_ok(i, &["CLUSTER", "MEET", "127.0.0.1", &first]);
        }
        self.wait(
            Duration::from_secs(20),
            "every node to know every other",
            |c| {
                (0..c.nodes.len()).all(|i| {
                    c.command(i, &["CLUSTER", "NODES"])
                        .is_ok_and(|r| r.text().lines().count() == c.nodes.len())
                })
            },
        );
        for r in 0..self.masters * replicas {
            let master = r % self.masters;
            let id = self.node_id(master);
            self.expect_ok(self.masters + r, &["CLUSTER", "REPLICATE", &id]);
        }
        self.wait_ok();
        if replicas > 0 {
            self.wait(Duration::from_secs(20), "replicas to be in sync", |c| {
                (c.masters..c.nodes.len()).all(|i| {
                    c.command(i, &["INFO", "replication"])
                        .is_ok_and(|r| r.text().contains("master_link_status:up"))
                })
            });
        }
    }

    fn spawn(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("redis-{port}.log")))
            .expect("redis log file");
        let mut command = Command::new(crate::redis::binary());
        if let Some(password) = &self.password {
            command
                .args(["--requirepass", password])
                .args(["--masterauth", password]);
        }
        let child = command
            .args(["--save", "", "--appendonly", "no", "--port"])
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.path().join(format!("nodes-{port}.conf")))
            .arg("--cluster-node-timeout")
            .arg(self.node_timeout.as_millis().to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.nodes[i].child = Some(child);
    }

    fn wait_ping(&self, i: usize) {
        let port = self.nodes[i].port;
        self.wait(Duration::from_secs(10), &format!("PING on {port}"), |c| {
            c.command(i, &["PING"]).is_ok_and(|r| r.text() == "PONG")
        });
    }

    fn expect_ok(&self, i: usize, args: &[&str]) {
        let reply = self.command(i, args).expect("redis command");
        assert_eq!(
            reply,
            Reply::Status("OK".into()),
            "{} {:?}",
            self.nodes[i].port,
            &args[..args.len().min(3)]
        );
    }

    /// Poll `ready` every 50 ms until it holds; panic after `within`.
    fn wait(&self, within: Duration, what: &str, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "redis cluster: no {what} within {within:?} (logs in {})",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until every running node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        self.wait(Duration::from_secs(30), "cluster_state:ok", |c| {
            (0..c.nodes.len())
                .filter(|i| c.nodes[*i].child.is_some())
                .all(|i| {
                    c.command(i, &["CLUSTER", "INFO"])
                        .is_ok_and(|r| r.text().contains("cluster_state:ok"))
                })
        });
    }

    /// `host:port` of every node, as `redis_cluster_nodes` takes them.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Send one command to node `i` and read its reply.
    pub fn command(&self, i: usize, args: &[&str]) -> std::io::Result<Reply> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.nodes[i].port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        if let Some(password) = &self.password {
            stream.write_all(&encode(&["AUTH", password]))?;
            let reply = read_reply(&mut reader)?;
            if reply != Reply::Status("OK".into()) {
                return Err(std::io::Error::other(format!("AUTH: {reply:?}")));
            }
        }
        stream.write_all(&encode(args))?;
        read_reply(&mut reader)
    }

    /// Wait until every replica has everything its master has written, so
    /// that killing a master loses nothing.
    pub fn wait_replicated(&self) {
        // (role, replication offset, master's port for a replica)
        let state = |i: usize| -> Option<(String, u64, Option<u16>)> {
            let info = self.command(i, &["INFO", "replication"]).ok()?;
            let field = |name: &str| {
                info.text()
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let master_port = field("master_port:").and_then(|p| p.parse().ok());
            Some((
                field("role:")?,
                field("master_repl_offset:")?.parse().ok()?,
                master_port,
            ))
        };
        self.wait(Duration::from_secs(20), "replicas to catch up", |c| {
            let states: Vec<_> = (0..c.nodes.len())
                .filter(|i| c.nodes[*i].child.is_some())
                .map(|i| (c.nodes[i].port, state(i)))
                .collect();
            let offset_of = |port: u16| {
                states
                    .iter()
                    .find(|(p, _)| *p == port)
                    .and_then(|(_, s)| s.as_ref().map(|s| s.1))
            };
            states.iter().all(|(_, s)| match s {
                None => false,
                Some((role, offset, master)) if role == "slave" => {
                    master.and_then(offset_of) == Some(*offset)
                }
                Some(_) => true,
            })
        });
    }

    /// The node's id in the cluster.
    pub fn node_id(&self, i: usize) -> String {
        let reply = self.command(i, &["CLUSTER", "MYID"]).expect("CLUSTER MYID");
        reply.text().to_string()
    }

    /// The hash slot of `key`, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self
            .command(self.any_running(), &["CLUSTER", "KEYSLOT", key])
            .expect("CLUSTER KEYSLOT");
        reply.int().expect("an integer slot") as u16
    }

    /// Index of the node serving `slot` as master right now, as the
    /// cluster's map (CLUSTER SLOTS) says.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        let reply = self
            .command(self.any_running(), &["CLUSTER", "SLOTS"])
            .expect("CLUSTER SLOTS");
        for range in reply.items() {
            let [start, end, master, ..] = range.items() else {
                continue;
            };
            let (start, end) = (start.int().unwrap_or(-1), end.int().unwrap_or(-1));
            if (start..=end).contains(&i64::from(slot)) {
                let port = master.items().get(1).and_then(Reply::int).unwrap_or(0);
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == port)
                    .expect("the slot's master is one of ours");
            }
        }
        panic!("slot {slot} is not served");
    }

    /// The keys node `i` holds that match `pattern` (KEYS, fine for tests).
    pub fn keys(&self, i: usize, pattern: &str) -> Vec<String> {
        let reply = self.command(i, &["KEYS", pattern]).expect("KEYS");
        let mut keys: Vec<String> = reply.items().iter().map(|k| k.text().into()).collect();
        keys.sort();
        keys
    }

    fn any_running(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("a running node")
    }

    /// Kill node `i` (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `i` again on its port with its cluster config, and wait
    /// until the cluster is whole again.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn(i);
            let up = Instant::now() + Duration::from_secs(5);
            while Instant::now() < up {
                if self.command(i, &["PING"]).is_ok_and(|r| r.text() == "PONG") {
                    self.wait_ok();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The port may still be held by the old process: try again.
            self.kill(i);
            assert!(
                Instant::now() < deadline,
                "redis node {} did not come back",
                self.nodes[i].port
            );
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty line"))?;
    let number = || rest.parse::<i64>().map_err(|_| bad("not a number"));
    Ok(match kind {
        "+" => Reply::Status(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(number()?),
        "$" => match number()? {
            n if n < 0 => Reply::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        "*" => match number()? {
            n if n < 0 => Reply::Array(None),
            n => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad("unknown reply type")),
    })
}
