//! The judges side by side, in simulated time, through the real state
//! machine: how often each rolls a healthy green back, and how many failed
//! requests a bad green costs before it is at 0 %.
//!
//! ```sh
//! cargo run --release -p cutover-core --example judges            # the full grid
//! cargo run --release -p cutover-core --example judges -- --quick # 1/10 of the canaries
//! ```
//!
//! Every canary is one whole rollout driven by `Rollout::handle`: the
//! plan's steps and holds, its analysis interval and limits, the machine's
//! own decisions. The world: `rps` requests a second, split between the
//! colours as the router has it (a weighted balancer's rounding); each
//! request fails independently, blue's at the baseline rate, green's at the
//! regressed one from the first second on. Each judge sees only what a real
//! check would: per-second counts of each colour, from which it builds its
//! windows or batches. Results go to stdout as a Markdown table; see
//! docs/benchmarks.md ("Judges") for the method and the figures.

#[path = "../tests/rng/mod.rs"]
mod rng;

use std::collections::VecDeque;
use std::time::Duration;

use cutover_core::judge::{Batch, SequentialErrorRate, Settings};
use cutover_core::plan;
use cutover_core::{Action, Input, Observation, Phase, Rollout, Split, Timestamp, Verdict};
use rng::Rng;

const T0: Timestamp = Timestamp(1_700_000_000_000);
/// A rollout that has not ended after this long is cut (and counted as
/// neither rolled back nor promoted).
const CAP_S: u64 = 4 * 3600;

/// One colour's counts in one second.
#[derive(Clone, Copy, Default)]
struct Second {
    green: (u64, u64),
    blue: (u64, u64),
}

/// What a check does at a look: the whole per-second history (newest
/// last), how many of its last seconds are new to it (since the previous
/// look, or after a shift since the split took effect, as the
/// `sequential-error-rate` check reads from the proxy's window), and
/// whether the hold is over.
trait Judge {
    fn look(&mut self, history: &VecDeque<Second>, new: usize, hold_over: bool) -> Observation;
}

/// `error-rate`: green's 5xx share over a sliding window against a
/// threshold, with a minimum of requests (what cutover's threshold check
/// and Flagger's request-success-rate metric do).
struct Threshold {
    max_percent: f64,
    min_requests: u64,
    window_s: usize,
}

