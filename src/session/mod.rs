//! The Session actor: one agent process from spawn to exit — stdin messages, typed stdout stream,
//! transcript, live usage to the Cost actor, the follow-up for a missing handoff, and stopping.
//!
//! The actor is a shell: decisions (is the handoff valid, what does the chain do) are made by
//! the pure functions in `handoff` and `chain::policy`, and by the Chain actor.

mod reader;
mod report;

pub use report::{CREDENTIALS, HeldCall, SessionFacts, SessionReport};

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

use crate::agent::stream::{self, AgentEvent, ResultInfo};
use crate::agent::{Agent, CommandLine, Protocol, SessionSpec};
use crate::events::{Body, Bus};
use crate::handoff;
use crate::permissions::{DeniedCall, Policy, Verdict};
use crate::process::{self, Group, Registry};

/// Transcripts beyond this size are cut (and the cut is recorded).
pub const TRANSCRIPT_CAP_BYTES: u64 = 50 * 1024 * 1024;
/// The assistant text kept in memory for handoff parsing and synthetic handoffs.
const OUTPUT_CAP_BYTES: usize = 8 * 1024 * 1024;
/// Tool calls the agent may make while answering the follow-up for its handoff; past this
/// the turn is interrupted (writing a handoff needs no tools).
pub const FOLLOW_UP_TOOL_BUDGET: u32 = 3;
/// What the PreCompact hook answers: it shapes the compaction summary into a handoff.
const PRECOMPACT_INSTRUCTIONS: &str = "The session will end after this compaction. Write the \
summary as a handoff: a `## HANDOFF` heading with the sections Accomplished, Remaining and \
Context, as the AUTO-CONTINUATION PROTOCOL describes.";

pub enum SessionMsg {
    Line(reader::Line),
    Stderr(reader::Line),
    /// stdout closed.
    Eof,
    /// Sends another user message in the same process.
    FollowUp(String),
    /// Closes stdin: the agent should exit.
    Close,
    /// Interrupt the agent, then terminate it if it has not ended within `grace`.
    Stop {
        grace: Duration,
    },
    Terminate,
    Kill,
    /// Periodic watchdog check.
    Watch,
    /// A person (or the approval timeout) answered a tool call held by an `ask` rule.
    Answer {
        request_id: String,
        allow: bool,
        message: String,
        by: String,
    },
}

/// Everything the chain learns when a session ends.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_fires_on_idleness_or_length() {
        let w = Watchdog {
            idle_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(60),
        };
        assert_eq!(
            watchdog_verdict(&w, Duration::from_secs(5), Duration::from_secs(30)),
            None
        );
        assert!(
            watchdog_verdict(&w, Duration::from_secs(10), Duration::from_secs(30))
                .unwrap()
                .contains("no output for 10s")
        );
        assert!(
            watchdog_verdict(&w, Duration::from_secs(1), Duration::from_secs(60))
                .unwrap()
                .contains("longer than 1m")
        );
    }
}

#[derive(Debug)]
pub struct SessionOutcome {
    pub index: u32,
    pub session_id: Option<String>,
    pub output: String,
    pub facts: SessionFacts,
    pub turns: u32,
    pub reported_cost: Option<f64>,
    pub pre_compacted: bool,
    pub duration: Duration,
    pub transcript_truncated: bool,
    /// When the agent's process ended (RFC 3339), before anything was recorded.
    pub ended_at: String,
    /// Tool calls refused during the session.
    pub denied: Vec<DeniedCall>,
}

impl SessionOutcome {
    /// The outcome of a session that produced nothing (the agent could not start, or its actor crashed).
    pub fn empty(index: u32, facts: SessionFacts) -> Self {
        Self {
            index,
            session_id: None,
            output: String::new(),
            facts,
            turns: 0,
            reported_cost: None,
            pre_compacted: false,
            duration: Duration::ZERO,
            transcript_truncated: false,
            ended_at: crate::model::now_rfc3339(),
            denied: Vec::new(),
        }
    }
}

