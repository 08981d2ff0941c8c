//! The MCP server (`operator mcp` on stdio, `/mcp` on `operator serve`): tools and resources
//! that let an agent or a chat client list, inspect, start and steer chains. Each tool is one or
//! two requests to the operator's HTTP API ([`backend`]), so the API's validation, security
//! guard and journal apply to MCP exactly as to any other client.

pub mod backend;
pub mod params;
mod render;

use std::sync::Arc;

use axum::http::Method;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Map, Value, json};

use backend::{Backend, Caller, Failure};
use params::*;

/// What clients are told the server is for.
const INSTRUCTIONS: &str = "operator runs AI coding agents on long tasks as chains of sessions \
joined by written handoffs. Use list_chains and show_chain to see what runs, get_handoff and \
get_output_tail to read where a chain is, costs for spending. start_chain starts one chain on a \
task; plan_mission shows what start_mission would run. Writes need an operator running \
(`operator serve`); reads work on its data dir without one.";

/// The MCP server: its tools over a [`Backend`].
#[derive(Clone)]
pub struct OperatorMcp {
    backend: Arc<Backend>,
    tool_router: ToolRouter<OperatorMcp>,
}

type ToolResult = Result<CallToolResult, ErrorData>;

/// A chain id, checked before it becomes part of a path.
fn chain_id(id: &str) -> Result<&str, Failure> {
    if crate::model::is_valid_chain_id(id) {
        Ok(id)
    } else {
        Err(Failure {
            status: 400,
            message: format!("`{id}` is not a chain id (c-YYYYMMDD-xxxxxx; see list_chains)"),
        })
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    match serde_urlencoded::to_string(&set) {
        Ok(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    }
}

/// A tool's answer: text for the model (JSON pretty-printed), or the API's error as a tool error.
fn answer(r: Result<Value, Failure>) -> ToolResult {
    Ok(match r {
        Ok(Value::String(s)) => CallToolResult::success(vec![ContentBlock::text(s)]),
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )]),
        Err(f) => CallToolResult::error(vec![ContentBlock::text(f.message)]),
    })
}

fn caller(ctx: &RequestContext<RoleServer>) -> Caller {
    match ctx.extensions.get::<axum::http::request::Parts>() {
        Some(p) => Caller {
            authorization: p.headers.get(axum::http::header::AUTHORIZATION).cloned(),
            host: p.headers.get(axum::http::header::HOST).cloned(),
        },
        None => Caller::default(),
    }
}

impl OperatorMcp {
    async fn get(&self, path: &str, c: &Caller) -> Result<Value, Failure> {
        self.backend.call(Method::GET, path, None, c).await
    }

    async fn post(&self, path: &str, body: Value, c: &Caller) -> Result<Value, Failure> {
        self.backend.call(Method::POST, path, Some(body), c).await
    }

    /// A request about one chain (`/api/chains/{id}{rest}`), its id checked first.
    async fn on_chain(
        &self,
        method: Method,
        id: &str,
        rest: &str,
        c: &Caller,
    ) -> Result<Value, Failure> {
        let id = chain_id(id)?;
        let body = (method != Method::GET).then(|| json!({}));
        self.backend
            .call(method, &format!("/api/chains/{id}{rest}"), body, c)
            .await
    }

    /// The chain's latest session index (0: none yet).
    async fn latest_session(&self, id: &str, c: &Caller) -> Result<u32, Failure> {
        Ok(latest(&self.get(&format!("/api/chains/{id}"), c).await?))
    }

    /// The handoff of `session` (default: the latest written), as markdown with a header line.
    async fn handoff(&self, id: &str, session: Option<u32>, c: &Caller) -> Result<Value, Failure> {
        let id = chain_id(id)?;
        let (from, to) = match session {
            Some(n) => (n, n),
            None => (1, self.latest_session(id, c).await?),
        };
        self.handoff_between(id, from, to, session, c).await
    }

    /// The newest handoff of sessions `from..=to` (`asked`: the session named, for the error).
    async fn handoff_between(
        &self,
        id: &str,
        from: u32,
        to: u32,
        asked: Option<u32>,
        c: &Caller,
    ) -> Result<Value, Failure> {
        for n in (from..=to).rev() {
            let d = self
                .get(&format!("/api/chains/{id}/sessions/{n}"), c)
                .await?;
            if let Some(text) = d["handoff"]["text"].as_str() {
                return Ok(Value::String(render::handoff(id, n, &d["handoff"], text)));
            }
        }
        Err(Failure {
            status: 404,
            message: match asked {
                Some(n) => format!("session {n} of chain `{id}` wrote no handoff (yet)"),
                None => format!("chain `{id}` has no handoff yet"),
            },
        })
    }