impl Judge for Threshold {
    fn look(&mut self, history: &VecDeque<Second>, _: usize, _: bool) -> Observation {
        let (mut n, mut f) = (0, 0);
        for s in history.iter().rev().take(self.window_s) {
            n += s.green.0;
            f += s.green.1;
        }
        if n < self.min_requests.max(1) {
            return Observation::new("threshold", Verdict::Inconclusive, "too few requests");
        }
        let rate = f as f64 * 100.0 / n as f64;
        let v = if rate > self.max_percent {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        Observation::new("threshold", v, format!("{rate:.2} %"))
    }
}

/// `sequential-error-rate`, mapping the test's judgements as the local check does.
struct Sequential {
    test: SequentialErrorRate,
}

impl Judge for Sequential {
    fn look(&mut self, history: &VecDeque<Second>, new: usize, hold_over: bool) -> Observation {
        let mut b = Batch::default();
        for s in history.iter().rev().take(new) {
            b.green_requests += s.green.0;
            b.green_failures += s.green.1;
            b.blue_requests += s.blue.0;
            b.blue_failures += s.blue.1;
        }
        if b.blue_requests == 0 && b.green_requests > 0 {
            self.test
                .observe_green_only(b.green_requests, b.green_failures);
        } else {
            self.test.observe(b);
        }
        self.test.judge(hold_over).observation("seq", hold_over, "")
    }
}

/// A plan under test: the schedule and analysis settings around a judge.
struct Contender {
    name: &'static str,
    /// `[strategy]` and `[analysis]` keys.
    plan: &'static str,
    judge: fn() -> Box<dyn Judge>,
}

fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "reference schedule + error-rate (1 %, 1m window, 100 requests)",
            plan: "preset = \"seed\"\n",
            judge: || Box::new(Threshold { max_percent: 1.0, min_requests: 100, window_s: 60 }),
        },
        Contender {
            name: "examples/local.toml before (canary 10 % 5m, error-rate 1 %, 1m, 100 requests, every 30s)",
            plan: "preset = \"canary\"\nsplit = 10\nhold = \"5m\"\nbake = \"10m\"\n[analysis]\ninterval = \"30s\"\n",
            judge: || Box::new(Threshold { max_percent: 1.0, min_requests: 100, window_s: 60 }),
        },
        Contender {
            name: "Flagger-style (10 % steps every 1m to 50 %, 1 % over 1m, 5 failed checks)",
            plan: "steps = [{ split = 10, hold = \"1m\" }, { split = 20, hold = \"1m\" }, { split = 30, hold = \"1m\" }, { split = 40, hold = \"1m\" }, { split = 50, hold = \"1m\" }, { split = 100, hold = \"1m\" }]\n\
                   [analysis]\ninterval = \"1m\"\nfailure_limit = 4\n",
            judge: || Box::new(Threshold { max_percent: 1.0, min_requests: 10, window_s: 60 }),
        },
        Contender {
            name: "hand-tuned fast (exponential from 1 %, 2s, 10 requests, 1 %)",
            plan: "preset = \"exponential\"\nhold = \"10s\"\n[analysis]\ninterval = \"2s\"\n",
            judge: || Box::new(Threshold { max_percent: 1.0, min_requests: 10, window_s: 2 }),
        },
        Contender {
            name: "examples/local.toml now (canary 10 % 5m, sequential-error-rate, every 30s)",
            plan: "preset = \"canary\"\nsplit = 10\nhold = \"5m\"\nbake = \"10m\"\n[analysis]\ninterval = \"30s\"\n",
            judge: || Box::new(Sequential { test: SequentialErrorRate::new(Settings::default()).expect("defaults") }),
        },
        Contender {
            name: "sequential-error-rate, fast (exponential from 1 %, 10s holds, every 2s)",
            plan: "preset = \"exponential\"\nhold = \"10s\"\n[analysis]\ninterval = \"2s\"\n",
            judge: || Box::new(Sequential { test: SequentialErrorRate::new(Settings::default()).expect("defaults") }),
        },
    ]
}

/// Green's failure rate from blue's.
type Regression = fn(f64) -> f64;

/// How one canary ended.
struct Outcome {
    rolled_back: bool,
    promoted: bool,
    /// Green's failed requests until green was at 0 % (or the end).
    green_failures: u64,
    /// Seconds from the start to 0 % green after a rollback, or to the end.
    seconds: u64,
}

fn plan_of(c: &Contender) -> cutover_core::Plan {
    let text = format!(
        "[service]\nname = \"sim\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n[strategy]\n{}",
        c.plan
    );
    plan::parse(&text, "sim.toml").unwrap_or_else(|e| panic!("{}: {e}", c.name))
}