pub struct SessionArgs {
    pub spec: SessionSpec,
    pub agent: Arc<dyn Agent>,
    pub chain: DerivedActorRef<SessionReport>,
    pub bus: Bus,
    pub registry: Registry,
    pub transcript: PathBuf,
    /// The attempt of this session (retries append to the same transcript).
    pub attempt: u32,
    pub watchdog: Watchdog,
    /// The operator's permission policy; `None` when the agent runs with `bypassPermissions`
    /// (it then asks nothing).
    pub policy: Option<Arc<Policy>>,
}

/// Limits a session runs under.
#[derive(Debug, Clone, Copy)]
pub struct Watchdog {
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
}

/// Why a watchdog should stop a session now, if it should.
pub fn watchdog_verdict(w: &Watchdog, since_output: Duration, running: Duration) -> Option<String> {
    if running >= w.session_timeout {
        Some(format!(
            "watchdog: the session ran longer than {}",
            humantime::format_duration(w.session_timeout)
        ))
    } else if since_output >= w.idle_timeout {
        Some(format!(
            "watchdog: no output for {}",
            humantime::format_duration(w.idle_timeout)
        ))
    } else {
        None
    }
}

pub struct SessionState {
    spec: SessionSpec,
    agent: Arc<dyn Agent>,
    chain: DerivedActorRef<SessionReport>,
    bus: Bus,
    registry: Registry,
    child: Child,
    stdin: Option<ChildStdin>,
    group: Group,
    /// A one-shot agent's turn ended and the chain has not said yet whether a follow-up comes.
    turn_open: bool,
    /// A one-shot agent's process has ended while its turn was open (its exit status).
    exited: Option<Option<std::process::ExitStatus>>,
    /// A follow-up the chain sent while a one-shot agent's process was still ending.
    pending_follow_up: Option<String>,
    /// The last event was a chunk of streamed text (the next chunk joins it).
    in_delta: bool,
    exit_grace: Duration,
    started: Instant,
    output: String,
    session_id: Option<String>,
    /// The result of the session's own turn: it decides how the session ended (the
    /// follow-up for a handoff only decides the handoff).
    first_result: Option<ResultInfo>,
    results: u32,
    /// The latest result: its `total_cost_usd` covers the whole process.
    last_result: Option<ResultInfo>,
    turns: u32,
    hit_max_turns: bool,
    pre_compacted: bool,
    /// A `compact_boundary` was seen.
    compacted: bool,
    /// Tool calls since the follow-up was sent (`None` before it).
    follow_up_tools: Option<u32>,
    watchdog: Watchdog,
    last_output: Instant,
    /// Set when a watchdog stopped the session.
    watchdog_fired: Option<String>,
    /// Set when the agent reported an authentication error.
    auth_error: Option<String>,
    /// Set when the agent reported a rejected rate-limit window (`rate_limit_event`).
    rate_limited: Option<Option<u64>>,
    /// The handoff found in the compaction summary.
    summary_handoff: Option<String>,
    stopped: bool,
    stderr_tail: Vec<String>,
    transcript: std::io::BufWriter<std::fs::File>,
    transcript_bytes: u64,
    transcript_truncated: bool,
    last_live: Option<Instant>,
    next_request: u32,
    policy: Option<Arc<Policy>>,
    /// The model the agent reported at its start.
    reported_model: Option<String>,
    /// Tool calls held for a person: request id → (tool, input).
    held: std::collections::HashMap<String, (String, serde_json::Value, Option<String>)>,
    /// Tool calls refused so far, by tool-use id when known (the result's list repeats them).
    denied: Vec<(Option<String>, DeniedCall)>,
    /// The session's timers (the watchdog's tick, grace periods): cancelled when it ends, so a
    /// long run does not carry a sleeping task for every session it ran.
    timers: Vec<tokio::task::AbortHandle>,
    span: tracing::Span,
}

pub struct Session;