    /// The chain's report: one read of the chain serves both the report and its latest handoff.
    async fn report(&self, id: &str, c: &Caller) -> Result<String, Failure> {
        let id = chain_id(id)?;
        let chain = self.get(&format!("/api/chains/{id}"), c).await?;
        let handoff = match self.handoff_between(id, 1, latest(&chain), None, c).await {
            Ok(Value::String(h)) => Some(h),
            _ => None,
        };
        Ok(render::report(&chain, handoff.as_deref()))
    }
}

/// A chain's latest session index, from its JSON (0: none yet).
fn latest(chain: &Value) -> u32 {
    chain["sessions"]
        .as_array()
        .and_then(|s| s.iter().filter_map(|s| s["index"].as_u64()).max())
        .unwrap_or(0) as u32
}

#[tool_router]
impl OperatorMcp {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "List chains, newest first: id, name, mission, status, sessions, turns, cost, start time. Filter by status, mission or start time.",
        annotations(read_only_hint = true)
    )]
    async fn list_chains(
        &self,
        Parameters(p): Parameters<ListChains>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let q = query(&[
            ("status", p.status),
            ("mission", p.mission),
            ("since", p.since),
            ("limit", Some(p.limit.unwrap_or(20).to_string())),
            ("archived", p.include_archived.map(|b| b.to_string())),
        ]);
        let r = self.get(&format!("/api/chains{q}"), &caller(&ctx)).await;
        answer(r.map(|page| render::chain_list(&page)))
    }

    #[tool(
        description = "One chain: its status and why, its task, settings, each session (status, turns, cost, errors), totals and verify gates.",
        annotations(read_only_hint = true)
    )]
    async fn show_chain(
        &self,
        Parameters(p): Parameters<ChainId>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            self.on_chain(Method::GET, &p.chain_id, "", &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "A chain's handoff: what a session did, what remains and how to go on (markdown). Default: the latest handoff written.",
        annotations(read_only_hint = true)
    )]
    async fn get_handoff(
        &self,
        Parameters(p): Parameters<GetHandoff>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(self.handoff(&p.chain_id, p.session, &caller(&ctx)).await)
    }

    #[tool(
        description = "The end of a session's output (the agent's messages and tool calls, secrets masked). Default: the latest session, last 4000 bytes.",
        annotations(read_only_hint = true)
    )]
    async fn get_output_tail(
        &self,
        Parameters(p): Parameters<OutputTail>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let c = caller(&ctx);
        let r = async {
            let id = chain_id(&p.chain_id)?;
            let n = match p.session {
                Some(n) => n,
                None => self.latest_session(id, &c).await?,
            };
            if n == 0 {
                return Err(Failure {
                    status: 404,
                    message: format!("chain `{id}` has not started a session yet"),
                });
            }
            let want = u64::from(p.bytes.unwrap_or(4000).clamp(1, 65_536));
            let base = format!("/api/chains/{id}/sessions/{n}/output");
            let head = self.get(&format!("{base}?limit=1"), &c).await?;
            let total = head["total"].as_u64().unwrap_or(0);
            let from = total.saturating_sub(want);
            let page = self
                .get(&format!("{base}?offset={from}&limit={want}"), &c)
                .await?;
            Ok(Value::String(render::output_tail(id, n, &page)))
        }
        .await;
        answer(r)
    }

    #[tool(
        description = "List the missions (files in config/missions/) that start_mission and plan_mission accept.",
        annotations(read_only_hint = true)
    )]
    async fn list_missions(&self, ctx: RequestContext<RoleServer>) -> ToolResult {
        answer(self.get("/api/missions", &caller(&ctx)).await)
    }

    #[tool(
        description = "A dry run of a mission: the chains it would start, in what order, with their settings and first prompts. Starts nothing.",
        annotations(read_only_hint = true)
    )]
    async fn plan_mission(
        &self,
        Parameters(p): Parameters<PlanMission>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let r = self
            .post(
                "/api/orchestrator/start",
                json!({"mission": p.mission, "dryRun": true}),
                &caller(&ctx),
            )
            .await;
        answer(r.map(|v| v["plan"].clone()))
    }

    #[tool(
        description = "Start one chain on a task in the operator's working directory, with its configured agent and permissions (the permission mode cannot be chosen here). Returns the new chain.",
        annotations(destructive_hint = false)
    )]
    async fn start_chain(
        &self,
        Parameters(p): Parameters<StartChain>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let mut body = Map::new();
        body.insert("task".into(), Value::String(p.task));
        if let Some(n) = p.name {
            body.insert("name".into(), Value::String(n));
        }
        p.settings.into_body(&mut body);
        let r = self
            .post("/api/chains", Value::Object(body), &caller(&ctx))
            .await;
        answer(r.map(|c| render::started(&c)))
    }

    #[tool(
        description = "Start a mission's chains (a file in config/missions/) with its own settings; a few may be overridden. Use plan_mission first to see what it runs.",
        annotations(destructive_hint = false)
    )]
    async fn start_mission(
        &self,
        Parameters(p): Parameters<StartMission>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let mut body = Map::new();
        body.insert("mission".into(), Value::String(p.mission));
        if let Some(c) = p.concurrency {
            body.insert("concurrency".into(), Value::from(c));
        }
        p.settings.into_body(&mut body);
        let r = self
            .post(
                "/api/orchestrator/start",
                Value::Object(body),
                &caller(&ctx),
            )
            .await;
        answer(r)
    }

    #[tool(
        description = "Pause the operator: no new session starts; running sessions finish (or, with now, are interrupted and write their handoffs)."
    )]
    async fn pause(
        &self,
        Parameters(p): Parameters<Pause>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let r = self
            .post(
                "/api/orchestrator/pause",
                json!({"now": p.now.unwrap_or(false)}),
                &caller(&ctx),
            )
            .await;
        answer(r)
    }

    #[tool(description = "Resume a paused operator: chains go on with their next sessions.")]
    async fn resume(&self, ctx: RequestContext<RoleServer>) -> ToolResult {
        answer(
            self.post("/api/orchestrator/resume", json!({}), &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "Stop the operator gracefully: running sessions write their handoffs, chains are left resumable, the operator exits.",
        annotations(destructive_hint = true)
    )]
    async fn stop(&self, ctx: RequestContext<RoleServer>) -> ToolResult {
        answer(
            self.post("/api/orchestrator/stop", json!({}), &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "Abort a running or queued chain: its agent is stopped at once and the chain ends `aborted` (resume_chain can run it again).",
        annotations(destructive_hint = true)
    )]
    async fn abort_chain(
        &self,
        Parameters(p): Parameters<ChainId>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            self.on_chain(Method::POST, &p.chain_id, "/abort", &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "Run a failed, aborted, interrupted or limit-stopped chain again from its last handoff, with the settings it was started with."
    )]
    async fn resume_chain(
        &self,
        Parameters(p): Parameters<ChainId>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            self.on_chain(Method::POST, &p.chain_id, "/resume", &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "What the operator runs and queues, and how: mode (running, paused, stopping), concurrency, daily cap.",
        annotations(read_only_hint = true)
    )]
    async fn status(&self, ctx: RequestContext<RoleServer>) -> ToolResult {
        answer(self.get("/api/orchestrator/status", &caller(&ctx)).await)
    }

    #[tool(
        description = "Spending: today, last hour, last 7 days, all time, by model and by chain, with the burn-rate forecast against the daily cap.",
        annotations(read_only_hint = true)
    )]
    async fn costs(
        &self,
        Parameters(p): Parameters<Costs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let q = query(&[("limit", Some(p.limit.unwrap_or(10).to_string()))]);
        let r = self.get(&format!("/api/costs{q}"), &caller(&ctx)).await;
        answer(r.map(render::costs))
    }

    #[tool(
        description = "The tool calls a chain holds for a person's approval (pending and settled), oldest first.",
        annotations(read_only_hint = true)
    )]
    async fn list_approvals(
        &self,
        Parameters(p): Parameters<ChainId>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            self.on_chain(Method::GET, &p.chain_id, "/approvals", &caller(&ctx))
                .await,
        )
    }

    #[tool(
        description = "Approve or deny one tool call a chain holds for a person. Settles that call only; no permission rule changes."
    )]
    async fn answer_approval(
        &self,
        Parameters(p): Parameters<AnswerApproval>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let r = async {
            let id = chain_id(&p.chain_id)?;
            if !crate::model::is_valid_chain_id(&p.approval_id) {
                return Err(Failure {
                    status: 400,
                    message: format!("`{}` is not an approval id (ap-…)", p.approval_id),
                });
            }
            let decision = match p.decision {
                Decision::Approve => "approve",
                Decision::Deny => "deny",
            };
            self.post(
                &format!("/api/chains/{id}/approvals/{}", p.approval_id),
                json!({"decision": decision, "message": p.message}),
                &caller(&ctx),
            )
            .await
        }
        .await;
        answer(r)
    }
}

