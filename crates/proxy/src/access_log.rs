//! The node's own record sink (`gateway.access_log`): one decision record
//! (docs/decision-record.md) per request as a JSON line, to stdout or a
//! file (reopened on SIGUSR1). Writing happens on the sink's thread: the
//! request task only queues the encoded line, and a full queue drops it and
//! counts it in `portcullis_sink_records{sink="access_log",result="dropped"}`.

use bytes::Bytes;
use portcullis_telemetry::RecordSink;

pub struct AccessLog {
    sink: Option<RecordSink>,
}

impl AccessLog {
    /// Set the node's telemetry settings (redaction, queue bounds), then
    /// open `settings.access_log`. Call once at start-up, before anything
    /// else uses telemetry.
    pub fn for_node(settings: &portcullis_config::GatewaySettings) -> std::io::Result<AccessLog> {
        portcullis_telemetry::init(&settings.telemetry);
        Self::open(&settings.access_log)
    }

    /// `stdout`, `off`, or a file path (appended to).
    pub fn open(target: &str) -> std::io::Result<AccessLog> {
        let queue = portcullis_telemetry::global().sink_queue();
        let sink = match target {
            "off" | "" => None,
            "stdout" => Some(portcullis_telemetry::sink::line::stdout(
                "access_log",
                queue,
            )?),
            path => Some(portcullis_telemetry::sink::line::file(
                "access_log",
                path,
                queue,
            )?),
        };
        Ok(AccessLog { sink })
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn sink(&self) -> Option<&RecordSink> {
        self.sink.as_ref()
    }

    /// Queue one already encoded line.
    pub fn write(&self, line: String) {
        if let Some(sink) = &self.sink {
            sink.send(&Bytes::from(line));
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.as_ref().map_or(0, RecordSink::dropped)
    }
}
