//! Load client for bench/tls_handshakes.sh: keeps `--connections` TLS
//! connections going, each one a full handshake and a single request:
//!
//! TCP connect, TLS 1.3 handshake (no resumption: every handshake is full;
//! X25519; TLS_AES_128_GCM_SHA256 only, so every server negotiates the same
//! suite), optionally presenting a client certificate, `GET <path>` with
//! `Connection: close`, read the whole answer, close. Then again, until
//! `--duration` is over.
//!
//! Prints one line of `key=value` pairs: connections completed per second,
//! errors, non-200 answers, and the median and p99 of the handshake time
//! (connect to handshake done) and of the whole connection.
//!
//! ```sh
//! cargo run --release -p portcullis-test-support --example handshake_load -- \
//!     --addr 127.0.0.1:8443 --server-name bench.local --ca ca.pem \
//!     --cert client.pem --key client.key --connections 50 --duration 10
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Args {
    addr: String,
    server_name: String,
    ca: String,
    cert: Option<String>,
    key: Option<String>,
    connections: usize,
    duration: Duration,
    path: String,
}

const USAGE: &str = "usage: handshake_load --addr HOST:PORT --server-name NAME --ca CA.pem \
[--cert CLIENT.pem --key CLIENT.key] [--connections 50] [--duration 10] [--path /]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        server_name: String::new(),
        ca: String::new(),
        cert: None,
        key: None,
        connections: 50,
        duration: Duration::from_secs(10),
        path: "/".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--server-name" => args.server_name = value()?,
            "--ca" => args.ca = value()?,
            "--cert" => args.cert = Some(value()?),
            "--key" => args.key = Some(value()?),
            "--connections" => {
                args.connections = value()?
                    .parse()
                    .map_err(|_| "--connections: not a number")?
            }
            "--duration" => {
                let s: f64 = value()?.parse().map_err(|_| "--duration: not a number")?;
                args.duration = Duration::from_secs_f64(s);
            }
            "--path" => args.path = value()?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.addr.is_empty() || args.server_name.is_empty() || args.ca.is_empty() {
        return Err(USAGE.into());
    }
    if args.cert.is_some() != args.key.is_some() {
        return Err("--cert and --key go together".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(args)
}

fn client_config(args: &Args) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem(&args.ca)?) {
        let cert = cert.map_err(|e| format!("{}: {e}", args.ca))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", args.ca))?;
    }
    // One suite and one group, so that every server under test does the
    // same work for the key exchange and the record layer.
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![provider::kx_group::X25519],
        ..provider::default_provider()
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&pem(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{cert}: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(&pem(key)?).map_err(|e| format!("{key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    // Every connection pays for a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What one connection measured.
struct Sample {
    handshake: Duration,
    total: Duration,
    status_ok: bool,
}

/// What the first handshake negotiated, to print once.
struct Negotiated(String);

async fn one_connection(
    args: &Args,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    request: &[u8],
) -> Result<(Sample, Negotiated), String> {
    let started = Instant::now();
    let tcp = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let handshake = started.elapsed();
    let negotiated = {
        let (_, conn) = tls.get_ref();
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        Negotiated(format!(
            "version={} suite={} group={}",
            or_none(conn.protocol_version().map(|v| format!("{v:?}"))),
            or_none(
                conn.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            or_none(
                conn.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
        ))
    };
    tls.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(2048);
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        // A server that closes without close_notify after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let status_ok = answer.starts_with(b"HTTP/1.1 200 ");
    Ok((
        Sample {
            handshake,
            total: started.elapsed(),
            status_ok,
        },
        negotiated,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let config = client_config(&args).unwrap_or_else(|e| {
        eprintln!("handshake_load: {e}");
        std::process::exit(2);
    });
    // The client is pinned to one CPU by the script: one thread is enough.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(Arc::new(args), config));
}

async fn run(args: Arc<Args>, config: Arc<rustls::ClientConfig>) {
    let connector = TlsConnector::from(config);
    let name = ServerName::try_from(args.server_name.clone()).unwrap_or_else(|e| {
        eprintln!("handshake_load: --server-name: {e}");
        std::process::exit(2);
    });
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.server_name
    )
    .into_bytes()
    .into();
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let (args, connector, name, request) = (
                args.clone(),
                connector.clone(),
                name.clone(),
                request.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                let mut negotiated = None;
                while Instant::now() < deadline {
                    match one_connection(&args, &connector, &name, &request).await {
                        Ok((sample, n)) => {
                            samples.push(sample);
                            negotiated.get_or_insert(n.0);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            // Do not spin on a refusing server.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (samples, errors, first_error, negotiated)
            })
        })
        .collect();
    let (mut handshakes, mut totals) = (Vec::new(), Vec::new());
    let (mut errors, mut not_ok) = (0u64, 0u64);
    let (mut first_error, mut negotiated) = (None, None);
    for t in tasks {
        let (samples, e, fe, n) = t.await.expect("connection task");
        errors += e;
        first_error = first_error.or(fe);
        negotiated = negotiated.or(n);
        for s in samples {
            handshakes.push(s.handshake);
            totals.push(s.total);
            not_ok += u64::from(!s.status_ok);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    handshakes.sort_unstable();
    totals.sort_unstable();
    if let Some(e) = &first_error {
        eprintln!("handshake_load: {errors} errors; first: {e}");
    }
    println!(
        "completed={} errors={errors} non200={not_ok} seconds={seconds:.3} per_second={:.1} \
handshake_p50_ms={:.3} handshake_p99_ms={:.3} total_p50_ms={:.3} total_p99_ms={:.3} {}",
        totals.len(),
        totals.len() as f64 / seconds,
        percentile(&handshakes, 0.50),
        percentile(&handshakes, 0.99),
        percentile(&totals, 0.50),
        percentile(&totals, 0.99),
        negotiated.unwrap_or_else(|| "version=none".into()),
    );
}
