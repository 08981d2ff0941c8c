//! Store outages: whether the store and the data dir can be written now, and how long a chain
//! whose state cannot be written waits before it is restarted.
//!
//! A chain that crashes while the disk is full (or the store is read-only, or PostgreSQL is
//! down) did nothing wrong: restarting it at once only burns its restart intensity, and ending it
//! cannot be recorded either. The Operator asks [`probe`] why a chain went down; while the answer
//! is an outage it restarts the chain after [`delay`], without counting the restart against the
//! chain's intensity.

use std::path::Path;
use std::time::Duration;

use crate::store::Store;

/// The longest wait between two restarts of a chain during an outage.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The wait before the `n`-th restart (0-based) of a chain in an outage: 1 s, 2 s, 4 s, … then
/// every [`MAX_DELAY`].
pub fn delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(MAX_DELAY)
}

/// The name of the probe file in the data dir.
const PROBE_FILE: &str = ".write-probe";

/// Writes a small durable record to the store and a file of a few KiB to the data dir (synced,
/// then removed): `Err` says which of the two cannot be written and why.
pub async fn probe(store: &dyn Store, data_dir: &Path) -> Result<(), String> {
    let now = crate::model::now_rfc3339();
    store
        .set_flag("write-probe", Some(&now))
        .await
        .map_err(|e| format!("the store cannot be written: {e}"))?;
    let path = data_dir.join(PROBE_FILE);
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)?;
        let r = f.write_all(&[0u8; 8192]).and_then(|()| f.sync_all());
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| format!("the data dir could not be probed: {e}"))?;
    written.map_err(|e| format!("the data dir {} cannot be written: {e}", data_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (0..9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[tokio::test]
    async fn a_data_dir_that_cannot_be_written_is_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path(), None, None).await.unwrap();
        assert_eq!(probe(&*store, dir.path()).await, Ok(()));
        assert!(
            !dir.path().join(PROBE_FILE).exists(),
            "the probe file is removed"
        );
        let missing = dir.path().join("gone");
        let err = probe(&*store, &missing).await.unwrap_err();
        assert!(
            err.contains("the data dir") && err.contains("gone"),
            "{err}"
        );
    }
}
