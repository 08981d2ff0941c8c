//! The data folder's layout, spelled in one place: the store, the pid file, the API token and address,
//! the operator's log, and each chain's folder (handoffs, transcripts, its log).

use std::path::{Path, PathBuf};

/// A data folder (`data_dir`, `.operator` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self(path.as_ref().to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The SQLite store.
    pub fn db(&self) -> PathBuf {
        self.0.join("operator.db")
    }

    /// The running operator's pid (the single-instance file).
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("operator.pid")
    }

    /// Held locked (an OS file lock) by the one operator that runs on this data dir.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("operator.lock")
    }

    /// The API's bearer token.
    pub fn token_file(&self) -> PathBuf {
        self.0.join("api-token")
    }

    /// Where a running operator's API listens (`http://127.0.0.1:3100`), while it runs.
    pub fn api_addr_file(&self) -> PathBuf {
        self.0.join("api.addr")
    }

    /// The URL of the API of the operator running on this data dir (`api.addr`), when one
    /// serves it.
    pub fn api_url(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.api_addr_file()).ok()?;
        let url = text.trim();
        url.starts_with("http").then(|| url.to_string())
    }

    /// The operator-wide events, as log lines.
    pub fn operator_log(&self) -> PathBuf {
        self.0.join("operator.log")
    }

    /// What a run started by `operator run --tui` prints (its log lines and its summary).
    pub fn run_log(&self) -> PathBuf {
        self.0.join("run.log")
    }

    /// A chain's folder.
    pub fn chain(&self, id: &str) -> PathBuf {
        self.0.join("chains").join(id)
    }

    /// A chain's events, as log lines.
    pub fn chain_log(&self, id: &str) -> PathBuf {
        self.chain(id).join("chain.log")
    }

    /// A session's transcript (every line of the agent's stream, secrets masked).
    pub fn transcript(&self, id: &str, index: u32) -> PathBuf {
        self.chain(id).join(format!("session-{index}.jsonl"))
    }

    /// A session's handoff as written to disk.
    pub fn handoff(&self, id: &str, index: u32) -> PathBuf {
        self.chain(id).join(format!("handoff-{index}.md"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout() {
        let d = DataDir::new("/d");
        assert_eq!(d.db(), Path::new("/d/operator.db"));
        assert_eq!(d.pid_file(), Path::new("/d/operator.pid"));
        assert_eq!(d.token_file(), Path::new("/d/api-token"));
        assert_eq!(d.api_addr_file(), Path::new("/d/api.addr"));
        assert_eq!(
            d.transcript("c-1", 3),
            Path::new("/d/chains/c-1/session-3.jsonl")
        );
        assert_eq!(d.handoff("c-1", 3), Path::new("/d/chains/c-1/handoff-3.md"));
        assert_eq!(d.chain_log("c-1"), Path::new("/d/chains/c-1/chain.log"));
        assert_eq!(d.operator_log(), Path::new("/d/operator.log"));
    }
}