/// Starts one agent process and wires its stdout and stderr to the session actor.
fn start_process(
    cmd: &CommandLine,
    spec: &SessionSpec,
    registry: &Registry,
    chain: &DerivedActorRef<SessionReport>,
    myself: &ActorRef<SessionMsg>,
) -> Result<(Child, Group, Option<ChildStdin>), ActorProcessingErr> {
    let mut cmd = cmd.clone();
    // Found again by the next operator if this one dies (see `process::SESSION_MARK`).
    cmd.env.push((
        process::SESSION_MARK.to_string(),
        format!("{}/{}", spec.chain_id, spec.index),
    ));
    let (mut child, group) = process::spawn(&cmd, registry)?;
    let stdout = child.stdout.take().ok_or("the agent has no stdout")?;
    let stderr = child.stderr.take().ok_or("the agent has no stderr")?;
    let stdin = child.stdin.take();
    if let Some(pid) = child.id() {
        // The chain records it: an agent left behind by a dead operator is found by it.
        let program = cmd
            .program
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = chain.send_message(SessionReport::AgentStarted {
            index: spec.index,
            pgid: pid as i32,
            program,
        });
    }
    reader::forward_lines(
        stdout,
        myself.clone(),
        SessionMsg::Line,
        Some(SessionMsg::Eof),
    );
    reader::forward_lines(stderr, myself.clone(), SessionMsg::Stderr, None);
    Ok((child, group, stdin))
}

impl SessionState {
    /// Sends `msg` to the session after `delay`, unless the session has ended by then.
    fn after(&mut self, me: &ActorRef<SessionMsg>, delay: Duration, msg: fn() -> SessionMsg) {
        self.timers.retain(|t| !t.is_finished());
        self.timers.push(me.send_after(delay, msg).abort_handle());
    }

    fn one_shot(&self) -> bool {
        self.agent.protocol() == Protocol::OneShot
    }

    /// Hands the agent a message: a user line on a two-way agent's stdin; the whole text on a
    /// one-shot agent's stdin, which is then closed (the CLI starts on EOF).
    async fn send_prompt(&mut self, text: &str) {
        if self.one_shot() {
            self.write_line(text).await;
            self.stdin = None;
        } else {
            self.write_line(&stream::user_message(text)).await;
        }
    }

    /// Stops the agent's current turn: a control request to a two-way agent, SIGINT to a
    /// one-shot one (its process ends with the turn).
    async fn interrupt(&mut self) {
        if self.one_shot() {
            self.group.signal(Signal::SIGINT);
        } else {
            let id = self.request_id();
            self.write_line(&stream::interrupt_request(&id)).await;
        }
    }

    /// A one-shot agent's follow-up: a new process resuming the agent's own thread, the text on
    /// its stdin. `false` when the agent cannot be resumed (no thread id yet).
    async fn spawn_follow_up(&mut self, text: &str, myself: &ActorRef<SessionMsg>) -> bool {
        let Some(cmd) = self
            .session_id
            .clone()
            .and_then(|id| self.agent.follow_up(&self.spec, &id))
        else {
            return false;
        };
        match start_process(&cmd, &self.spec, &self.registry, &self.chain, myself) {
            Ok((child, group, stdin)) => {
                tracing::debug!(parent: &self.span, command = %cmd, "resuming the agent for a follow-up");
                self.child = child;
                self.group = group;
                self.stdin = stdin;
                self.exited = None;
                self.send_prompt(text).await;
                true
            }
            Err(e) => {
                tracing::warn!(parent: &self.span, error = %e, "could not start the agent for a follow-up");
                false
            }
        }
    }

    async fn write_line(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // A closed pipe means the agent is gone; its exit is handled on EOF.
        if stdin.write_all(&buf).await.is_err() || stdin.flush().await.is_err() {
            self.stdin = None;
        }
    }

    fn record(&mut self, line: &str) {
        if self.transcript_truncated {
            return;
        }
        if self.transcript_bytes + line.len() as u64 + 1 > TRANSCRIPT_CAP_BYTES {
            self.transcript_truncated = true;
            let _ = writeln!(
                self.transcript,
                "{}",
                json!({"type": "operator", "subtype": "transcript_truncated", "cap_bytes": TRANSCRIPT_CAP_BYTES})
            );
            return;
        }
        self.transcript_bytes += line.len() as u64 + 1;
        let _ = writeln!(self.transcript, "{}", crate::redact::redact(line));
    }

