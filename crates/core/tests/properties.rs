//! Properties of the state machine over random plans, verdict streams,
//! router failures and operator commands, in simulated time.

mod sim;

use std::time::Duration;

use cutover_core::plan::{self, Plan};
use cutover_core::{Command, Input, Phase, Split, Verdict};
use proptest::prelude::*;
use sim::{Run, Seen, World};

/// A random but valid plan (every policy that bounds time).
fn arb_plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::btree_set(1u16..10_000, 0..6),
        1u64..5,       // interval, seconds
        1u64..6,       // hold, in intervals
        0u64..3,       // bake, in intervals
        0u32..3,       // failure_limit
        0u32..4,       // inconclusive_limit
        any::<bool>(), // judge at end of hold
    )
        .prop_map(|(splits, interval, hold, bake, failure_limit, inconclusive_limit, end)| {
            let steps: Vec<String> = splits
                .into_iter()
                .chain([10_000])
                .map(|bp| format!("{{ split = {}, hold = \"{}s\" }}", f64::from(bp) / 100.0, hold * interval))
                .collect();
            let text = format!(
                "[service]\nname = \"svc\"\n[router]\nkind = \"local\"\nadmin_url = \"http://x\"\n\
                 [strategy]\nsteps = [{}]\nbake = \"{}s\"\n\
                 [analysis]\ninterval = \"{interval}s\"\nfailure_limit = {failure_limit}\ninconclusive_limit = {inconclusive_limit}\njudge = \"{}\"\n\
                 [rollback]\nadapter_deadline = \"3s\"\n",
                steps.join(", "),
                bake * interval,
                if end { "end-of-hold" } else { "continuous" },
            );
            plan::parse(&text, "arb.toml").expect("generated plans are valid")
        })
}

/// Verdicts and router outcomes as pure functions of (step, second), drawn
/// from a random table, plus a few random operator commands.
#[derive(Clone, Debug)]
struct Script {
    verdicts: Vec<u8>,
    router: Vec<u8>,
    commands: Vec<(u64, u8)>,
}

fn arb_script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(0u8..100, 64),
        prop::collection::vec(0u8..100, 64),
        prop::collection::vec((0u64..120_000, 0u8..4), 0..3),
    )
        .prop_map(|(verdicts, router, mut commands)| {
            commands.sort();
            Script {
                verdicts,
                router,
                commands,
            }
        })
}

/// `reads_fail`: reading the router's split fails now and then too. A
/// resumed run reads the split once more than an uninterrupted one, so
/// runs compared for equality keep reads reliable.
fn world(script: &Script, reads_fail: bool) -> World {
    let v = script.verdicts.clone();
    let r = script.router.clone();
    // A pause is always followed by a resume, so every run can end.
    let mut commands = Vec::new();
    for &(at, c) in &script.commands {
        match c {
            0 => commands.push((at, Command::Abort)),
            1 => commands.push((at, Command::Promote)),
            _ => {
                commands.push((at, Command::Pause));
                commands.push((at + 15_000, Command::Resume));
            }
        }
    }
    commands.sort_by_key(|c| c.0);
    World {
        verdict: Box::new(
            move |step, t| match v[(step * 7 + (t / 1000) as usize) % v.len()] {
                0..=79 => Verdict::Pass,
                80..=87 => Verdict::Fail,
                88..=94 => Verdict::Inconclusive,
                _ => Verdict::Error,
            },
        ),
        router_fails: Box::new(move |split, t| {
            match r[(split.basis_points() as usize + (t / 1000) as usize) % r.len()] {
                0..=89 => None,
                90..=97 => Some(true),
                _ => Some(false),
            }
        }),
        read_fails: {
            let r = script.router.clone();
            Box::new(move |t| match r[((t / 1000) as usize * 3) % r.len()] {
                _ if !reads_fail => None,
                0..=93 => None,
                94..=98 => Some(true),
                _ => Some(false),
            })
        },
        lands_anyway: {
            let r = script.router.clone();
            Box::new(move |split, t| {
                r[(split.basis_points() as usize * 7 + (t / 1000) as usize) % r.len()] < 30
            })
        },
        drift: vec![],
        commands,
        has_platform: false,
        // Half the scripts' inconclusive verdicts only wait for data.
        waiting: script.router.first().is_some_and(|x| x % 2 == 0),
    }
}

