//! This machine's and this process's names, as the fleet's leases, heartbeats and run owners
//! record them.

/// This machine's name (read once).
pub fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into())
    })
}

/// This process's worker id: `<host>:<pid>`, unique in a fleet.
pub fn worker_id() -> String {
    format!("{}:{}", hostname(), std::process::id())
}