    fn push_output(&mut self, text: &str) {
        // A chunk of the text being streamed joins the one before it; anything else starts
        // a new paragraph.
        if !self.output.is_empty() && !self.in_delta {
            self.output.push_str("\n\n");
        }
        self.output.push_str(text);
        if self.output.len() > OUTPUT_CAP_BYTES {
            // Keep the tail: the handoff is at the end.
            let cut = self.output.len() - OUTPUT_CAP_BYTES / 2;
            let cut = (cut..self.output.len())
                .find(|i| self.output.is_char_boundary(*i))
                .unwrap_or(self.output.len());
            self.output.drain(..cut);
        }
    }

    /// Live output for the terminal and the API, at most about once a second per session
    /// for text (tool calls and results always go out: they are few and informative).
    fn live(&mut self, activity: String, always: bool) {
        let now = Instant::now();
        if !always
            && self
                .last_live
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(900))
        {
            return;
        }
        self.last_live = Some(now);
        self.bus.live(
            &self.spec.chain_id,
            self.spec.index,
            Body::Output {
                text: crate::redact::redact(&activity).into_owned(),
                turns: self.turns,
            },
        );
    }

    /// Answers a `can_use_tool` request from the policy: allow, deny, or hold it for a person.
    async fn can_use_tool(&mut self, req: stream::ControlRequest) {
        let tool = req.tool_name.clone().unwrap_or_default();
        let Some(policy) = self.policy.clone() else {
            // Without a policy the CLI should not ask; never leave a request unanswered.
            let reply = stream::permission_deny(
                &req.request_id,
                "The operator has no permission policy for this session.",
            );
            self.write_line(&reply).await;
            return;
        };
        let d = policy.decide(&tool, &req.input);
        let tool_use_id = req.tool_use_id.clone();
        match d.verdict {
            Verdict::Allow => {
                self.decided(&tool, &req.input, d.verdict, &d.rule, None)
                    .await;
                let reply = stream::permission_allow(&req.request_id, &req.input);
                self.write_line(&reply).await;
            }
            Verdict::Deny => {
                self.decided(&tool, &req.input, d.verdict, &d.rule, tool_use_id)
                    .await;
                let reply = stream::permission_deny(&req.request_id, &d.message);
                self.write_line(&reply).await;
            }
            Verdict::Ask => {
                tracing::info!(parent: &self.span, tool = %tool, rule = %d.rule, "a tool call waits for a person's approval");
                self.held.insert(
                    req.request_id.clone(),
                    (tool.clone(), req.input.clone(), tool_use_id),
                );
                self.decided(&tool, &req.input, d.verdict, &d.rule, None)
                    .await;
                let _ = self
                    .chain
                    .send_message(SessionReport::ApprovalRequested(HeldCall {
                        index: self.spec.index,
                        request_id: req.request_id,
                        summary: crate::permissions::summarize(&tool, &req.input),
                        input: crate::redact::redact(&req.input.to_string()).into_owned(),
                        tool,
                        rule: d.rule,
                    }));
            }
        }
    }

    /// Keeps a decision: the journal (`session:permission`, which `show`, the chain page and
    /// `/metrics` read) and, for a denial, the list the next prompt names.
    async fn decided(
        &mut self,
        tool: &str,
        input: &serde_json::Value,
        verdict: Verdict,
        rule: &str,
        tool_use_id: Option<String>,
    ) {
        let summary = crate::permissions::summarize(tool, input);
        if verdict == Verdict::Deny {
            tracing::warn!(parent: &self.span, tool, input = %summary, rule, "tool call denied");
            self.denied.push((
                tool_use_id,
                DeniedCall {
                    tool: tool.to_string(),
                    summary: summary.clone(),
                    reason: rule.to_string(),
                },
            ));
        } else {
            tracing::debug!(parent: &self.span, tool, input = %summary, rule, decision = verdict.as_str(), "tool call decided");
        }
        self.live(format!("{} {tool}: {summary}", verdict.as_str()), true);
        self.bus
            .emit(
                Some(&self.spec.chain_id),
                Some(self.spec.index),
                Body::Permission {
                    tool: tool.to_string(),
                    input: summary,
                    decision: verdict.as_str().to_string(),
                    rule: rule.to_string(),
                },
            )
            .await;
    }

    /// The model usage is priced by: the one the stream reported, else the configured one.
    fn priced_model(&self) -> String {
        self.reported_model
            .clone()
            .unwrap_or_else(|| self.agent.priced_model(&self.spec.model))
    }

    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!("op_{}", self.next_request)
    }
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::info_span!(
            "session",
            chain.id = %args.spec.chain_id,
            session.index = args.spec.index,
            agent = %args.agent.kind()
        );
        let cmd = args.agent.command(&args.spec);
        tracing::debug!(parent: &span, command = %cmd, "starting the agent");
        let (child, group, stdin) =
            start_process(&cmd, &args.spec, &args.registry, &args.chain, &myself)?;
        if let Some(dir) = args.transcript.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.transcript)?;
        let mut state = SessionState {
            spec: args.spec,
            agent: args.agent.clone(),
            chain: args.chain,
            bus: args.bus,
            registry: args.registry,
            child,
            stdin,
            group,
            turn_open: false,
            exited: None,
            pending_follow_up: None,
            in_delta: false,
            exit_grace: args.agent.exit_grace(),
            started: Instant::now(),
            output: String::new(),
            session_id: None,
            first_result: None,
            results: 0,
            last_result: None,
            turns: 0,
            hit_max_turns: false,
            pre_compacted: false,
            compacted: false,
            follow_up_tools: None,
            watchdog: args.watchdog,
            last_output: Instant::now(),
            watchdog_fired: None,
            auth_error: None,
            rate_limited: None,
            summary_handoff: None,
            stopped: false,
            stderr_tail: Vec::new(),
            transcript: std::io::BufWriter::new(file),
            transcript_bytes: 0,
            transcript_truncated: false,
            last_live: None,
            next_request: 0,
            policy: args.policy,
            reported_model: None,
            held: std::collections::HashMap::new(),
            denied: Vec::new(),
            timers: Vec::new(),
            span,
        };
        if args.attempt > 1 {
            state.record(
                &json!({"type": "operator", "subtype": "attempt", "attempt": args.attempt})
                    .to_string(),
            );
        }
        let prompt = if state.one_shot() {
            // No system-prompt option: the continuation protocol leads the prompt.
            format!("{}\n\n{}", state.spec.system_prompt, state.spec.prompt)
        } else {
            state
                .write_line(&stream::initialize_request("init_1"))
                .await;
            state.spec.prompt.clone()
        };
        state.send_prompt(&prompt).await;
        let tick = (state
            .watchdog
            .idle_timeout
            .min(state.watchdog.session_timeout)
            / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let watch = myself.send_interval(tick, || SessionMsg::Watch);
        state.timers.push(watch.abort_handle());
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        for t in st.timers.drain(..) {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Watch => {
                if !st.held.is_empty() {
                    // A call held for a person is not idleness: the idle clock waits with it.
                    st.last_output = Instant::now();
                }
                if st.watchdog_fired.is_none()
                    && st.auth_error.is_none()
                    && let Some(why) = watchdog_verdict(
                        &st.watchdog,
                        st.last_output.elapsed(),
                        st.started.elapsed(),
                    )
                {
                    tracing::warn!(parent: &st.span, reason = %why, "stopping the session");
                    st.watchdog_fired = Some(why);
                    st.stdin = None;
                    st.group.signal(Signal::SIGTERM);
                    st.after(&myself, Duration::from_secs(3), || SessionMsg::Kill);
                }
            }
            SessionMsg::Line(line) => {
                // The line's share of the reader's budget is given back when it is dropped,
                // at the end of this arm.
                let line = line.text.as_str();
                crate::fault::check("session:line");
                st.last_output = Instant::now();
                st.record(line);
                for ev in st.agent.parse_line(line) {
                    let delta = matches!(ev, AgentEvent::TextDelta(_));
                    handle_event(st, ev).await;
                    st.in_delta = delta;
                }
            }
            SessionMsg::Stderr(line) => {
                let line = line.text;
                st.record(
                    &json!({"type": "operator", "subtype": "stderr", "line": line}).to_string(),
                );
                st.stderr_tail.push(line);
                if st.stderr_tail.len() > 20 {
                    st.stderr_tail.remove(0);
                }
            }
            SessionMsg::FollowUp(text) => {
                st.record(
                    &json!({"type": "operator", "subtype": "follow_up", "text": text}).to_string(),
                );
                st.follow_up_tools = Some(0);
                if !st.one_shot() {
                    st.write_line(&stream::user_message(&text)).await;
                } else {
                    st.turn_open = false;
                    match st.exited.take() {
                        // The turn's process is still ending: the follow-up starts after it.
                        None => st.pending_follow_up = Some(text),
                        Some(status) => {
                            if !st.spawn_follow_up(&text, &myself).await {
                                return finish(st, status, &myself);
                            }
                        }
                    }
                }
            }
            SessionMsg::Close => {
                // EOF on stdin: the agent finishes and exits; give it a grace period.
                st.stdin = None;
                st.turn_open = false;
                if let Some(status) = st.exited.take() {
                    return finish(st, status, &myself);
                }
                let grace = st.exit_grace;
                st.after(&myself, grace, || SessionMsg::Terminate);
            }
            SessionMsg::Stop { grace } => {
                if !st.stopped {
                    st.stopped = true;
                    // Interrupt the turn but keep a two-way agent's stdin open: the chain then
                    // asks for the handoff in the same process, so a resumed chain starts from
                    // a real one.
                    st.interrupt().await;
                    st.after(&myself, grace, || SessionMsg::Terminate);
                }
            }
            SessionMsg::Terminate => {
                st.group.signal(Signal::SIGTERM);
                st.after(&myself, Duration::from_secs(3), || SessionMsg::Kill);
            }
            SessionMsg::Kill => st.group.signal(Signal::SIGKILL),
            SessionMsg::Answer {
                request_id,
                allow,
                message,
                by,
            } => {
                if let Some((tool, input, tool_use_id)) = st.held.remove(&request_id) {
                    st.last_output = Instant::now();
                    let verdict = if allow { Verdict::Allow } else { Verdict::Deny };
                    st.decided(
                        &tool,
                        &input,
                        verdict,
                        &format!("answered by {by}"),
                        tool_use_id,
                    )
                    .await;
                    let reply = if allow {
                        stream::permission_allow(&request_id, &input)
                    } else {
                        stream::permission_deny(&request_id, &message)
                    };
                    st.write_line(&reply).await;
                }
            }
            SessionMsg::Eof => {
                let status = match tokio::time::timeout(st.exit_grace, st.child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => {
                        st.group.signal(Signal::SIGKILL);
                        st.child.wait().await.ok()
                    }
                };
                // Anything the agent left running in its group goes with it.
                st.group.finish();
                if let Some(text) = st.pending_follow_up.take() {
                    if st.spawn_follow_up(&text, &myself).await {
                        return Ok(());
                    }
                } else if st.turn_open {
                    // A one-shot agent's turn is over; the chain says what comes next.
                    st.exited = Some(status);
                    return Ok(());
                }
                finish(st, status, &myself)?;
            }
        }
        Ok(())
    }
}

