//! `operator doctor`: the setup's checks printed, and one tiny real session when asked.

#[allow(unused_imports)]
use super::*;

pub(super) async fn doctor(d: &DoctorArgs, loaded: &config::Loaded, ov: &Overrides) -> Result<u8> {
    let task = "This is `operator doctor` checking the setup. Do not use any tool. Reply with one \
                short sentence, then a `## HANDOFF: COMPLETE` handoff.";
    let mut plan = loaded.plan_for_task(task, ov)?;
    let settings = plan.chains[0].settings.clone();
    let is_root = nix::unistd::Uid::effective().is_root();
    let checks = crate::doctor::checks(
        &settings,
        &loaded.operator.backend(),
        &|k| std::env::var(k).ok(),
        is_root,
        &loaded.operator.data_dir,
    );
    let mut ok = true;
    for c in &checks {
        say!(
            "{} {:<16} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.detail
        );
        ok &= c.ok;
    }
    if d.session {
        if !ok {
            say!("skipping the test session: fix the failures above first");
            return Ok(exit::FAILED);
        }
        let dir = std::env::temp_dir().join(format!("operator-doctor-{}", std::process::id()));
        let result = doctor_session(&mut plan, loaded, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(c) => {
                let s = c.sessions.first();
                let line = s
                    .map(|s| {
                        format!(
                            "{} in {:.1}s, {} turns, ${:.4}{}",
                            s.status.as_str(),
                            s.duration_ms as f64 / 1000.0,
                            s.turns,
                            s.cost_usd,
                            s.error
                                .as_deref()
                                .map(|e| format!(" — {e}"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no session ran".into());
                let good = c.status.is_success();
                say!(
                    "{} {:<16} {}",
                    if good { "ok  " } else { "FAIL" },
                    "test session",
                    line
                );
                ok &= good;
            }
            Err(e) => {
                say!("FAIL {:<16} {e:#}", "test session");
                ok = false;
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}

/// Runs the doctor's one-session chain in a throwaway data dir.
pub(super) async fn doctor_session(
    plan: &mut Plan,
    loaded: &config::Loaded,
    dir: &Path,
) -> Result<ChainRecord> {
    plan.chains[0].settings.max_continuations = 0;
    plan.chains[0].settings.max_turns = 3;
    let opts = RunOptions {
        shutdown_grace: loaded.operator.shutdown_grace,
        backend: loaded.operator.backend(),
        pricing: loaded.operator.pricing.clone(),
        ..RunOptions::new(dir.to_path_buf())
    };
    // The check runs in its own temp dir, never in a fleet's store.
    let store = crate::store::open(dir, None, None).await?;
    let batch = daemon::prepare_new(&store, std::slice::from_ref(plan), &opts).await?;
    let report = daemon::Launch::new(store, opts).run(batch).await?;
    report
        .chains
        .into_iter()
        .next()
        .context("the test chain vanished")
}
