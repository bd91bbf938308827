//! The audit log of full-fidelity reads: who read which run from the raw tier, and when.
//!
//! One JSON object per line in `<data>/audit/raw_reads.jsonl` (mode 0600 in a 0700
//! directory), appended and synced *before* the data is served: a read that could not be
//! recorded is refused, so the log never misses one.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Role;

/// One audited read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, RFC 3339.
    pub at: String,
    /// The token's name.
    pub who: String,
    /// The token's role.
    pub role: Role,
    /// What was done: `read_run`.
    pub action: String,
    /// The tier read.
    pub tier: String,
    /// The run read.
    pub run_id: String,
}

/// The append-only log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl AuditLog {
    /// The log of the data directory `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("audit").join("raw_reads.jsonl"),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry and syncs it to disk.
    pub fn append(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path)?;
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()
    }

    /// The last `limit` entries, oldest first.
    pub fn tail(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries = std::collections::VecDeque::with_capacity(limit.min(4096));
        for line in BufReader::new(file).lines() {
            let line = line?;
            // A line torn by a crash mid-append is skipped, not fatal.
            if let Ok(entry) = serde_json::from_str::<AuditEntry>(&line) {
                if entries.len() == limit {
                    entries.pop_front();
                }
                entries.push_back(entry);
            }
        }
        Ok(entries.into())
    }
}