/// `operator://chains/{id}/handoffs/{n}` (`latest` for the latest) or `operator://chains/{id}/report`.
fn parse_uri(uri: &str) -> Option<(&str, Option<Option<u32>>)> {
    let rest = uri.strip_prefix("operator://chains/")?;
    let (id, what) = rest.split_once('/')?;
    if what == "report" {
        return Some((id, None));
    }
    let n = what.strip_prefix("handoffs/")?;
    if n == "latest" {
        return Some((id, Some(None)));
    }
    n.parse().ok().map(|n| (id, Some(Some(n))))
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for OperatorMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("operator", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let page = self
            .get("/api/chains?limit=20", &caller(&ctx))
            .await
            .map_err(|f| ErrorData::internal_error(f.message, None))?;
        let mut out = Vec::new();
        for c in page["chains"].as_array().into_iter().flatten() {
            let (Some(id), Some(name)) = (c["id"].as_str(), c["name"].as_str()) else {
                continue;
            };
            let status = c["status"].as_str().unwrap_or("");
            out.push(
                Resource::new(
                    format!("operator://chains/{id}/report"),
                    format!("{id} report"),
                )
                .with_description(format!(
                    "chain {name}, {status}: status, sessions, costs and the latest handoff"
                ))
                .with_mime_type("text/markdown"),
            );
            out.push(
                Resource::new(
                    format!("operator://chains/{id}/handoffs/latest"),
                    format!("{id} latest handoff"),
                )
                .with_mime_type("text/markdown"),
            );
        }
        Ok(ListResourcesResult::with_all_items(out))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("operator://chains/{chain_id}/handoffs/{session}", "handoff")
                .with_description(
                    "The handoff a session of a chain wrote (`latest` for the latest)",
                )
                .with_mime_type("text/markdown"),
            ResourceTemplate::new("operator://chains/{chain_id}/report", "report")
                .with_description("A chain's status, sessions, costs and latest handoff")
                .with_mime_type("text/markdown"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let Some((id, what)) = parse_uri(uri) else {
            return Err(ErrorData::resource_not_found(
                format!(
                    "`{uri}` is not an operator resource (operator://chains/{{id}}/handoffs/{{n|latest}} or operator://chains/{{id}}/report)"
                ),
                None,
            ));
        };
        let c = caller(&ctx);
        let text = match what {
            None => self.report(id, &c).await,
            Some(n) => self.handoff(id, n, &c).await.map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            }),
        }
        .map_err(|f| match f.status {
            404 | 400 => ErrorData::resource_not_found(f.message, None),
            _ => ErrorData::internal_error(f.message, None),
        })?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type("text/markdown"),
        ])
        .into())
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn serve_stdio(backend: Backend) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = OperatorMcp::new(backend)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP initialization failed: {e}"))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| format!("the MCP session ended with an error: {e}"))
}

