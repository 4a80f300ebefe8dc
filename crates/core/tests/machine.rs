//! The state machine in simulated time: scenarios with exact timings.

mod sim;

use cutover_core::{Command, Phase, Split, Verdict};
use sim::{plan, Run, Seen, World};

fn applied(run: &Run) -> Vec<(u64, f64)> {
    run.seen
        .iter()
        .filter_map(|s| match s {
            Seen::Applied(t, split) => Some((*t / 1000, split.percent())),
            _ => None,
        })
        .collect()
}

fn analyses(run: &Run) -> Vec<u64> {
    run.seen
        .iter()
        .filter_map(|s| match s {
            Seen::Fed(t, cutover_core::Input::Analysis(_)) => Some(*t / 1000),
            _ => None,
        })
        .collect()
}

#[test]
fn seed_walks_the_reference_schedule_and_judges_at_the_end_of_each_hold() {
    let world = World::healthy();
    let mut run = Run::start(plan("[strategy]\npreset = \"seed\"\n"), &world);
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 10.0), (60, 50.0), (120, 100.0)]);
    assert_eq!(analyses(&run), [60, 120, 180]);
    assert_eq!(run.rollout.ended_at.unwrap().since(sim::T0).as_secs(), 180);
}

#[test]
fn continuous_analysis_runs_every_interval_and_adds_a_judgement_at_an_unaligned_hold_end() {
    let world = World::healthy();
    let mut run = Run::start(
        plan("[strategy]\nsteps = [{ split = 5, hold = \"25s\" }, { split = 100, hold = \"10s\" }]\nbake = \"20s\"\n[analysis]\ninterval = \"10s\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 5.0), (25, 100.0)]);
    assert_eq!(analyses(&run), [10, 20, 25, 35, 45, 55]);
}

#[test]
fn a_fail_verdict_rolls_back_at_once_not_at_the_end_of_the_hold() {
    let world = World {
        verdict: Box::new(|step, _| {
            if step == 1 {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"linear\"\nincrement = 25\nhold = \"1m\"\n"),
        &world,
    );
    run.finish(&world);
    assert!(
        matches!(run.rollout.phase, Phase::RolledBack { .. }),
        "{:?}",
        run.rollout.phase
    );
    // Step 2 (50 %) starts at 60 s; its first analysis at 70 s fails and blue gets everything back.
    assert_eq!(applied(&run), [(0, 25.0), (60, 50.0), (70, 0.0)]);
    assert_eq!(run.rollout.split, Split::ZERO);
    let reason = run.rollout.phase.reason().unwrap();
    assert!(
        reason.contains("green failed analysis: sim fail: simulated fail"),
        "{reason}"
    );
}

#[test]
fn failure_limit_tolerates_that_many_fails_and_green_rises_only_after_a_pass() {
    // One fail at 10 s is tolerated; the step still needs a pass after its hold.
    let world = World {
        verdict: Box::new(|_, t| {
            if t == 10_000 {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"20s\"\n[analysis]\nfailure_limit = 1\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 10.0), (20, 100.0)]);
    assert!(run
        .messages()
        .iter()
        .any(|m| m.contains("fail verdict 1 of 1 tolerated")));

    let world = World {
        verdict: Box::new(|_, t| {
            if t >= 10_000 {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[analysis]\nfailure_limit = 1\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(
        applied(&run),
        [(0, 10.0), (20, 0.0)],
        "the second fail rolls back"
    );
}

#[test]
fn inconclusive_verdicts_past_the_limit_roll_back_or_pause() {
    let world = World {
        verdict: Box::new(|_, _| Verdict::Inconclusive),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan(
            "[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[analysis]\ninconclusive_limit = 2\n",
        ),
        &world,
    );
    run.finish(&world);
    assert!(
        matches!(&run.rollout.phase, Phase::RolledBack { reason } if reason.contains("3 inconclusive verdicts in a row"))
    );
    assert_eq!(applied(&run), [(0, 10.0), (30, 0.0)]);

    // Errors count as inconclusive, never as passes; with `pause` the rollout waits at its split.
    let world = World {
        verdict: Box::new(|_, t| {
            if t < 40_000 {
                Verdict::Error
            } else {
                Verdict::Pass
            }
        }),
        commands: vec![(45_000, Command::Resume)],
        ..World::healthy()
    };
    let mut run = Run::start(plan("[strategy]\npreset = \"canary\"\nhold = \"20s\"\n[analysis]\ninconclusive_limit = 1\non_inconclusive = \"pause\"\n"), &world);
    while run.rollout.phase.name() != "paused" {
        assert!(run.step(&world));
    }
    assert_eq!(run.rollout.split.percent(), 10.0);
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    // Paused at 20 s; passes from 40 s do not advance while paused; resumed at 45 s and judged at once.
    assert_eq!(applied(&run), [(0, 10.0), (45, 100.0)]);
}

#[test]
fn transient_router_errors_are_retried_with_backoff_until_the_deadline() {
    let world = World {
        router_fails: Box::new(|split, t| (split.percent() == 100.0 && t < 61_000).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(
        run.rollout.phase,
        Phase::Succeeded,
        "recovered within the 30 s deadline"
    );
    assert_eq!(applied(&run), [(0, 10.0), (61, 100.0)]);

    let world = World {
        router_fails: Box::new(|split, _| (split.percent() == 100.0).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[rollback]\nadapter_deadline = \"5s\"\n"), &world);
    run.finish(&world);
    assert!(
        matches!(&run.rollout.phase, Phase::RolledBack { reason } if reason.contains("router kept failing")),
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(run.rollout.split, Split::ZERO);

    let world = World {
        router_fails: Box::new(|split, _| (split.percent() == 100.0).then_some(false)),
        ..World::healthy()
    };
    let mut run = Run::start(plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[rollback]\non_adapter_failure = \"hold\"\n"), &world);
    run.finish(&world);
    assert!(
        matches!(&run.rollout.phase, Phase::Paused { reason, .. } if reason.contains("router refused 100 %")),
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(run.rollout.split.percent(), 10.0, "held where it was");
}

#[test]
fn the_last_retry_is_at_the_deadline_not_a_back_off_before_it() {
    // The 100 % write fails from 60 s on, with a 30 s deadline: back-offs
    // of 0.2 s doubling to 10 s reach 22.6 s and the next would pass 30 s.
    // The last try is kept for the deadline, so the rollback comes at 90 s,
    // not at 82.6 s.
    let world = World {
        router_fails: Box::new(|split, _| (split.percent() == 100.0).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[rollback]\nadapter_deadline = \"30s\"\n"),
        &world,
    );
    run.finish(&world);
    let rolled_back_at = run
        .seen
        .iter()
        .find_map(|s| match s {
            Seen::Applied(t, split) if *split == Split::ZERO => Some(*t),
            _ => None,
        })
        .expect("rolled back");
    assert!(
        (89_800..=90_000).contains(&rolled_back_at),
        "rolled back at {rolled_back_at} ms"
    );
}

#[test]
fn a_rollback_that_cannot_restore_blue_keeps_trying_loudly_until_it_does() {
    // Green fails at 10 s; the router refuses 0 % until 100 s.
    let world = World {
        verdict: Box::new(|_, _| Verdict::Fail),
        router_fails: Box::new(|split, t| (split == Split::ZERO && t < 100_000).then_some(false)),
        ..World::healthy()
    };
    let mut run = Run::start(plan("[strategy]\npreset = \"canary\"\n"), &world);
    run.finish(&world);
    assert_eq!(
        run.rollout.phase.name(),
        "rolled-back",
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(run.rollout.split, Split::ZERO);
    let m = run.messages();
    // Refused (a permanent error): it says so at once, and where traffic is.
    let cannot = m.iter().find(|m| m.starts_with("CANNOT RESTORE")).unwrap();
    assert!(
        cannot.contains("the router has 10 % on candidate `green`"),
        "{cannot}"
    );
    let tries = m
        .iter()
        .filter(|m| m.starts_with("still cannot restore"))
        .count();
    assert!(tries >= 3, "{m:?}");
    // Retried with back-off (1, 2, 4 ... at most 30 s) until the router works.
    let applied = applied(&run);
    assert_eq!(applied.first(), Some(&(0, 10.0)));
    let (at, split) = *applied.last().unwrap();
    assert_eq!(split, 0.0);
    assert!((100..=131).contains(&at), "restored at {at} s");

    // A failing rollback with transient errors: within `rollback_deadline`
    // of its start it turns into cannot-restore, not a fresh deadline.
    let world = World {
        verdict: Box::new(|_, _| Verdict::Fail),
        router_fails: Box::new(|split, t| (split == Split::ZERO && t < 200_000).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\n[rollback]\nadapter_deadline = \"45s\"\nrollback_deadline = \"20s\"\n"),
        &world,
    );
    while !matches!(run.rollout.phase, Phase::CannotRestore { .. }) {
        assert!(run.step(&world));
    }
    let decided = run
        .events
        .iter()
        .rev()
        .find(|e| e.message.starts_with("CANNOT RESTORE"))
        .unwrap()
        .at;
    // The rollback began at 10 s (the first analysis failed).
    assert!(
        decided.since(sim::T0).as_secs() <= 30,
        "decided at {:?}",
        decided.since(sim::T0)
    );
    // Abort means "keep trying"; rollback --force tries at once.
    let before = run.seen.len();
    let mut rollout = run.rollout.clone();
    let now = run.now;
    let _ = rollout.handle(now, cutover_core::Input::Command(Command::Abort));
    assert!(matches!(rollout.phase, Phase::CannotRestore { .. }));
    let _ = rollout.handle(now, cutover_core::Input::Command(Command::Rollback));
    assert_eq!(rollout.next_wakeup(), Some(now), "forced: tried now");
    assert!(run.seen.len() >= before);
    run.finish(&world);
    assert_eq!(run.rollout.phase.name(), "rolled-back");
}

#[test]
fn a_write_whose_answer_was_lost_is_read_back_and_taken_as_landed() {
    // The shift to 100 % lands but the router answers with an error.
    let world = World {
        router_fails: Box::new(|split, t| (split == Split::FULL && t < 70_000).then_some(true)),
        lands_anyway: Box::new(|_, _| true),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    // One write of 100 %: the failure was resolved by reading, not retried.
    assert_eq!(applied(&run), [(0, 10.0), (60, 100.0)]);
    assert!(run
        .messages()
        .iter()
        .any(|m| m.contains("the write landed though it answered")));
    // A write that did not land is retried, and the split reported is
    // what the router has (10 %), not what was asked.
    let world = World {
        router_fails: Box::new(|split, t| (split == Split::FULL && t < 61_000).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n"),
        &world,
    );
    while run.rollout.retry.is_none() {
        assert!(run.step(&world));
    }
    assert_eq!(run.rollout.split.percent(), 10.0);
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
}

#[test]
fn operator_commands() {
    // Promote at 5 s: straight to 100 %, then the bake.
    let world = World {
        commands: vec![(5_000, Command::Promote)],
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"exponential\"\nbake = \"30s\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 1.0), (5, 100.0)]);
    assert_eq!(run.rollout.ended_at.unwrap().since(sim::T0).as_secs(), 35);

    // Abort at 70 s: all traffic to blue, ends aborted; then retry starts over and succeeds.
    let world = World {
        commands: vec![(70_000, Command::Abort), (80_000, Command::Retry)],
        ..World::healthy()
    };
    let mut run = Run::start(plan("[strategy]\npreset = \"seed\"\n"), &world);
    run.finish(&world);
    assert_eq!(
        applied(&run),
        [
            (0, 10.0),
            (60, 50.0),
            (70, 0.0),
            (80, 10.0),
            (140, 50.0),
            (200, 100.0)
        ]
    );
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert!(run.events.iter().any(|e| e.phase == "aborted"));

    // Pause holds the split past the hold's end; resume lets it advance.
    let world = World {
        commands: vec![(10_000, Command::Pause), (100_000, Command::Resume)],
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"30s\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(applied(&run), [(0, 10.0), (100, 100.0)]);

    // A command that makes no sense is recorded and ignored.
    let world = World {
        commands: vec![(10_000, Command::Resume)],
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"30s\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert!(run
        .messages()
        .iter()
        .any(|m| m.contains("ignored `resume`: not possible while holding")));
}

#[test]
fn a_platform_prepares_green_first_and_retires_blue_after_the_bake() {
    let world = World {
        has_platform: true,
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"all-at-once\"\nhold = \"10s\"\nbake = \"10s\"\n"),
        &world,
    );
    let mut phases = vec![run.rollout.phase.name()];
    while run.step(&world) {
        if phases.last() != Some(&run.rollout.phase.name()) {
            phases.push(run.rollout.phase.name());
        }
    }
    assert_eq!(
        phases,
        [
            "preflight",
            "preparing",
            "shifting",
            "holding",
            "baking",
            "finalizing",
            "succeeded"
        ]
    );
}

#[test]
fn resume_after_a_crash_mid_hold_keeps_the_hold_start() {
    let world = World::healthy();
    let mut run = Run::start(plan("[strategy]\npreset = \"seed\"\n"), &world);
    while run.rollout.phase.name() != "holding" || run.rollout.step != 1 {
        assert!(run.step(&world));
    }
    run.crash_and_resume();
    run.finish(&world);
    assert_eq!(run.rollout.ended_at.unwrap().since(sim::T0).as_secs(), 180);
}

#[test]
fn a_rollout_starts_only_from_all_traffic_on_the_live_target() {
    let world = World::healthy();
    // The candidate already holds everything (a successful rollout ran
    // before): nothing moves, least of all backwards.
    let mut run = Run::start_rollout(
        cutover_core::Rollout::new(plan("[strategy]\npreset = \"seed\"\n"), false, sim::T0),
        Split::FULL,
    );
    run.finish(&world);
    assert!(applied(&run).is_empty(), "{:?}", applied(&run));
    let reason = run.rollout.phase.reason().unwrap();
    assert_eq!(run.rollout.phase.name(), "failed");
    assert!(
        reason.contains("refused before any traffic moved")
            && reason.contains("all traffic on candidate `green`")
            && reason.contains("--swap-colours"),
        "{reason}"
    );

    // Half-way: refused too, with both ways on named.
    let mut run = Run::start_rollout(
        cutover_core::Rollout::new(plan("[strategy]\npreset = \"seed\"\n"), false, sim::T0),
        Split::from_percent(30.0).unwrap(),
    );
    run.finish(&world);
    assert!(applied(&run).is_empty());
    let reason = run.rollout.phase.reason().unwrap();
    assert!(
        reason.contains("30 % on candidate `green`, 70 % on live `blue`")
            && reason.contains("--adopt"),
        "{reason}"
    );
}

#[test]
fn adopt_continues_from_the_split_found() {
    let world = World::healthy();
    let rollout =
        cutover_core::Rollout::new(plan("[strategy]\npreset = \"seed\"\n"), false, sim::T0)
            .adopting();
    let mut run = Run::start_rollout(rollout, Split::from_percent(50.0).unwrap());
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    // 50 % is step 2: it is held as found (no write), then 100 %.
    assert_eq!(applied(&run), [(60, 100.0)]);

    let rollout =
        cutover_core::Rollout::new(plan("[strategy]\npreset = \"seed\"\n"), false, sim::T0)
            .adopting();
    let mut run = Run::start_rollout(rollout, Split::from_percent(30.0).unwrap());
    run.finish(&world);
    assert_eq!(
        applied(&run),
        [(0, 50.0), (60, 100.0)],
        "the next step above"
    );
}

/// Runs until the rollout holds step `step` (0-based).
fn run_to_hold(run: &mut Run, world: &World, step: usize) {
    while !(run.rollout.phase == Phase::Holding && run.rollout.step == step) {
        assert!(run.step(world), "ended before step {step}");
    }
}

#[test]
fn a_router_that_lost_its_split_mid_hold_is_drift_and_the_step_does_not_pass_on_it() {
    // The proxy restarts at 30 s into step 1's hold and comes back at 0 %.
    let world = World {
        drift: vec![(30_000, Split::ZERO)],
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(
        applied(&run),
        [(0, 10.0)],
        "never advanced on verdicts about 0 %"
    );
    assert!(
        matches!(&run.rollout.phase, Phase::Paused { reason, .. } if reason.contains("drift: the router has all traffic on live `blue` where cutover last applied 10 %")),
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(
        run.rollout.split,
        Split::ZERO,
        "reports what the router does"
    );

    // With `on_drift = "rollback"` it rolls back instead.
    let mut run = Run::start(
        plan(
            "[strategy]\npreset = \"canary\"\nhold = \"1m\"\n[rollback]\non_drift = \"rollback\"\n",
        ),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase.name(), "rolled-back");
    assert_eq!(applied(&run), [(0, 10.0), (30, 0.0)]);

    // Resuming applies cutover's split again and the hold starts over.
    let world = World {
        drift: vec![(30_000, Split::ZERO)],
        commands: vec![(50_000, Command::Resume)],
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"1m\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 10.0), (50, 10.0), (110, 100.0)]);
}

#[test]
fn resume_reads_the_router_before_believing_the_record() {
    // Killed at 100 % during the bake; the proxy restarted meanwhile (0 %).
    let world = World::healthy();
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"20s\"\nbake = \"30s\"\n"),
        &world,
    );
    while run.rollout.phase != Phase::Baking {
        assert!(run.step(&world));
    }
    run.router = Split::ZERO;
    run.crash_and_resume();
    run.finish(&world);
    assert_ne!(run.rollout.phase, Phase::Succeeded, "never succeeds at 0 %");
    assert_eq!(run.rollout.phase.name(), "paused");
    assert_eq!(run.rollout.split, Split::ZERO);

    // Killed while a shift was in flight and the shift landed: no second write.
    let mut run = Run::start(plan("[strategy]\npreset = \"seed\"\n"), &world);
    run_to_hold(&mut run, &world, 0);
    while run.rollout.phase != Phase::Shifting {
        assert!(run.step(&world));
    }
    assert_eq!(
        run.queue,
        [cutover_core::Action::ApplySplit(
            Split::from_percent(50.0).unwrap()
        )]
    );
    run.router = Split::from_percent(50.0).unwrap(); // it landed, the answer was lost
    run.crash_and_resume();
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 10.0), (120, 100.0)]);
    assert!(run
        .messages()
        .iter()
        .any(|m| m.contains("the shift in flight landed")));
}

#[test]
fn an_abort_posted_while_no_driver_ran_is_applied_before_any_timer() {
    // The driver dies holding step 1 (10 %); while it is down, the hold
    // ends and an operator posts abort. The resumed driver must go to 0 %,
    // never to step 2's 50 %.
    let world = World::healthy();
    let mut run = Run::start(plan("[strategy]\npreset = \"seed\"\n"), &world);
    run_to_hold(&mut run, &world, 0);
    run.now = run.now.after(std::time::Duration::from_secs(120));
    run.crash_and_resume_with(&[Command::Abort]);
    run.finish(&world);
    assert_eq!(applied(&run), [(0, 10.0), (120, 0.0)]);
    assert_eq!(run.rollout.phase.name(), "aborted");
}

#[test]
fn a_split_nobody_could_read_during_a_hold_never_passes_the_step() {
    // Reads fail from 15 s on: the analyses are inconclusive, never a pass.
    let world = World {
        read_fails: Box::new(|t| (t >= 15_000).then_some(true)),
        ..World::healthy()
    };
    let mut run = Run::start(
        plan("[strategy]\npreset = \"canary\"\nhold = \"30s\"\n[analysis]\ninterval = \"10s\"\n"),
        &world,
    );
    run.finish(&world);
    assert_eq!(applied(&run), [(0, 10.0), (50, 0.0)]);
    let reason = run.rollout.phase.reason().unwrap();
    assert!(
        reason.contains("router error: could not confirm the split in force"),
        "{reason}"
    );
}

#[test]
fn snapshots_of_every_schema_are_read_and_newer_ones_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-v1");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let old: serde_json::Value = serde_json::from_str(&text).unwrap();
        let history = old["history"].as_array().unwrap().len();
        let mut r = cutover_core::Rollout::from_snapshot(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(r.schema, cutover_core::machine::SNAPSHOT_SCHEMA);
        assert_eq!(
            r.phase.name(),
            old["phase"]["phase"].as_str().unwrap(),
            "{}",
            path.display()
        );
        assert_eq!(
            u64::from(r.split.basis_points()),
            old["split"].as_u64().unwrap()
        );
        // The old history becomes the first events of the log, numbered.
        let events = r.take_events();
        assert_eq!(events.len(), history, "{}", path.display());
        assert!(events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1));
        assert_eq!(r.events, history as u64);
        // And it is written back in the new schema, without the history.
        let again = r.to_snapshot();
        assert!(!again.contains("\"history\""));
        assert!(again.len() < 8 * 1024, "{} bytes", again.len());
        assert_eq!(cutover_core::Rollout::from_snapshot(&again).unwrap(), r);
        seen += 1;
    }
    assert!(seen >= 8, "fixtures found: {seen}");

    let newer = r#"{"schema": 99, "phase": {"phase": "pending"}}"#;
    let err = cutover_core::Rollout::from_snapshot(newer).unwrap_err();
    assert!(
        err.to_string()
            .contains("schema 99 was written by a newer cutover"),
        "{err}"
    );
    assert!(cutover_core::Rollout::from_snapshot("[1]").is_err());
}

#[test]
fn a_check_waiting_for_data_extends_the_hold_up_to_wait_for_data_then_does_what_on_wait_expired_says(
) {
    // Too few requests until 50 s, then a pass: the 20 s hold goes on.
    let text = "[strategy]\npreset = \"canary\"\nhold = \"20s\"\n\
                [analysis]\ninterval = \"10s\"\ninconclusive_limit = 1\nwait_for_data = \"1m\"\n";
    let world = World {
        verdict: Box::new(|step, t| {
            if step == 0 && t < 50_000 {
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            }
        }),
        waiting: true,
        ..World::healthy()
    };
    let mut run = Run::start(plan(text), &world);
    run.finish(&world);
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run), [(0, 10.0), (50, 100.0)]);
    let held = run
        .messages()
        .iter()
        .filter(|m| m.starts_with("holding on for more data"))
        .count();
    assert_eq!(held, 4, "at 10, 20, 30 and 40 s: {:?}", run.messages());

    // Never enough: past 20 s + 1 m the step passes by default, saying so.
    let never = || World {
        verdict: Box::new(|_, _| Verdict::Inconclusive),
        waiting: true,
        ..World::healthy()
    };
    let mut run = Run::start(plan(text), &never());
    run.finish(&never());
    assert_eq!(run.rollout.phase, Phase::Succeeded);
    assert_eq!(applied(&run)[..2], [(0, 10.0), (80, 100.0)]);
    assert!(
        run.messages()
            .iter()
            .any(|m| m.starts_with("passed without the data asked for (waited 1m past the hold)")),
        "{:?}",
        run.messages()
    );

    // `on_wait_expired = "inconclusive"`: the looks then count, and the
    // second in a row (limit 1) rolls back.
    let counted = format!("{text}on_wait_expired = \"inconclusive\"\n");
    let mut run = Run::start(plan(&counted), &never());
    run.finish(&never());
    assert!(
        matches!(run.rollout.phase, Phase::RolledBack { .. }),
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(applied(&run), [(0, 10.0), (90, 0.0)]);

    // `pause`: it waits for an operator at 10 %.
    let paused = format!("{text}on_wait_expired = \"pause\"\n");
    let mut run = Run::start(plan(&paused), &never());
    for _ in 0..10_000 {
        if matches!(run.rollout.phase, Phase::Paused { .. }) || !run.step(&never()) {
            break;
        }
    }
    assert!(
        matches!(&run.rollout.phase, Phase::Paused { reason, .. } if reason.starts_with("waited 1m past the hold for enough data")),
        "{:?}",
        run.rollout.phase
    );
    assert_eq!(applied(&run), [(0, 10.0)]);

    // The same verdicts without `waiting` count at once: rolled back at 30 s.
    let world = World {
        verdict: Box::new(|_, _| Verdict::Inconclusive),
        ..World::healthy()
    };
    let mut run = Run::start(plan(text), &world);
    run.finish(&world);
    assert_eq!(applied(&run), [(0, 10.0), (20, 0.0)]);
}
