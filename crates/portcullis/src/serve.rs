//! `portcullis serve`: load the config, start the data plane workers, the
//! operations listener and the config source, and stop cleanly on SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_config::file::ConfigFile;
use portcullis_config::{ConfigSource, Live};
use portcullis_core::ConfigError;
use portcullis_proxy::access_log::AccessLog;
use portcullis_proxy::{spawn_workers, DataPlane, Shutdown};

/// Read and validate a config file as `serve` would; the summary names what
/// it holds.
pub fn load_and_check(path: &Path) -> Result<String, Vec<ConfigError>> {
    let file = portcullis_config::file::read(path)?;
    let live = Live::default();
    let n = file.resources.len();
    live.check(file.resources)?;
    Ok(format!("{n} resources"))
}

pub fn source_of(file: &ConfigFile) -> ConfigSource {
    file.gateway
        .config_source
        .unwrap_or(if file.has_resource_sections {
            ConfigSource::File
        } else {
            ConfigSource::Store
        })
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .try_init();
}

pub fn init_logging_for_demo() {
    init_logging("warn");
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    let file = read_file(path)?;
    init_logging(&file.gateway.log_level);
    run_loaded(file, Some(path.to_path_buf()))
}

pub fn run_loaded(file: ConfigFile, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let source = source_of(&file);
    let live = Live::new();
    let mut store = None;
    let mut etcd = None;
    match source {
        ConfigSource::File => {
            live.apply(file.resources.clone()).map_err(|errors| {
                anyhow::anyhow!(
                    "invalid resources:\n  {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )
            })?;
        }
        ConfigSource::Store => {
            let opened = Arc::new(open_store(&file.gateway.data_dir)?);
            let raw = opened.load_raw().context("cannot read the store")?;
            if let Err(errors) = live.apply(raw) {
                // Something stored is no longer valid (an upgrade changed a
                // rule): serve nothing rather than half a config, and say so.
                tracing::error!(errors = ?errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(), "stored config refused");
            }
            store = Some(opened);
        }
        ConfigSource::Etcd => {
            // The last good config from etcd is kept here for a start
            // while etcd is away (docs/etcd.md).
            let cache = portcullis_etcd::cache::path_in(&file.gateway.data_dir);
            etcd = Some(
                portcullis_etcd::shared(&file.gateway.etcd, Some(cache))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
    }

    let settings = file.gateway.clone();
    let workers = if settings.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        settings.workers
    };
    let access_log = AccessLog::for_node(&settings)
        .with_context(|| format!("cannot open access log {}", settings.access_log))?;
    start_audit(&settings, store.as_ref());
    let dp = Arc::new(DataPlane {
        live: live.clone(),
        settings: settings.clone(),
        access_log,
    });
    // The etcd client lives on the control runtime: make that first, so
    // the config is loaded before the data plane starts.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    let etcd_started = etcd.as_ref().map(|e| control.block_on(e.start(&live)));
    let shutdown = Shutdown::default();
    let handles = spawn_workers(dp, workers, shutdown.clone())?;
    tracing::info!(listen = ?settings.listen, workers, source = ?source, "portcullis serving");

    control.block_on(async {
        let ops = tokio::net::TcpListener::bind(settings.metrics.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.metrics.listen))?;
        tokio::spawn(portcullis_proxy::ops::serve(ops, live.clone()));
        tokio::spawn(portcullis_proxy::health::run(live.clone()));
        let admin_listener = tokio::net::TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.admin.listen))?;
        if settings.admin.keys.is_empty() {
            tracing::warn!("no admin keys configured: every Admin API request will be refused");
        }
        let admin = Arc::new(match &etcd {
            Some(etcd) => portcullis_admin::Admin::with_etcd(live.clone(), etcd.clone(), &settings),
            None => {
                portcullis_admin::Admin::new(live.clone(), store.clone(), &settings, path.clone())
            }
        });
        if let (Some(etcd), Some(started)) = (&etcd, etcd_started.clone()) {
            tokio::spawn(etcd.clone().run(live.clone(), started));
        }
        tokio::spawn(portcullis_admin::serve(admin_listener, admin.clone()));
        portcullis_admin::start_expiry(admin);
        if let (ConfigSource::File, Some(path)) = (source, path.as_ref()) {
            tokio::spawn(crate::watch::watch_file(path.clone(), live.clone()));
        }
        wait_for_signals(path.as_deref(), source, &live).await;
        anyhow::Ok(())
    })?;

    tracing::info!("draining");
    shutdown.trigger();
    for h in handles {
        let _ = h.join();
    }
    // Spans of the last requests are still queued for the collector.
    portcullis_telemetry::trace::flush(std::time::Duration::from_secs(5));
    // The access log and file-logger writers gather a burst for LINGER
    // before writing: give the last one time to reach its file.
    std::thread::sleep(portcullis_telemetry::sink::line::LINGER * 3);
    tracing::info!("stopped");
    Ok(())
}

/// The audit store, quarantines and detectors (docs/audit.md). A node whose
/// audit file cannot be opened still serves, and says so.
fn start_audit(
    settings: &portcullis_config::GatewaySettings,
    store: Option<&Arc<portcullis_store::Store>>,
) {
    if !settings.audit.enabled {
        return;
    }
    match portcullis_audit::start(&settings.data_dir, &settings.audit, &settings.anomaly) {
        Ok(audit) => {
            if let Some(store) = store.cloned() {
                audit.set_change_recorder(move |n| {
                    let meta = portcullis_store::ChangeMeta::new(&n.actor, &n.client, n.method);
                    if let Err(e) = store.record_change(
                        n.kind,
                        &n.id,
                        n.before.as_ref(),
                        n.after.as_ref(),
                        &meta,
                    ) {
                        tracing::error!(error = %e, "cannot record a quarantine change");
                    }
                });
            }
        }
        Err(e) => tracing::error!(error = %e, "audit store disabled"),
    }
}

pub fn open_store(data_dir: &Path) -> anyhow::Result<portcullis_store::Store> {
    portcullis_store::Store::open(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))
}

/// SIGHUP reloads the file; SIGTERM and SIGINT return, to drain and exit.
async fn wait_for_signals(path: Option<&Path>, source: ConfigSource, live: &Arc<Live>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                if let (ConfigSource::File, Some(path)) = (source, path) {
                    crate::watch::reload(path, live);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn read_file(path: &Path) -> anyhow::Result<ConfigFile> {
    portcullis_config::file::read(path).map_err(|errors| {
        anyhow::anyhow!(
            "invalid config {}:\n  {}",
            path.display(),
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })
}

/// `portcullis export`: the store as a config file on stdout.
pub fn export(config: &Path) -> anyhow::Result<()> {
    let file = read_file(config)?;
    let store = open_store(&file.gateway.data_dir)?;
    let yaml = portcullis_admin::export_yaml(&store).context("cannot export the store")?;
    print!("{yaml}");
    Ok(())
}

/// `portcullis import`: validate the file's resources together with what
/// the store holds, then write them in one transaction.
pub fn import(resources: &Path, config: &Path) -> anyhow::Result<()> {
    let settings = read_file(config)?;
    let file = read_file(resources)?;
    let store = open_store(&settings.gateway.data_dir)?;
    let n = portcullis_admin::import(&store, file.resources)
        .map_err(|e| anyhow::anyhow!("import refused: {e}"))?;
    eprintln!(
        "imported {n} resources into {}",
        settings.gateway.data_dir.display()
    );
    Ok(())
}
