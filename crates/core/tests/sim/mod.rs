//! A simulated world for the state machine: a router, checks and a clock
//! that are plain functions of time, so runs are reproducible and a run can
//! be cut at any input, snapshotted, restored and continued.

#![allow(dead_code)]

use cutover_core::plan::{self, Plan};
use cutover_core::{
    Action, Command, Event, Input, Observation, Rollout, Split, Timestamp, Verdict,
};

pub const T0: Timestamp = Timestamp(1_700_000_000_000);

/// What the world answers, as functions of (step index, time since start).
pub struct World {
    /// Verdict of the analysis taken at `t` (ms since start) during step `step`.
    pub verdict: Box<dyn Fn(usize, u64) -> Verdict>,
    /// Whether applying a split at `t` fails, and if so whether transiently.
    pub router_fails: Box<dyn Fn(Split, u64) -> Option<bool>>,
    /// Whether a write that fails (`router_fails`) landed nonetheless (its
    /// answer lost).
    pub lands_anyway: Box<dyn Fn(Split, u64) -> bool>,
    /// Whether reading the split at `t` fails, and if so whether transiently.
    pub read_fails: Box<dyn Fn(u64) -> Option<bool>>,
    /// Someone else sets the router's split: at each time, to that split.
    pub drift: Vec<(u64, Split)>,
    /// Operator commands, each delivered at the first input at or after its time.
    pub commands: Vec<(u64, Command)>,
    pub has_platform: bool,
    /// An inconclusive verdict only waits for data (`Observation::waiting`).
    pub waiting: bool,
}

impl World {
    pub fn healthy() -> World {
        World {
            verdict: Box::new(|_, _| Verdict::Pass),
            router_fails: Box::new(|_, _| None),
            lands_anyway: Box::new(|_, _| false),
            read_fails: Box::new(|_| None),
            drift: vec![],
            commands: vec![],
            has_platform: false,
            waiting: false,
        }
    }
}

/// One thing that happened, for properties to inspect.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Fed(u64, Input),
    Applied(u64, Split),
}

/// The router's split at the start of a run, unless a test says otherwise.
pub const START_SPLIT: Split = Split::ZERO;

pub struct Run {
    pub rollout: Rollout,
    pub now: Timestamp,
    pub queue: Vec<Action>,
    pub seen: Vec<Seen>,
    /// Every event the rollout recorded, in order (what the store's log holds).
    pub events: Vec<Event>,
    /// The split the simulated router has in force.
    pub router: Split,
    next_command: usize,
    next_drift: usize,
}

impl Run {
    pub fn start(plan: Plan, world: &World) -> Run {
        Run::start_rollout(Rollout::new(plan, world.has_platform, T0), START_SPLIT)
    }

    /// Starts `rollout` against a router that has `router` in force.
    pub fn start_rollout(mut rollout: Rollout, router: Split) -> Run {
        let queue = rollout.handle(T0, Input::Start);
        let events = rollout.take_events();
        Run {
            rollout,
            now: T0,
            queue,
            seen: vec![Seen::Fed(0, Input::Start)],
            events,
            router,
            next_command: 0,
            next_drift: 0,
        }
    }

    fn t(&self) -> u64 {
        self.now.as_millis() - T0.as_millis()
    }

    fn feed(&mut self, input: Input) {
        self.seen.push(Seen::Fed(self.t(), input.clone()));
        let actions = self.rollout.handle(self.now, input);
        self.queue.extend(actions);
        self.events.extend(self.rollout.take_events());
    }

    /// Messages of every event so far.
    pub fn messages(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.message.as_str()).collect()
    }

    /// Performs one step of the world: the next queued action, a due command,
    /// or a jump of the clock to the next wake-up. False once nothing is left.
    pub fn step(&mut self, world: &World) -> bool {
        if let Some(&(at, split)) = world.drift.get(self.next_drift) {
            if at <= self.t() {
                self.next_drift += 1;
                self.router = split;
                return true;
            }
        }
        if let Some(&(at, command)) = world.commands.get(self.next_command) {
            if at <= self.t() {
                self.next_command += 1;
                self.feed(Input::Command(command));
                return true;
            }
        }
        if !self.queue.is_empty() {
            let action = self.queue.remove(0);
            let input = match action {
                Action::Preflight => Input::Preflight(Ok(())),
                Action::Prepare => Input::Prepared(Ok(())),
                Action::Finalize => Input::Finalized(Ok(())),
                Action::ApplySplit(split) => match (world.router_fails)(split, self.t()) {
                    None => {
                        self.seen.push(Seen::Applied(self.t(), split));
                        self.router = split;
                        Input::SplitApplied {
                            requested: split,
                            realized: split,
                        }
                    }
                    Some(transient) => {
                        if (world.lands_anyway)(split, self.t()) {
                            self.seen.push(Seen::Applied(self.t(), split));
                            self.router = split;
                        }
                        Input::ApplyFailed {
                            requested: split,
                            message: "simulated router failure".into(),
                            transient,
                        }
                    }
                },
                Action::ReadSplit => match (world.read_fails)(self.t()) {
                    None => Input::SplitRead(self.router),
                    Some(transient) => Input::ReadFailed {
                        message: "simulated read failure".into(),
                        transient,
                    },
                },
                Action::RunAnalysis => {
                    let v = (world.verdict)(self.rollout.step, self.t());
                    Input::Analysis(vec![if v == Verdict::Inconclusive && world.waiting {
                        Observation::waiting("sim", "simulated: too few requests yet")
                    } else {
                        Observation::new("sim", v, format!("simulated {v}"))
                    }])
                }
            };
            self.feed(input);
            return true;
        }
        let wake = self.rollout.next_wakeup();
        let command_at = world
            .commands
            .get(self.next_command)
            .map(|&(at, _)| at)
            .into_iter()
            .chain(world.drift.get(self.next_drift).map(|&(at, _)| at))
            .min()
            .map(|at| Timestamp(T0.as_millis() + at));
        let next = match (wake, command_at) {
            (Some(w), Some(c)) => w.min(c),
            (w, c) => match w.or(c) {
                Some(n) => n,
                None => return false,
            },
        };
        if self.rollout.phase.is_terminal() && command_at.is_none() {
            return false;
        }
        self.now = self.now.max(next);
        self.feed(Input::Tick);
        true
    }

    /// Runs until nothing is left to do; panics if that takes absurdly many steps.
    pub fn finish(&mut self, world: &World) {
        for _ in 0..100_000 {
            if !self.step(world) {
                return;
            }
        }
        panic!("run did not finish: {:?}", self.rollout.phase);
    }

    /// A crash: everything in flight is lost, the snapshot is all that is left.
    pub fn crash_and_resume(&mut self) {
        self.crash_and_resume_with(&[]);
    }

    /// A crash, then a resume that finds `commands` posted meanwhile.
    pub fn crash_and_resume_with(&mut self, commands: &[Command]) {
        let snapshot = self.rollout.to_snapshot();
        let mut restored = Rollout::from_snapshot(&snapshot).expect("reads its own snapshot");
        assert_eq!(restored, self.rollout, "snapshot round-trips");
        let posted: Vec<(u64, Command)> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| (restored.last_command_seq + i as u64 + 1, *c))
            .collect();
        self.queue = restored.resume(self.now, &posted);
        self.events.extend(restored.take_events());
        self.rollout = restored;
    }
}

pub fn plan(body: &str) -> Plan {
    let text = format!(
        "[service]\nname = \"svc\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n{body}"
    );
    plan::parse(&text, "sim.toml").unwrap_or_else(|e| panic!("{e}"))
}