/// The session is over: the outcome goes to the chain, and the actor stops.
fn finish(
    st: &mut SessionState,
    status: Option<std::process::ExitStatus>,
    myself: &ActorRef<SessionMsg>,
) -> Result<(), ActorProcessingErr> {
    if let Some(h) = st.summary_handoff.take()
        && handoff::extract(&st.output).is_err()
    {
        st.push_output(&h);
    }
    let _ = st.transcript.flush();
    let reported_cost = st.last_result.take().map(|r| r.total_cost_usd);
    let result = st.first_result.take();
    let facts = SessionFacts {
        agent: st.agent.kind(),
        saw_result: result.is_some(),
        results: st.results,
        result_is_error: result.as_ref().is_some_and(|r| r.is_error),
        result_subtype: result
            .as_ref()
            .map(|r| r.subtype.clone())
            .unwrap_or_default(),
        terminal_reason: result.as_ref().and_then(|r| r.terminal_reason.clone()),
        api_error_status: result.as_ref().and_then(|r| r.api_error_status),
        result_text: result.as_ref().and_then(|r| r.result.clone()),
        errors: result
            .as_ref()
            .map(|r| r.errors.clone())
            .unwrap_or_default(),
        hit_max_turns: st.hit_max_turns,
        exit_code: status.and_then(|s| s.code()),
        stopped_by_operator: st.stopped,
        watchdog: st.watchdog_fired.clone(),
        auth_error: st.auth_error.clone(),
        usage_limit: st.rate_limited,
        spawn_error: None,
        stderr_tail: st.stderr_tail.join("\n"),
    };
    let outcome = SessionOutcome {
        index: st.spec.index,
        session_id: st.session_id.clone(),
        output: std::mem::take(&mut st.output),
        facts,
        turns: st.turns,
        reported_cost,
        pre_compacted: st.pre_compacted,
        duration: st.started.elapsed(),
        transcript_truncated: st.transcript_truncated,
        ended_at: crate::model::now_rfc3339(),
        denied: std::mem::take(&mut st.denied)
            .into_iter()
            .map(|(_, d)| d)
            .collect(),
    };
    st.chain
        .send_message(SessionReport::Ended(Box::new(outcome)))?;
    myself.stop(None);
    Ok(())
}

