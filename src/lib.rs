//! `operator` keeps AI coding agents working on a task for hours: it runs chains of agent sessions
//! joined by written handoffs, under an Erlang-style supervision tree, with a SQLite store.
//!
//! # Layout
//! - [`model`]: chain, session, handoff and event records, with the JSON names of the original.
//! - [`config`]: `operator.toml`, missions, environment and flags layered into typed settings.
//! - [`handoff`]: finding, validating and synthesising handoffs; building prompts.
//! - [`agent`]: the `Agent` trait, the stream-json protocol, and the `claude` and `sim` backends.
//! - [`sim`]: the simulated agent program behind `operator sim-agent`.
//! - [`store`]: the `Store` trait and its SQLite backend.
//! - [`otp`]: OTP's supervision vocabulary (child specs, strategies, intensity) as plain policy.
//! - [`supervisor`]: the root Operator actor (queue, concurrency, ordering, restarts).
//! - [`chain`]: the Chain actor, its Cost and Handoff children, and its pure decisions.
//! - [`session`]: the Session actor around one agent process.
//! - [`process`]: process groups and their killing.
//! - [`daemon`]: `run`, the supervisor as a library function, with signals and reload.
//! - [`control`], [`signals`]: the run mode and the Unix signals that change it.
//! - [`events`], [`eventlog`], [`notify`], [`progress`]: the event bus and what listens to it.
//! - [`api`]: the HTTP API, WebSocket and its security; [`metrics`]: Prometheus metrics.
//! - [`git`]: commits, branches, worktrees, pushes and pull requests through the `git` CLI.
//! - [`web`]: the dashboard pages (templates, markdown, charts), served with the API.
//! - [`tui`]: `operator tui`, the terminal view of a running operator, through its API.
//! - [`mcp`]: the MCP server (`operator mcp`, `/mcp`): tools and resources over the same API.
//! - [`quota`]: the operator-wide scheduler of usage limits, session caps and quiet hours.
//! - [`cost`]: pricing; [`redact`]: masking secrets; [`cli`]: the command line; [`doctor`]:
//!   setup checks; [`fault`]: test-only fault injection.

pub mod agent;
pub mod api;
pub mod backlog;
pub mod chain;
pub mod cli;
pub mod config;
pub mod control;
pub mod cost;
pub mod daemon;
pub mod datadir;
pub mod doctor;
pub mod eventlog;
pub mod events;
pub mod fault;
pub mod fleet;
pub mod git;
pub mod handoff;
pub mod host;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod otp;
pub mod permissions;
pub mod process;
pub mod progress;
pub mod quota;
pub mod redact;
pub mod session;
pub mod signals;
pub mod sim;
pub mod store;
pub mod supervisor;
pub mod tui;
pub mod web;
