//! Crash injection for the recovery tests.
//!
//! `RUNLEDGER_FAILPOINT=<name>` makes the process abort (no unwinding, no flush: as close to
//! a power cut as a test can get) the first time it reaches the named point. Points:
//! `flush.before_commit`, `flush.after_commit` (between the lake commit and the release of
//! the WAL segment), `flush.between_tiers` (in the collector); `lake.delete.before_purge`
//! (a DELETE committed, its files not yet removed from disk) and `lake.compact.after_commit`
//! (compaction committed, not yet vacuumed).

use std::sync::OnceLock;

/// Aborts the process if `name` is the configured failpoint.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("RUNLEDGER_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
