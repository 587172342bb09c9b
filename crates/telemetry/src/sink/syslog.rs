//! RFC 5424 syslog over UDP (one datagram per record) or TCP (octet
//! counting framing, RFC 6587 §3.4.1, on one kept-open connection that is
//! re-established after a failure). The MSG part is the JSON record.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::batch::{self, BatchOptions, Transport};
use super::RecordSink;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// RFC 5424 facility code (0-23); `local0` is 16.
    pub facility: u8,
    /// RFC 5424 severity code (0-7); `info` is 6.
    pub severity: u8,
    pub app_name: String,
    pub timeout: Duration,
}

pub fn facility_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

pub fn severity_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

pub fn spawn(
    name: String,
    target: SyslogTarget,
    opts: BatchOptions,
) -> std::io::Result<RecordSink> {
    batch::spawn(name, opts, move || SyslogTransport {
        hostname: hostname(),
        procid: std::process::id().to_string(),
        target,
        tcp: None,
        udp: None,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into())
}

struct SyslogTransport {
    target: SyslogTarget,
    hostname: String,
    procid: String,
    tcp: Option<tokio::net::TcpStream>,
    udp: Option<tokio::net::UdpSocket>,
}

/// One RFC 5424 message around an encoded record.
pub fn format_message(
    target: &SyslogTarget,
    hostname: &str,
    procid: &str,
    record: &[u8],
) -> Vec<u8> {
    let pri = u16::from(target.facility) * 8 + u16::from(target.severity);
    let mut head = String::with_capacity(96);
    let _ = write!(
        head,
        "<{pri}>1 {} {hostname} {} {procid} decision - ",
        crate::record::now_rfc3339(),
        if target.app_name.is_empty() {
            "-"
        } else {
            &target.app_name
        },
    );
    let mut record = record;
    while let [rest @ .., b'\n'] = record {
        record = rest;
    }
    let mut msg = Vec::with_capacity(head.len() + record.len());
    msg.extend_from_slice(head.as_bytes());
    msg.extend_from_slice(record);
    msg
}

impl SyslogTransport {
    async fn send_all(&mut self, batch: &[Bytes]) -> Result<(), String> {
        let addr = (self.target.host.as_str(), self.target.port);
        match self.target.protocol {
            Protocol::Udp => {
                if self.udp.is_none() {
                    let sock = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
                        .await
                        .map_err(|e| format!("bind: {e}"))?;
                    sock.connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    self.udp = Some(sock);
                }
                let sock = self.udp.as_ref().expect("just set");
                for rec in batch {
                    let msg = format_message(&self.target, &self.hostname, &self.procid, rec);
                    if let Err(e) = sock.send(&msg).await {
                        self.udp = None;
                        return Err(format!("send: {e}"));
                    }
                }
                Ok(())
            }
            Protocol::Tcp => {
                if self.tcp.is_none() {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let _ = s.set_nodelay(true);
                    self.tcp = Some(s);
                }
                let mut frames = Vec::new();
                for rec in batch {
                    let msg = format_message(&self.target, &self.hostname, &self.procid, rec);
                    frames.extend_from_slice(msg.len().to_string().as_bytes());
                    frames.push(b' ');
                    frames.extend_from_slice(&msg);
                }
                let stream = self.tcp.as_mut().expect("just set");
                if let Err(e) = stream.write_all(&frames).await {
                    self.tcp = None;
                    return Err(format!("write: {e}"));
                }
                Ok(())
            }
        }
    }
}

impl Transport for SyslogTransport {
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
        match tokio::time::timeout(self.target.timeout, self.send_all(batch)).await {
            Ok(r) => r,
            Err(_) => {
                self.tcp = None;
                Err("timed out".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_rfc5424() {
        let t = SyslogTarget {
            host: "127.0.0.1".into(),
            port: 514,
            protocol: Protocol::Udp,
            facility: facility_code("local0").unwrap(),
            severity: severity_code("info").unwrap(),
            app_name: "portcullis".into(),
            timeout: Duration::from_secs(1),
        };
        let msg = String::from_utf8(format_message(&t, "gw1", "42", b"{\"a\":1}\n")).unwrap();
        assert!(msg.starts_with("<134>1 "), "{msg}");
        let parts: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(parts[2], "gw1");
        assert_eq!(parts[3], "portcullis");
        assert_eq!(parts[4], "42");
        assert_eq!(parts[5], "decision");
        assert_eq!(parts[6], "-");
        assert_eq!(parts[7], "{\"a\":1}");
        assert!(parts[1].ends_with('Z'));
    }
}
