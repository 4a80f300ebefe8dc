//! One rollout driven by the real engine for a test, with every commit
//! printed (`--nocapture`) and handed to the test as it happens, so a test
//! can wait for a phase or for the first commit after a fault without
//! sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::{Command, Event, Plan, Rollout};
use cutover_engine::store::Store;
use cutover_engine::{Adapters, Clock, Engine, Options};
use tokio::sync::mpsc;

type Commit = (Instant, Rollout, Vec<Event>);

/// A rollout, created, ready to drive.
pub struct Driven {
    pub engine: Arc<Engine>,
    pub id: String,
    pub adapters: Adapters,
    clock: Clock,
    /// Every commit the engine made: when, the rollout, its new events.
    commits: mpsc::UnboundedReceiver<Commit>,
}

impl Driven {
    /// Creates rollout `id` of `plan` in `store`, with an engine ticking
    /// every `tick` on the system clock.
    pub async fn create(
        store: Arc<dyn Store>,
        plan: Plan,
        adapters: Adapters,
        id: &str,
        tick: Duration,
    ) -> Driven {
        let (tx, commits) = mpsc::unbounded_channel();
        let clock = Clock::system();
        let engine = Engine::new(
            store,
            clock,
            "test-driver",
            Options {
                tick,
                ..Options::default()
            },
        )
        .with_observer(Arc::new(move |_, rollout: &Rollout, new: &[Event]| {
            for e in new {
                eprintln!("{} {} {}: {}", e.seq, e.phase, e.split, e.message);
                for o in &e.observations {
                    eprintln!("    {o}");
                }
            }
            let _ = tx.send((Instant::now(), rollout.clone(), new.to_vec()));
        }));
        let has_platform = adapters.platform.is_some();
        engine
            .create(id, plan, has_platform)
            .await
            .expect("the rollout is created");
        Driven {
            engine: Arc::new(engine),
            id: id.to_string(),
            adapters,
            clock,
            commits,
        }
    }

    /// Drives the rollout in the background, to its end (at most 90 s).
    pub fn drive(&self) -> tokio::task::JoinHandle<Rollout> {
        let (engine, id, adapters) = (self.engine.clone(), self.id.clone(), self.adapters.clone());
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(90), engine.drive(&id, &adapters))
                .await
                .expect("the rollout ends within 90 s")
                .expect("the driver ends without an engine error")
        })
    }

    /// Posts an operator command, as `cutover abort` and the API do.
    pub async fn post(&self, command: Command) {
        self.engine
            .store()
            .post_command(&self.id, command, self.engine.now())
            .await
            .expect("the command is posted");
    }

    /// Waits for the first commit (from the last one waited for on) whose
    /// rollout and new events satisfy `want`.
    pub async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&Rollout, &[Event]) -> bool,
    ) -> (Instant, Rollout) {
        let wait = async {
            while let Some((at, rollout, events)) = self.commits.recv().await {
                if want(&rollout, &events) {
                    return (at, rollout);
                }
            }
            panic!("the driver stopped before {what}");
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} within 60 s"))
    }

    /// The first commit made after `after`.
    pub async fn next_after(&mut self, after: Instant) -> (Instant, Rollout) {
        loop {
            let (at, rollout) = self.until("a commit", |_, _| true).await;
            if at > after {
                return (at, rollout);
            }
        }
    }

    /// The rollout's whole history as stored.
    pub async fn history(&self) -> Vec<Event> {
        self.engine
            .store()
            .events(&self.id, 0, usize::MAX)
            .await
            .expect("the history reads")
            .iter()
            .map(|e| cutover_engine::driver::decode_event(e).expect("an event"))
            .collect()
    }

    /// Whether some line of the history contains `text`.
    pub async fn history_says(&self, text: &str) -> bool {
        self.history()
            .await
            .iter()
            .any(|e| e.message.contains(text))
    }

    /// When the first event of `phase` was recorded.
    pub async fn entered(&self, phase: &str) -> Instant {
        let history = self.history().await;
        let e = history
            .iter()
            .find(|e| e.phase == phase)
            .unwrap_or_else(|| panic!("never {phase}"));
        self.clock.instant_of(e.at).into_std()
    }

    /// The rollout as stored now.
    pub async fn stored(&self) -> Rollout {
        self.engine
            .load(&self.id)
            .await
            .expect("the rollout loads")
            .1
    }
}

/// Prints a measured time for the closing figures (`FIGURE what: N ms`).
pub fn figure(what: &str, took: Duration) {
    eprintln!("FIGURE {what}: {} ms", took.as_millis());
}
