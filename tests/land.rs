//! From a finished chain to merged code, on real repositories with a bare remote: the pull
//! request's checks fed back (a stand-in `gh` answers from files the test writes: GitHub is
//! unreachable here), and the local merge queue landing parallel worktree chains one at a time,
//! evicting a conflict and a gate that fails on the rebased result, and surviving a kill -9; and
//! missions from a backlog (a TASKS.md checklist, a forge's labelled issues).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::repo::{events_in, git, remote, repo, script, subjects};
use common::{Op, chains, eventually, signal, stderr};
use operator::model::ChainStatus;
use operator::store::Store;

/// A stand-in `gh` in `<root>/bin`: it records each call's arguments in `<root>/gh/calls`, opens
/// a pull request (`pr create`), says it exists afterwards (`pr view`), answers the n-th `pr
/// checks` from `gh/checks.<n>.json` (else `gh/checks.json`) exiting 8 as `gh` does while checks
/// run or fail, gives a failed run's log, and merges (refusing a merge that is not `--auto` while
/// `gh/refuse-merge` exists, as branch protection does).
fn stand_in_gh(op: &Op) -> (PathBuf, String) {
    let bin = op.root.path().join("bin");
    let dir = op.root.path().join("gh");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    script(
        &bin.join("gh"),
        &format!(
            r#"#!/bin/sh
d='{d}'
echo "$*" >> "$d/calls"
case "$1 $2" in
  "pr view")
    if [ -f "$d/body" ]; then echo '{{"url":"https://github.com/o/r/pull/7","state":"OPEN"}}'; exit 0; fi
    echo 'no pull requests found for branch' >&2; exit 1 ;;
  "pr create") cat > "$d/body"; echo https://github.com/o/r/pull/7 ;;
  "pr checks")
    n=$(( $(cat "$d/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$d/n"
    f="$d/checks.$n.json"; [ -f "$f" ] || f="$d/checks.json"
    cat "$f"; exit 8 ;;
  "run view") printf 'test_parse\tRun tests\t2026-12-03T01:02:03Z thread main panicked: assertion failed: parse of 1+ is Err (run %s)\n' "$3" ;;
  "pr merge")
    case "$*" in *--auto*) ;; *) if [ -f "$d/refuse-merge" ]; then echo 'X Pull request o/r#7 is not mergeable: the base branch policy prohibits the merge.' >&2; exit 1; fi ;; esac
    echo "$*" >> "$d/merged" ;;
  *) echo "unexpected gh call: $*" >&2; exit 2 ;;
esac
"#
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (dir, path)
}

