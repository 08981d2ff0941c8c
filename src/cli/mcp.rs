//! `operator mcp`: the MCP server on stdin/stdout, in front of the operator serving the data dir
//! (or `--url`); with none running, the read tools work on the data dir itself.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use super::args::McpArgs;
use super::{UsageError, api_token, exit, open_store};
use crate::config;
use crate::mcp::backend::{self, Backend};

pub(super) async fn mcp(m: &McpArgs, op: &config::OperatorSettings) -> Result<u8> {
    let token = api_token(op);
    let backend = match &m.url {
        Some(url) => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(UsageError(format!(
                    "--url {url}: expected http://host:port or https://…"
                ))
                .into());
            }
            Backend::Remote {
                url: url.clone(),
                token,
                client: backend::client(),
            }
        }
        None => {
            let op = op.clone();
            Backend::DataDir {
                data_dir: op.data_dir.clone(),
                token: token.clone(),
                client: backend::client(),
                local: Box::new(move || {
                    let op = op.clone();
                    let token = token.clone();
                    Box::pin(async move { read_only_api(&op, token).await })
                }),
                opened: Default::default(),
            }
        }
    };
    crate::mcp::serve_stdio(backend)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(exit::OK)
}

/// The API on the data dir, without a supervisor: reads only (writes answer that no operator
/// runs).
async fn read_only_api(
    op: &config::OperatorSettings,
    token: Option<String>,
) -> Result<axum::Router, String> {
    let store = open_store(op).await.map_err(|e| format!("{e:#}"))?;
    // A loopback server's rules: reads free. Nothing listens: requests come from this process.
    let token = token.unwrap_or_else(|| crate::api::security::random_hex(16));
    let security = crate::api::security::Security::new(token, false, vec![]);
    let state = crate::api::AppState {
        bus: crate::events::Bus::new(store.clone()),
        store,
        control: None,
        security: Arc::new(security),
        metrics: Arc::new(crate::metrics::Metrics::new()),
        data_dir: op.data_dir.clone(),
        started: std::time::Instant::now(),
        daily_cap_usd: op.daily_cap_usd,
        missions_dir: PathBuf::from(super::run::MISSIONS_DIR),
    };
    Ok(crate::http::router(state))
}
