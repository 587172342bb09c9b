//! http-logger's transport: a batch is POSTed as a JSON array (one object
//! when `batch_max_size` is 1, as APISIX does), or as JSON lines with
//! `concat_method: new_line`. Plain `http://` endpoints only for now.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::batch::{self, BatchOptions, Transport};
use super::RecordSink;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concat {
    Json,
    NewLine,
}

#[derive(Clone)]
pub struct HttpTarget {
    pub uri: Uri,
    /// The `Authorization` header sent to the collector, if any.
    pub auth_header: Option<HeaderValue>,
    pub timeout: Duration,
    pub concat: Concat,
}

impl std::fmt::Debug for HttpTarget {
    // The collector's credential never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("uri", &self.uri)
            .field(
                "auth_header",
                &self.auth_header.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl HttpTarget {
    /// Check a collector URI: `http://host[:port]/path`.
    pub fn parse_uri(s: &str) -> Result<Uri, String> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid uri: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err("https collectors are not supported yet; use http".into()),
            _ => return Err("must start with http://".into()),
        }
        if uri.host().is_none() {
            return Err("has no host".into());
        }
        Ok(uri)
    }
}

pub fn spawn(name: String, target: HttpTarget, opts: BatchOptions) -> std::io::Result<RecordSink> {
    let single = opts.batch_max_size == 1;
    batch::spawn(name, opts, move || HttpTransport { target, single })
}

struct HttpTransport {
    target: HttpTarget,
    single: bool,
}

impl HttpTransport {
    fn body(&self, batch: &[Bytes]) -> Bytes {
        let trim = |b: &Bytes| {
            let mut b = b.clone();
            while b.last() == Some(&b'\n') {
                b.truncate(b.len() - 1);
            }
            b
        };
        if self.single && batch.len() == 1 && self.target.concat == Concat::Json {
            return trim(&batch[0]);
        }
        let total: usize = batch.iter().map(|b| b.len() + 1).sum();
        let mut out = Vec::with_capacity(total + 2);
        match self.target.concat {
            Concat::Json => {
                out.push(b'[');
                for (i, b) in batch.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&trim(b));
                }
                out.push(b']');
            }
            Concat::NewLine => {
                for b in batch {
                    out.extend_from_slice(&trim(b));
                    out.push(b'\n');
                }
            }
        }
        Bytes::from(out)
    }

    async fn post(&self, body: Bytes) -> Result<(), String> {
        let uri = &self.target.uri;
        let host = uri.host().unwrap_or("localhost");
        let port = uri.port_u16().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                uri.authority().map_or(host, |a| a.as_str()),
            )
            .header(
                http::header::CONTENT_TYPE,
                match self.target.concat {
                    Concat::Json => "application/json",
                    Concat::NewLine => "text/plain",
                },
            )
            .header(http::header::USER_AGENT, "portcullis-http-logger");
        if let Some(auth) = &self.target.auth_header {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}

impl Transport for HttpTransport {
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
        let body = self.body(batch);
        match tokio::time::timeout(self.target.timeout, self.post(body)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(single: bool, concat: Concat) -> HttpTransport {
        HttpTransport {
            target: HttpTarget {
                uri: "http://127.0.0.1:1/".parse().unwrap(),
                auth_header: None,
                timeout: Duration::from_secs(1),
                concat,
            },
            single,
        }
    }

    #[test]
    fn bodies_are_arrays_single_objects_or_lines() {
        let batch = [Bytes::from("{\"a\":1}\n"), Bytes::from("{\"a\":2}\n")];
        assert_eq!(
            transport(false, Concat::Json).body(&batch),
            "[{\"a\":1},{\"a\":2}]"
        );
        assert_eq!(transport(true, Concat::Json).body(&batch[..1]), "{\"a\":1}");
        assert_eq!(
            transport(false, Concat::NewLine).body(&batch),
            "{\"a\":1}\n{\"a\":2}\n"
        );
    }

    #[test]
    fn only_http_uris_are_accepted() {
        assert!(HttpTarget::parse_uri("http://127.0.0.1:9000/logs").is_ok());
        assert!(HttpTarget::parse_uri("https://siem.example/logs").is_err());
        assert!(HttpTarget::parse_uri("ftp://x/").is_err());
    }
}