fn check(bucket: &str) -> String {
    format!(
        r#"[{{"name":"test","bucket":"{bucket}","link":"https://github.com/o/r/actions/runs/4242/job/1","workflow":"CI"}},{{"name":"docs","bucket":"skipping","link":"","workflow":"CI"}}]"#
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn failing_checks_run_more_sessions_with_their_logs_until_green_then_merge() {
    let op = Op::new();
    repo(&op, true);
    let r = remote(&op);
    let (gh, path) = stand_in_gh(&op);
    // Running, then failing after session 1; failing again after session 2; green after 3.
    for (n, bucket) in [(1, "pending"), (2, "fail"), (3, "fail"), (4, "pass")] {
        std::fs::write(gh.join(format!("checks.{n}.json")), check(bucket)).unwrap();
    }
    std::fs::write(gh.join("checks.json"), check("pass")).unwrap();
    let m = op.write(
        "mission.toml",
        r#"
name = "m"
[defaults]
sim = { scenario = "incomplete", complete_after = 0, write = "x.txt" }
wait_for_checks = true
checks_poll = "50ms"
merge = "auto"
merge_method = "rebase"
[[chain]]
name = "a"
task = "Fix the parser"
"#,
    );
    let out = op
        .cmd(&["run", m.to_str().unwrap(), "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete, "{:?}", c.reason);
    assert_eq!(
        c.reason.as_deref(),
        Some("https://github.com/o/r/pull/7 merged")
    );
    assert_eq!(c.sessions.len(), 3, "two extra sessions for two failures");
    let store = op.store().await;
    for n in [2, 3] {
        let p = store.session_prompt(&c.id, n).await.unwrap().unwrap();
        assert!(
            p.contains("waited for the pull request's checks (https://github.com/o/r/pull/7)")
                && p.contains("`test` (workflow `CI`): fail")
                && p.contains("assertion failed: parse of 1+ is Err (run 4242)"),
            "session {n}'s prompt: {p}"
        );
    }
    let first = store.session_prompt(&c.id, 1).await.unwrap().unwrap();
    assert!(!first.contains("checks"), "{first}");
    // Each landing pushed the branch: the remote has all three sessions.
    let branch = git(&op.workdir(), &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(subjects(&r, branch.trim()).len(), 4);
    let calls = lines(&gh.join("calls"));
    assert_eq!(
        calls.iter().filter(|l| l.starts_with("pr create")).count(),
        1,
        "one pull request, found again after each push: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|l| l.starts_with("pr checks")).count(),
        4
    );
    assert!(calls.iter().any(|l| l == "run view 4242 --log-failed"));
    assert_eq!(
        lines(&gh.join("merged")),
        [format!("pr merge {} --rebase", branch.trim())]
    );
    let events = events_in(&op.data_dir(), &c.id).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "git:checks-failed").count(),
        2
    );
    assert!(kinds.contains(&"git:checks-passed") && kinds.contains(&"git:pr-merged"));
    // While the operator waited, the chain said so.
    let waiting = events
        .iter()
        .filter(|(k, _)| k == "git:checks-waiting")
        .count();
    assert_eq!(waiting, 3);
}

#[tokio::test]
async fn a_protected_branch_gets_the_forges_auto_merge_and_merge_auto_alone_turns_it_on() {
    let op = Op::new();
    repo(&op, true);
    remote(&op);
    let (gh, path) = stand_in_gh(&op);
    std::fs::write(gh.join("checks.json"), check("pass")).unwrap();
    std::fs::write(gh.join("refuse-merge"), "").unwrap();
    let run = |body: &str| {
        let m = op.write("mission.toml", body);
        op.cmd(&["run", m.to_str().unwrap(), "--json"])
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let out = run(
        "name = \"m\"\n[defaults]\nsim = { scenario = \"incomplete\", complete_after = 0, write = \"x.txt\" }\nwait_for_checks = true\nchecks_poll = \"50ms\"\nmerge = \"auto\"\n[[chain]]\nname = \"a\"\ntask = \"Protected\"\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let reason = c.reason.as_deref().unwrap_or("");
    assert!(
        reason.starts_with("https://github.com/o/r/pull/7: auto-merge is on")
            && reason.contains("not mergeable"),
        "{reason}"
    );
    let branch = git(&op.workdir(), &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(
        lines(&gh.join("merged")),
        [format!("pr merge {} --squash --auto", branch.trim())]
    );
    let events = events_in(&op.data_dir(), &c.id).await;
    let merged = events.iter().find(|(k, _)| k == "git:pr-merged").unwrap();
    assert_eq!(merged.1["auto"], true);

    // Without waiting for checks, `merge = "auto"` turns the forge's auto-merge on at once.
    std::fs::remove_file(gh.join("merged")).unwrap();
    git(&op.workdir(), &["checkout", "-q", "main"]);
    let out = run(
        "name = \"n\"\n[defaults]\nsim = { scenario = \"incomplete\", complete_after = 0, write = \"y.txt\" }\nmerge = \"auto\"\nmerge_method = \"merge\"\n[[chain]]\nname = \"b\"\ntask = \"Quick\"\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let branch = git(&op.workdir(), &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(
        lines(&gh.join("merged")),
        [format!("pr merge {} --merge --auto", branch.trim())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_that_never_finish_end_the_chain_checks_timeout_and_a_resume_waits_again() {
    let op = Op::new();
    repo(&op, true);
    remote(&op);
    let (gh, path) = stand_in_gh(&op);
    std::fs::write(gh.join("checks.json"), check("pending")).unwrap();
    let m = op.write(
        "mission.toml",
        r#"
name = "m"
[defaults]
sim = { scenario = "incomplete", complete_after = 0, write = "x.txt" }
wait_for_checks = true
checks_poll = "50ms"
checks_timeout = "3s"
[[chain]]
name = "a"
task = "Slow CI"
"#,
    );
    // With the API and the dashboard on, as a person watching the night would.
    let mut srv = common::api::Server::start_with(
        &op,
        &["run", m.to_str().unwrap(), "--serve", "127.0.0.1:0"],
        &[("PATH", path.as_str())],
    );
    let mut id = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            let rt = tokio::runtime::Handle::current();
            let (_, v) = tokio::task::block_in_place(|| rt.block_on(srv.get("/api/chains")));
            id = v["chains"][0]["id"].as_str().unwrap_or("").to_string();
            !id.is_empty()
        }),
        "{}",
        srv.log()
    );
    srv.wait_chain(&id, "awaiting its pull request's checks", |v| {
        v["status"] == "awaiting-checks" && v["reason"] == "checks of https://github.com/o/r/pull/7"
    })
    .await;
    let page = srv
        .http
        .get(format!("{}/", srv.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("st-awaiting-checks"), "{page}");
    let listed = String::from_utf8_lossy(&op.run(&["list"]).stdout).into_owned();
    assert!(listed.contains("awaiting-checks"), "{listed}");
    let shown = String::from_utf8_lossy(&op.run(&["show", &id]).stdout).into_owned();
    assert!(shown.contains("awaiting-checks"), "{shown}");
    let code = srv.child.wait().unwrap().code();
    assert_eq!(code, Some(1), "a run that did not land is a failure");
    let c = op.store().await.get_chain(&id).await.unwrap().unwrap();
    assert_eq!(c.status, ChainStatus::ChecksTimeout, "{}", srv.log());
    let reason = c.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("did not finish within 3s") && reason.contains("still running: test"),
        "{reason}"
    );
    let listed = op.run(&["list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("checks-timeout"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    // CI finished meanwhile: a resume waits again and completes, without another session.
    std::fs::write(gh.join("checks.json"), check("pass")).unwrap();
    let out = op
        .cmd(&["run", "--resume", &c.id, "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 1);
}

/// A repository whose `shared.txt` has ten numbered lines, and a bare remote.
fn shared_repo(op: &Op) -> PathBuf {
    repo(op, true);
    let w = op.workdir();
    let text: String = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect();
    std::fs::write(w.join("shared.txt"), text).unwrap();
    std::fs::write(w.join(".gitignore"), "/x.txt\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "-q", "-m", "shared"]);
    let r = remote(op);
    git(&w, &["push", "-q", "-u", "origin", "main"]);
    r
}

/// A shell line that waits (up to 90 s) until `main` of the main tree's `shared.txt` says `what`.
fn wait_for_main(op: &Op, what: &str) -> String {
    format!(
        "i=0; until git -C '{}' show main:shared.txt | grep -q '{what}'; do sleep 0.1; i=$((i+1)); [ $i -lt 900 ] || exit 1; done\n",
        op.workdir().display()
    )
}

/// A tool for the sim: resolves conflict markers in `shared.txt` when there are any (keeping
/// both sides), else waits until `main` of the main tree says `wait_for` (when given), then
/// replaces line `line` with `line by <who>`.
fn editor(op: &Op, who: &str, line: &str, wait_for: Option<&str>) -> String {
    let wait = wait_for.map(|w| wait_for_main(op, w)).unwrap_or_default();
    let path = op.root.path().join(format!("edit-{who}.sh"));
    script(
        &path,
        &format!(
            "#!/bin/sh\nif grep -q '^<<<<<<<' shared.txt; then\n  grep -v -e '^<<<<<<<' -e '^=======' -e '^>>>>>>>' shared.txt > shared.tmp && mv shared.tmp shared.txt\n  exit 0\nfi\n{wait}sed -i 's/^{line}$/{line} by {who}/' shared.txt\n"
        ),
    );
    path.display().to_string()
}

fn landed(events: &[(String, serde_json::Value)]) -> usize {
    events.iter().filter(|(k, _)| k == "merge:landed").count()
}

#[tokio::test]
async fn three_chains_editing_one_file_land_one_after_another_and_a_conflict_is_evicted_once() {
    let op = Op::new();
    let r = shared_repo(&op);
    let w = op.workdir();
    let a = editor(&op, "a", "two", None);
    let b = editor(&op, "b", "nine", None);
    // c edits a's line after a has landed: its rebase conflicts.
    let c = editor(&op, "c", "two", Some("two by a"));
    let m = op.write(
        "mission.toml",
        &format!(
            r#"
name = "trio"
concurrency = 3
[defaults]
merge_queue = true
auto_push = true
[[chain]]
name = "a"
task = "Task A"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{a}" }}
[[chain]]
name = "b"
task = "Task B"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{b}" }}
[[chain]]
name = "c"
task = "Task C"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{c}" }}
"#
        ),
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 3);
    for ch in &cs {
        assert_eq!(
            ch.status,
            ChainStatus::Complete,
            "{}: {:?}",
            ch.name,
            ch.reason
        );
        assert!(
            ch.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("landed on main at "),
            "{:?}",
            ch.reason
        );
    }
    // All three are on main (and pushed), each once, and the main tree's files followed.
    let text = std::fs::read_to_string(w.join("shared.txt")).unwrap();
    for l in ["two by a", "nine by b", "two by c"] {
        assert!(text.contains(l), "{text}");
    }
    assert!(
        !text.contains("<<<<<<<") && !text.contains(">>>>>>>"),
        "{text}"
    );
    let log = subjects(&w, "main");
    for name in ["a", "b", "c"] {
        let prefix = format!("operator: {name} session 1:");
        assert_eq!(
            log.iter().filter(|s| s.starts_with(&prefix)).count(),
            1,
            "{log:?}"
        );
    }
    assert_eq!(
        git(&w, &["rev-parse", "main"]),
        git(&r, &["rev-parse", "main"]),
        "main was pushed"
    );
    assert_eq!(
        git(&w, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
    // c was evicted once, with the conflict in its next prompt; a and b never.
    let store = op.store().await;
    for ch in &cs {
        let events = events_in(&op.data_dir(), &ch.id).await;
        assert_eq!(landed(&events), 1, "{}", ch.name);
        let evicted: Vec<&serde_json::Value> = events
            .iter()
            .filter(|(k, _)| k == "merge:evicted")
            .map(|(_, d)| d)
            .collect();
        if ch.name == "c" {
            assert_eq!(evicted.len(), 1, "{evicted:?}");
            assert_eq!(evicted[0]["files"], serde_json::json!(["shared.txt"]));
            assert_eq!(ch.sessions.len(), 2);
            let p = store.session_prompt(&ch.id, 2).await.unwrap().unwrap();
            assert!(
                p.contains("could not be rebased onto `main`")
                    && p.contains("- shared.txt")
                    && p.contains("<<<<<<<")
                    && p.contains("two by a")
                    && p.contains(">>>>>>>"),
                "{p}"
            );
        } else {
            assert!(evicted.is_empty(), "{}: {evicted:?}", ch.name);
            assert_eq!(ch.sessions.len(), 1);
        }
    }
    // The worktrees are gone; the branches stay.
    assert_eq!(git(&w, &["worktree", "list"]).lines().count(), 1);
}

#[tokio::test]
async fn a_gate_that_fails_on_the_rebased_branch_evicts_it_and_max_evictions_ends_merge_failed() {
    let op = Op::new();
    shared_repo(&op);
    let w = op.workdir();
    let a = editor(&op, "a", "two", None);
    // b's gate passes on b's own branch and fails once a has landed, until b writes `fixed`.
    let b_tool = op.root.path().join("b.sh");
    script(
        &b_tool,
        &format!(
            "#!/bin/sh\n{}if grep -q 'two by a' shared.txt; then echo fixed > b.txt; else echo b > b.txt; fi\n",
            wait_for_main(&op, "two by a")
        ),
    );
    let m = op.write(
        "mission.toml",
        &format!(
            r#"
name = "gated"
concurrency = 2
[defaults]
merge_queue = true
[[chain]]
name = "a"
task = "Task A"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{a}" }}
[[chain]]
name = "b"
task = "Task B"
verify = ["! grep -q 'two by a' shared.txt || grep -q fixed b.txt"]
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{}" }}
"#,
            b_tool.display()
        ),
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    let b = cs.iter().find(|c| c.name == "b").unwrap();
    assert_eq!(b.status, ChainStatus::Complete, "{:?}", b.reason);
    assert_eq!(b.sessions.len(), 2);
    let events = events_in(&op.data_dir(), &b.id).await;
    let evicted: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(k, _)| k == "merge:evicted")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(evicted.len(), 1);
    assert!(
        evicted[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("verify failed on the rebased branch"),
        "{evicted:?}"
    );
    let p = op
        .store()
        .await
        .session_prompt(&b.id, 2)
        .await
        .unwrap()
        .unwrap();
    assert!(
        p.contains("was rebased onto `main`") && p.contains("grep -q fixed b.txt"),
        "{p}"
    );
    assert_eq!(
        git(&w, &["show", "main:b.txt"]).trim(),
        "fixed",
        "b landed with its fix"
    );

    // A branch that can never pass on the rebased result: evicted max_evictions times, then
    // merge-failed with its branch kept.
    let op = Op::new();
    shared_repo(&op);
    let w = op.workdir();
    let a = editor(&op, "a", "two", None);
    // b edits a's line after a landed and never resolves the conflict.
    let b_tool = op.root.path().join("b.sh");
    script(
        &b_tool,
        &format!(
            "#!/bin/sh\n{}sed -i 's/^two$/two by b/' shared.txt\necho b >> b.txt\n",
            wait_for_main(&op, "two by a")
        ),
    );
    let m = op.write(
        "mission.toml",
        &format!(
            r#"
name = "doomed"
concurrency = 2
[defaults]
merge_queue = true
max_evictions = 1
[[chain]]
name = "a"
task = "Task A"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{a}" }}
[[chain]]
name = "b"
task = "Task B"
sim = {{ scenario = "incomplete", complete_after = 0, turns = 1, tool = "{}" }}
"#,
            b_tool.display()
        ),
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    let cs = chains(&out);
    let b = cs.iter().find(|c| c.name == "b").unwrap();
    assert_eq!(b.status, ChainStatus::MergeFailed, "{}", stderr(&out));
    let reason = b.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("evicted from the merge queue 1 time(s)")
            && reason.contains("conflict markers left in shared.txt")
            && reason.contains("is kept"),
        "{reason}"
    );
    assert_eq!(out.status.code(), Some(1));
    let suffix = b.id.rsplit('-').next().unwrap();
    let branch = format!("operator/task-b-{suffix}");
    assert!(git(&w, &["branch", "--list", &branch]).contains(&branch));
    assert!(!git(&w, &["show", "main:shared.txt"]).contains("two by b"));
    let events = events_in(&op.data_dir(), &b.id).await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|(k, _)| k == "merge:evicted")
        .filter_map(|(_, d)| d["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["conflict with main in shared.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_mid_queue_resumes_and_lands_the_rest_nothing_twice() {
    let op = Op::new();
    shared_repo(&op);
    let w = op.workdir();
    let mut chains_toml = String::new();
    for name in ["a", "b", "c"] {
        chains_toml.push_str(&format!(
            "[[chain]]\nname = \"{name}\"\ntask = \"Task {name}\"\nsim = {{ scenario = \"incomplete\", complete_after = 0, turns = 1, write = \"{name}.txt\" }}\n"
        ));
    }
    let m = op.write(
        "mission.toml",
        &format!(
            "name = \"killed\"\nconcurrency = 3\n[defaults]\nmerge_queue = true\nverify = [\"sleep 1\"]\n{chains_toml}"
        ),
    );
    // With the dashboard on: the queue shows there.
    let srv = common::api::Server::start_with(
        &op,
        &["run", m.to_str().unwrap(), "--serve", "127.0.0.1:0"],
        &[],
    );
    // Wait until one branch has landed and another waits in the queue.
    let store = op.store().await;
    let mut page = String::new();
    let mid_queue = eventually(Duration::from_secs(120), || {
        let rt = tokio::runtime::Handle::current();
        let all =
            tokio::task::block_in_place(|| rt.block_on(store.list_chains(&Default::default())))
                .unwrap_or_default();
        let merging = all
            .iter()
            .filter(|c| c.status == ChainStatus::Merging)
            .count();
        let main_files = git(&w, &["ls-tree", "--name-only", "main"]);
        let landed = ["a.txt", "b.txt", "c.txt"]
            .iter()
            .filter(|f| main_files.contains(*f))
            .count();
        if landed >= 1 && merging >= 1 {
            page = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let r = srv.http.get(format!("{}/", srv.url)).send().await;
                    match r {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(_) => String::new(),
                    }
                })
            });
            return page.contains("Merge queue");
        }
        false
    });
    assert!(
        mid_queue,
        "the queue never held a branch while another landed"
    );
    assert!(
        page.contains("id=\"merge-queue\"") && page.contains("on main"),
        "{page}"
    );
    let mut srv = srv;
    signal(&srv.child, nix::sys::signal::Signal::SIGKILL);
    srv.child.wait().unwrap();
    // The way back after a crash: the same mission, continued. (A child the operator was
    // forking when it died may hold its lock for a moment.)
    let mut out = op.run(&["run", m.to_str().unwrap(), "--continue", "--json"]);
    for _ in 0..50 {
        if !stderr(&out).contains("another operator") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        out = op.run(&["run", m.to_str().unwrap(), "--continue", "--json"]);
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = op
        .store()
        .await
        .list_chains(&Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    for c in &all {
        assert_eq!(
            c.status,
            ChainStatus::Complete,
            "{}: {:?}",
            c.name,
            c.reason
        );
        let events = events_in(&op.data_dir(), &c.id).await;
        assert!(
            landed(&events) <= 1,
            "{}: landed twice: {:#?}",
            c.name,
            events
                .iter()
                .filter(|(k, _)| k.starts_with("merge:")
                    || k.starts_with("chain:")
                    || k.starts_with("git:"))
                .collect::<Vec<_>>()
        );
    }
    let log = subjects(&w, "main");
    for name in ["a", "b", "c"] {
        let prefix = format!("operator: {name} session 1:");
        assert_eq!(
            log.iter().filter(|s| s.starts_with(&prefix)).count(),
            1,
            "{log:?}"
        );
    }
    let files = git(&w, &["ls-tree", "--name-only", "main"]);
    assert!(
        ["a.txt", "b.txt", "c.txt"]
            .iter()
            .all(|f| files.contains(f)),
        "{files}"
    );
}

const TASKS: &str = "# Tasks\n\nWhat the night shift does, in order.\n\n- [ ] Alpha\n  Make the alpha module.\n- [ ] Beta\n  after: gamma\n- [ ] Gamma\n- [x] Old work\n- [ ] Delta (after: alpha)\n- [ ] Epsilon\n";

/// The commit that carries `Operator-Chain: <id>` last, and what it changed in TASKS.md.
fn finishing_diff(w: &Path, id: &str) -> String {
    let log = git(
        w,
        &[
            "log",
            "--format=%H %(trailers:key=Operator-Chain,valueonly)",
            "main",
        ],
    );
    let sha = log
        .lines()
        .find(|l| l.ends_with(id))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no commit of {id}: {log}"))
        .to_string();
    git(w, &["show", "--format=", &sha, "--", "TASKS.md"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_file_becomes_ordered_chains_checked_off_as_they_finish_and_a_reload_adds_one() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    std::fs::write(w.join("TASKS.md"), TASKS).unwrap();
    git(&w, &["add", "TASKS.md"]);
    git(&w, &["commit", "-q", "-m", "tasks"]);
    let m = op.write(
        "backlog.toml",
        "name = \"nightly\"\nbacklog = \"TASKS.md\"\nconcurrency = 1\n[defaults]\nsim = { scenario = \"incomplete\", complete_after = 0, write = \"work.txt\" }\n",
    );
    let m = m.to_str().unwrap();
    // The plan first: five chains, in order, with their `after`.
    let plan = op.run(&["run", m, "--dry-run"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let text = String::from_utf8_lossy(&plan.stdout);
    for name in ["alpha", "beta", "gamma", "delta", "epsilon"] {
        assert!(text.contains(name), "{text}");
    }
    assert!(
        !text.contains("old-work"),
        "a done item is not planned: {text}"
    );
    assert!(text.contains("Make the alpha module."), "{text}");
    assert!(
        op.store()
            .await
            .list_chains(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    let child = op
        .cmd(&["run", m, "--json"])
        .env("OPERATOR_SIM__STEP", "60ms")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    // Once a session runs, the operator is listening for signals.
    let running = || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(store.list_chains(&Default::default())))
            .is_ok_and(|l| l.iter().any(|c| c.totals.sessions > 0))
    };
    assert!(eventually(Duration::from_secs(60), running));
    // A new item while the run goes on, then a reload: a sixth chain.
    let now = std::fs::read_to_string(w.join("TASKS.md")).unwrap();
    std::fs::write(
        w.join("TASKS.md"),
        format!("{now}- [ ] Zeta\n  The late one.\n"),
    )
    .unwrap();
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    let mut names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["alpha", "beta", "delta", "epsilon", "gamma", "zeta"]
    );
    let by = |n: &str| cs.iter().find(|c| c.name == n).unwrap();
    for c in &cs {
        assert_eq!(
            c.status,
            ChainStatus::Complete,
            "{}: {:?}",
            c.name,
            c.reason
        );
    }
    assert_eq!(by("alpha").task, "Alpha\n\nMake the alpha module.");
    assert_eq!(by("zeta").task, "Zeta\n\nThe late one.");
    // `after:` markers ordered them.
    let ended = |n: &str| by(n).sessions.last().unwrap().ended_at.clone().unwrap();
    let started = |n: &str| by(n).sessions[0].started_at.clone();
    assert!(started("beta") >= ended("gamma"));
    assert!(started("delta") >= ended("alpha"));
    // Every item is ticked, each in the commit that finished its chain.
    let tasks = std::fs::read_to_string(w.join("TASKS.md")).unwrap();
    assert_eq!(tasks.matches("- [x] ").count(), 7, "{tasks}");
    assert!(!tasks.contains("- [ ] "), "{tasks}");
    for c in &cs {
        let title = c.task.lines().next().unwrap();
        let diff = finishing_diff(&w, &c.id);
        assert!(
            diff.contains(&format!("+- [x] {title}")),
            "{}: {diff}",
            c.name
        );
        let events = events_in(&op.data_dir(), &c.id).await;
        assert!(
            events
                .iter()
                .any(|(k, d)| k == "chain:backlog-checked-off" && d["item"] == title),
            "{}",
            c.name
        );
    }
    assert_eq!(git(&w, &["status", "--porcelain", "--", "TASKS.md"]), "");
}

#[tokio::test]
async fn open_issues_with_a_label_become_chains_and_are_closed_when_done() {
    let op = Op::new();
    repo(&op, true);
    let bin = op.root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = op.root.path().join("gh-calls");
    script(
        &bin.join("gh"),
        &format!(
            r#"#!/bin/sh
echo "$*" >> '{}'
case "$1 $2" in
  "issue list") printf '%s\n' '[{{"number":12,"title":"Fix the login","body":"It fails with 500.\nafter: #9"}},{{"number":9,"title":"Add a health check","body":""}}]' ;;
  "issue comment"|"issue close") ;;
  *) echo "unexpected gh call: $*" >&2; exit 2 ;;
esac
"#,
            calls.display()
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let m = op.write(
        "issues.toml",
        "name = \"issues\"\nbacklog = \"gh:label=operator\"\n[defaults]\nsim = { scenario = \"incomplete\", complete_after = 0, write = \"work.txt\" }\n",
    );
    let out = op
        .cmd(&["run", m.to_str().unwrap(), "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    let nine = cs.iter().find(|c| c.name == "issue-9").unwrap();
    let twelve = cs.iter().find(|c| c.name == "issue-12").unwrap();
    assert_eq!(twelve.task, "Fix the login\n\nIt fails with 500.");
    assert!(twelve.sessions[0].started_at >= nine.sessions[0].ended_at.clone().unwrap());
    let calls = lines(&calls);
    assert_eq!(
        calls[0],
        "issue list --label operator --state open --limit 500 --json number,title,body"
    );
    for (n, id) in [("9", &nine.id), ("12", &twelve.id)] {
        let comment = calls
            .iter()
            .position(|c| {
                c.starts_with(&format!(
                    "issue comment {n} --body Done by operator, chain `{id}`"
                ))
            })
            .unwrap_or_else(|| panic!("no comment on #{n}: {calls:?}"));
        let close = calls
            .iter()
            .position(|c| *c == format!("issue close {n}"))
            .unwrap_or_else(|| panic!("#{n} not closed: {calls:?}"));
        assert!(comment < close);
    }
    // A typo in the backlog's value is said, with the file, before anything runs.
    let bad = op.write("bad.toml", "name = \"bad\"\nbacklog = \"../TASKS.md\"\n");
    let out = op.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml")
            && err.contains("backlog")
            && err.contains("inside the mission's workdir"),
        "{err}"
    );
}

#[tokio::test]
async fn backlog_chains_in_worktrees_land_through_the_queue_each_item_ticked_on_main() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    // Adjacent one-line items: each branch ticks its own on the rebased result, so the ticks
    // never conflict.
    std::fs::write(w.join("TASKS.md"), "- [ ] One\n- [ ] Two\n- [ ] Three\n").unwrap();
    git(&w, &["add", "TASKS.md"]);
    git(&w, &["commit", "-q", "-m", "tasks"]);
    let m = op.write(
        "queue.toml",
        "name = \"q\"\nbacklog = \"TASKS.md\"\nconcurrency = 3\n[defaults]\nmerge_queue = true\nsim = { scenario = \"incomplete\", complete_after = 0, write = \"work.txt\" }\n",
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 3);
    for c in &cs {
        assert_eq!(
            c.status,
            ChainStatus::Complete,
            "{}: {:?}",
            c.name,
            c.reason
        );
        let events = events_in(&op.data_dir(), &c.id).await;
        assert_eq!(landed(&events), 1, "{}", c.name);
        assert!(
            !events.iter().any(|(k, _)| k == "merge:evicted"),
            "{}: {events:?}",
            c.name
        );
    }
    assert_eq!(
        git(&w, &["show", "main:TASKS.md"]),
        "- [x] One\n- [x] Two\n- [x] Three\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("TASKS.md")).unwrap(),
        "- [x] One\n- [x] Two\n- [x] Three\n",
        "the main tree followed"
    );
}

#[tokio::test]
async fn a_lone_chain_with_the_merge_queue_works_in_a_worktree_and_lands() {
    let op = Op::new();
    let r = shared_repo(&op);
    let w = op.workdir();
    let m = op.write(
        "lone.toml",
        "name = \"lone\"\n[defaults]\nmerge_queue = true\nauto_push = true\nsim = { scenario = \"incomplete\", complete_after = 1, write = \"lone.txt\" }\n[[chain]]\nname = \"a\"\ntask = \"Alone\"\n",
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete, "{:?}", c.reason);
    assert!(
        c.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("landed on main at ")
    );
    // It worked beside the main tree, which moved only when the branch landed.
    assert_eq!(
        git(&w, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("lone.txt"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert_eq!(
        git(&w, &["rev-parse", "main"]),
        git(&r, &["rev-parse", "main"])
    );
    assert_eq!(git(&w, &["worktree", "list"]).lines().count(), 1);
    // `worktree = "never"` cannot go with it.
    let bad = op.write(
        "bad.toml",
        "name = \"bad\"\n[defaults]\nmerge_queue = true\nworktree = \"never\"\n[[chain]]\nname = \"a\"\ntask = \"x\"\n",
    );
    let out = op.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`merge_queue` lands branches from worktrees"),
        "{}",
        stderr(&out)
    );
}