async fn handle_event(st: &mut SessionState, ev: AgentEvent) {
    match ev {
        AgentEvent::Init {
            session_id, model, ..
        } => {
            st.session_id = Some(session_id);
            // Priced by the model the CLI really runs (an alias like `opus` names a family).
            st.reported_model = model.clone().filter(|m| !m.is_empty());
            st.live(format!("started ({})", model.unwrap_or_default()), true);
        }
        AgentEvent::Text { text, usage } => {
            if let Some(u) = usage {
                let _ = st.chain.send_message(SessionReport::Usage {
                    model: st.priced_model(),
                    usage: u,
                });
            }
            if !text.is_empty() {
                let first = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string();
                st.push_output(&text);
                st.live(first, false);
            }
        }
        AgentEvent::ModelUsage { model, usage } => {
            let _ = st.chain.send_message(SessionReport::Usage { model, usage });
        }
        AgentEvent::TextDelta(text) => {
            st.push_output(&text);
            if let Some(last) = st.output.lines().rev().find(|l| !l.trim().is_empty()) {
                let last = last.to_string();
                st.live(last, false);
            }
        }
        AgentEvent::ToolUse { name, usage } => {
            if let Some(u) = usage {
                let _ = st.chain.send_message(SessionReport::Usage {
                    model: st.priced_model(),
                    usage: u,
                });
            }
            st.live(format!("tool: {name}"), true);
            if let Some(n) = st.follow_up_tools.as_mut() {
                *n += 1;
                if *n == FOLLOW_UP_TOOL_BUDGET + 1 {
                    tracing::warn!(parent: &st.span, budget = FOLLOW_UP_TOOL_BUDGET, "the agent keeps working instead of writing its handoff; interrupting it");
                    st.interrupt().await;
                }
            }
        }
        AgentEvent::UserText(text) => {
            // After a compaction the CLI continues with the summary the model wrote, shaped
            // into a handoff by our PreCompact reply: it is the session's handoff unless the
            // agent writes a newer one.
            if st.compacted
                && let Ok(h) = handoff::extract(&text)
            {
                st.summary_handoff = Some(h.text);
            }
        }
        AgentEvent::ToolResult { .. }
        | AgentEvent::Status(_)
        | AgentEvent::ControlResponse { .. } => {}
        AgentEvent::ApiRetry {
            attempt,
            error,
            error_status,
            ..
        } => {
            tracing::warn!(parent: &st.span, attempt, error = %error, status = ?error_status, "the agent is retrying an API call");
            st.live(format!("API retry {attempt}: {error}"), true);
            // An invalid key will not become valid on retry: stop now instead of waiting
            // through the CLI's own retries.
            if (matches!(error_status, Some(401 | 403)) || error == "authentication_failed")
                && st.auth_error.is_none()
            {
                let status = error_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "401".into());
                st.auth_error = Some(format!(
                    "{}authentication failed (HTTP {status}, {error}): {}, then `operator run --resume`",
                    report::CREDENTIALS,
                    st.agent.kind().login_hint()
                ));
                tracing::error!(parent: &st.span, status = %status, "authentication failed; stopping the agent");
                st.stdin = None;
                st.group.signal(Signal::SIGTERM);
            }
        }
        AgentEvent::RateLimit { status, resets_at } => {
            tracing::info!(parent: &st.span, status = %status, resets_at = ?resets_at, "rate limit event");
            if status == "rejected" {
                // Seconds, or milliseconds in some versions.
                let reset = resets_at
                    .and_then(|t| u64::try_from(t).ok())
                    .map(|t| if t > 100_000_000_000 { t / 1000 } else { t });
                st.rate_limited = Some(reset);
            }
        }
        AgentEvent::CompactBoundary => {
            st.pre_compacted = true;
            st.compacted = true;
            st.live("context compacted".into(), true);
        }
        AgentEvent::ControlRequest(req) if req.subtype == "can_use_tool" => {
            st.can_use_tool(req).await;
        }
        AgentEvent::ControlRequest(req) => {
            let reply = if req.subtype == "hook_callback"
                && req.callback_id.as_deref() == Some(stream::PRECOMPACT_CALLBACK)
            {
                st.pre_compacted = true;
                stream::control_success(
                    &req.request_id,
                    json!({"systemMessage": PRECOMPACT_INSTRUCTIONS}),
                )
            } else {
                stream::control_error(
                    &req.request_id,
                    &format!("operator does not handle `{}` requests", req.subtype),
                )
            };
            st.write_line(&reply).await;
        }
        AgentEvent::Result(r) => {
            st.turns += r.num_turns;
            if r.subtype == "error_max_turns" || r.terminal_reason.as_deref() == Some("max_turns") {
                st.hit_max_turns = true;
            }
            if st.session_id.is_none() {
                st.session_id = r.session_id.clone();
            }
            let _ = st.transcript.flush();
            let verdict = match handoff::extract(&st.output) {
                Err(_) if st.summary_handoff.is_some() => Ok(()),
                other => other.map(|_| ()),
            };
            st.turn_open = st.one_shot();
            let _ = st.chain.send_message(SessionReport::TurnEnded {
                index: st.spec.index,
                handoff: verdict.map_err(|e| e.to_string()),
                hit_max_turns: st.hit_max_turns,
                is_error: r.is_error && !st.hit_max_turns,
            });
            st.results += 1;
            // Refusals the CLI made by its own rules (the operator's own are known already).
            for d in &r.permission_denials {
                let known = st
                    .denied
                    .iter()
                    .any(|(id, _)| id.as_deref() == Some(d.tool_use_id.as_str()));
                if !known {
                    let summary = crate::permissions::summarize(&d.tool_name, &d.tool_input);
                    st.denied.push((
                        Some(d.tool_use_id.clone()),
                        DeniedCall {
                            tool: d.tool_name.clone(),
                            summary,
                            reason: "denied by the agent CLI's own rules".into(),
                        },
                    ));
                }
            }
            if st.first_result.is_none() {
                st.first_result = Some(r.clone());
            }
            st.last_result = Some(r);
        }
        AgentEvent::Unknown(_) | AgentEvent::Garbage => {}
    }
}