fn canary(
    plan: &cutover_core::Plan,
    judge: &mut dyn Judge,
    rng: &mut Rng,
    rps: u64,
    blue: f64,
    green: f64,
) -> Outcome {
    let mut r = Rollout::new(plan.clone(), false, T0);
    let mut queue: VecDeque<Action> = r.handle(T0, Input::Start).into();
    let mut router = Split::ZERO;
    let mut history: VecDeque<Second> = VecDeque::with_capacity(4096);
    let mut last_look = 0usize;
    let mut split_at_last_look = None;
    let mut green_failures = 0u64;
    let mut t = 0u64;
    loop {
        while let Some(action) = queue.pop_front() {
            let now = T0.after(Duration::from_secs(t));
            let input = match action {
                Action::Preflight => Input::Preflight(Ok(())),
                Action::Prepare => Input::Prepared(Ok(())),
                Action::Finalize => Input::Finalized(Ok(())),
                Action::ApplySplit(s) => {
                    router = s;
                    Input::SplitApplied {
                        requested: s,
                        realized: s,
                    }
                }
                Action::ReadSplit => Input::SplitRead(router),
                Action::RunAnalysis => {
                    let since = history.len() - last_look;
                    last_look = history.len();
                    let shifted = split_at_last_look
                        .is_some_and(|(s, at)| s != router || at != r.phase_started)
                        || split_at_last_look.is_none();
                    split_at_last_look = Some((router, r.phase_started));
                    let hold_over = r.hold_ends_at().is_some_and(|end| now >= end);
                    let new = if shifted {
                        (now.since(r.phase_started).as_secs() as usize).min(history.len())
                    } else {
                        since
                    };
                    Input::Analysis(vec![judge.look(&history, new, hold_over)])
                }
            };
            queue.extend(r.handle(now, input));
        }
        if r.phase.is_terminal() {
            break;
        }
        if t >= CAP_S {
            return Outcome {
                rolled_back: false,
                promoted: false,
                green_failures,
                seconds: t,
            };
        }
        // One second of traffic at the split in force.
        let share = router.percent() / 100.0;
        let (g, b) = rng.split(rps, share);
        let second = Second {
            green: (g, rng.binomial(g, green)),
            blue: (b, rng.binomial(b, blue)),
        };
        green_failures += second.green.1;
        history.push_back(second);
        t += 1;
        let now = T0.after(Duration::from_secs(t));
        queue.extend(r.handle(now, Input::Tick));
    }
    Outcome {
        rolled_back: matches!(r.phase, Phase::RolledBack { .. }),
        promoted: r.phase == Phase::Succeeded,
        green_failures,
        seconds: t,
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (healthy_runs, bad_runs) = if quick { (1_000, 100) } else { (10_000, 1_000) };
    let rates = [0.001, 0.01, 0.05];
    let traffic = [10u64, 200, 5_000];
    // Regressions: none, 2×, 5×, +30 points.
    let regressions: [(&str, Regression); 4] = [
        ("none", |b| b),
        ("2x", |b| 2.0 * b),
        ("5x", |b| 5.0 * b),
        ("+30 pt", |b| b + 0.30),
    ];
    println!("| judge | blue rate | req/s | green | canaries | rolled back | promoted | failed green requests (median) | time to 0 % green (median) |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for c in contenders() {
        let plan = plan_of(&c);
        for &blue in &rates {
            for &rps in &traffic {
                for (label, regress) in &regressions {
                    let green = regress(blue).min(1.0);
                    let runs = if *label == "none" {
                        healthy_runs
                    } else {
                        bad_runs
                    };
                    let mut rolled = 0;
                    let mut promoted = 0;
                    let mut failures = Vec::new();
                    let mut times = Vec::new();
                    for seed in 0..runs {
                        let mut rng =
                            Rng::new(seed as u64 * 7919 + (rps << 20) + (blue * 1e6) as u64);
                        let mut judge = (c.judge)();
                        let o = canary(&plan, judge.as_mut(), &mut rng, rps, blue, green);
                        rolled += u32::from(o.rolled_back);
                        promoted += u32::from(o.promoted);
                        if o.rolled_back {
                            failures.push(o.green_failures);
                            times.push(o.seconds);
                        }
                    }
                    let share = |n: u32| n as f64 / runs as f64;
                    let show =
                        |m: Option<u64>, unit: &str| m.map_or("-".into(), |m| format!("{m}{unit}"));
                    println!(
                        "| {} | {} % | {rps} | {label} | {runs} | {:.4} | {:.4} | {} | {} |",
                        c.name,
                        blue * 100.0,
                        share(rolled),
                        share(promoted),
                        show(median(failures), ""),
                        show(median(times), " s"),
                    );
                }
            }
        }
    }
}
