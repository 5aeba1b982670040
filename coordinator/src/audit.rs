//! The audit log: every operator call, who made it, what it was, when and
//! how it ended, as one JSON line, appended and flushed before the call
//! returns. Secrets never appear in it: only the caller's identity.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pocket_proto::now_unix_ms;
use pocket_transport::Identity;

#[derive(Clone)]
pub struct AuditLog {
    file: Arc<Mutex<std::fs::File>>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog { file: Arc::new(Mutex::new(file)) })
    }

    /// Appends one record and syncs it. If that fails the caller must not
    /// report success: an operator call that cannot be audited fails.
    pub fn record(&self, who: &Identity, action: &str, outcome: Result<(), &tonic::Status>) -> std::io::Result<()> {
        let line = serde_json::json!({
            "unix_ms": now_unix_ms(),
            "who": who.to_string(),
            "action": action,
            "outcome": match outcome { Ok(()) => "ok".to_string(), Err(status) => format!("{:?}: {}", status.code(), status.message()) },
        });
        let mut file = self.file.lock().expect("audit log lock poisoned");
        writeln!(file, "{line}").and_then(|()| file.sync_data()).inspect_err(|e| {
            tracing::error!(error = %e, "could not write the audit log");
        })
    }
}