/// `/mcp` (streamable HTTP) over `api`, the guarded API router of the same server.
pub fn http_service(
    api: axum::Router,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    OperatorMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let backend = Arc::new(Backend::InProcess { router: api });
    // Host and Origin are checked by the API's guard in front of /mcp (with `allowed_hosts`).
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(crate::api::BODY_LIMIT);
    StreamableHttpService::new(
        move || {
            Ok(OperatorMcp {
                backend: backend.clone(),
                tool_router: OperatorMcp::tool_router(),
            })
        },
        Default::default(),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_name_a_chain_and_a_handoff_or_the_report() {
        assert_eq!(
            parse_uri("operator://chains/c-1/handoffs/3"),
            Some(("c-1", Some(Some(3))))
        );
        assert_eq!(
            parse_uri("operator://chains/c-1/handoffs/latest"),
            Some(("c-1", Some(None)))
        );
        assert_eq!(
            parse_uri("operator://chains/c-1/report"),
            Some(("c-1", None))
        );
        assert_eq!(parse_uri("operator://chains/c-1/handoffs/x"), None);
        assert_eq!(parse_uri("file:///etc/passwd"), None);
    }

    #[test]
    fn ids_are_checked_before_they_become_paths() {
        assert!(chain_id("c-20261203-abcdef").is_ok());
        for bad in ["../orchestrator/stop", "c-1?x=1", "", "c 1", "%2e%2e"] {
            assert_eq!(chain_id(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            query(&[("mission", Some("a&b=c".into())), ("x", None)]),
            "?mission=a%26b%3Dc"
        );
    }
}