fn outcome(run: &Run) -> (Phase, Split, Option<cutover_core::Timestamp>) {
    (
        run.rollout.phase.clone(),
        run.rollout.split,
        run.rollout.ended_at,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_run_ends_in_bounds_and_green_rises_only_after_a_pass(plan in arb_plan(), script in arb_script()) {
        let world = world(&script, true);
        let mut bound = plan.worst_case().expect("no pause policy");
        if world.waiting {
            // The plan's worst case counts `wait_for_data` only for checks
            // that may wait; the simulated one may, on every hold.
            let holds = plan.strategy.steps.len() as u32 + u32::from(!plan.strategy.bake.is_zero());
            bound += plan.analysis.wait_for_data * holds;
        }
        let steps = plan.strategy.steps.clone();
        let mut run = Run::start(plan, &world);
        run.finish(&world);
        let r = &run.rollout;

        prop_assert!(r.phase.is_terminal(), "ended in {:?}", r.phase);
        let commands_delay = Duration::from_millis(script.commands.iter().map(|c| c.0 + 15_000).max().unwrap_or(0));
        let took = r.ended_at.unwrap().since(r.started_at.unwrap());
        // A rollback that missed its deadline keeps trying until the router
        // accepts it: by design the one phase without a bound.
        let could_not_restore = run.events.iter().any(|e| e.phase == "cannot-restore");
        prop_assert!(could_not_restore || took <= bound + commands_delay, "took {took:?}, bound {bound:?}");

        if matches!(r.phase, Phase::RolledBack { .. } | Phase::Aborted { .. }) {
            prop_assert_eq!(r.split, Split::ZERO);
        }
        if r.phase == Phase::Succeeded {
            prop_assert_eq!(r.split, Split::FULL);
        }

        // A step advances only on a passing verdict taken once its hold was
        // over: the analysis fed last before step i+1's split lands passed,
        // and was taken at least step i's hold after step i's split landed.
        let mut landed: Option<(usize, u64)> = None;
        let mut last_analysis: Option<(u64, Verdict)> = None;
        let mut promoted_once = false;
        for seen in &run.seen {
            match seen {
                Seen::Fed(_, Input::Command(Command::Promote)) => promoted_once = true,
                Seen::Fed(t, Input::Analysis(obs)) => {
                    last_analysis = Some((*t, cutover_core::verdict::combine(obs)));
                }
                Seen::Applied(t, split) => {
                    let Some(i) = steps.iter().position(|s| s.split == *split) else { continue };
                    match landed {
                        Some((prev, at)) if prev + 1 == i && !promoted_once => {
                            let hold_end = at + steps[prev].hold.as_millis() as u64;
                            prop_assert!(
                                matches!(last_analysis, Some((when, Verdict::Pass)) if when >= hold_end),
                                "step {} began at {t} ms after {last_analysis:?}; step {} landed at {at} ms, hold ends at {hold_end} ms",
                                i + 1, prev + 1
                            );
                        }
                        _ => {}
                    }
                    if landed.is_none_or(|(prev, _)| prev != i) {
                        landed = Some((i, *t));
                    }
                }
                _ => {}
            }
        }

        // Walk what happened: every rise of green's share follows a pass (or
        // the first step, or an operator's promote), never a fail.
        let mut green = Split::ZERO;
        let mut promoted = false;
        let mut failed_since_pass = false;
        for seen in &run.seen {
            match seen {
                Seen::Fed(_, input) => match input {
                        Input::Command(Command::Promote) => promoted = true,
                        Input::Analysis(obs) => {
                            let v = cutover_core::verdict::combine(obs);
                            if v == Verdict::Fail { failed_since_pass = true }
                            if v == Verdict::Pass { failed_since_pass = false }
                        }
                    _ => {}
                },
                Seen::Applied(_, split) => {
                    prop_assert!(split.basis_points() <= 10_000);
                    if *split > green && green != Split::ZERO && !promoted {
                        prop_assert!(!failed_since_pass, "green rose to {split} after a fail");
                    }
                    green = *split;
                }
            }
        }
    }

    #[test]
    fn resuming_from_any_snapshot_ends_as_the_uninterrupted_run(plan in arb_plan(), script in arb_script(), cut in 0usize..400) {
        let world_a = world(&script, false);
        let mut whole = Run::start(plan.clone(), &world_a);
        whole.finish(&world_a);

        let world_b = world(&script, false);
        let mut crashed = Run::start(plan, &world_b);
        for _ in 0..cut {
            if !crashed.step(&world_b) { break; }
        }
        crashed.crash_and_resume();
        crashed.finish(&world_b);
        prop_assert_eq!(outcome(&crashed), outcome(&whole));
    }
}
