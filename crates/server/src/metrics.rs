//! Prometheus metrics of a controller: what it drives and how its adapters
//! behave. Fed by the engine's observer and instruments, the controller's
//! reports and the trigger's poll reports; exposed as text at `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cutover_core::{Event, Phase, Rollout, Timestamp};
use cutover_engine::controller::Happening;
use cutover_engine::driver::Instruments;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    check: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdapterLabel {
    adapter: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// What the controller last saw of a rollout it drives.
struct Seen {
    service: String,
    phase: &'static str,
    step: usize,
    phase_started: Timestamp,
}

pub struct Metrics {
    registry: Registry,
    rollouts: Family<PhaseLabel, Gauge>,
    split: Family<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    verdicts: Family<VerdictLabel, Counter>,
    rollbacks: Family<CauseLabel, Counter>,
    steps: Family<ServiceLabel, Histogram>,
    adapter_seconds: Family<AdapterLabel, Histogram>,
    adapter_errors: Family<AdapterLabel, Counter>,
    takeovers: Counter,
    triggers: Family<OutcomeLabel, Counter>,
    seen: Mutex<HashMap<String, Seen>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cutover");
        let rollouts = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "rollouts",
            "Rollouts this controller drives, by phase",
            rollouts.clone(),
        );
        let split = Family::<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "split_ratio",
            "The candidate's share of traffic (0 to 1) of each service this controller drives",
            split.clone(),
        );
        let verdicts = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "verdicts",
            "Check verdicts, by check and outcome",
            verdicts.clone(),
        );
        let rollbacks = Family::<CauseLabel, Counter>::default();
        registry.register(
            "rollbacks",
            "Rollbacks started, by cause",
            rollbacks.clone(),
        );
        let steps = Family::<ServiceLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ])
        });
        registry.register(
            "step_duration_seconds",
            "How long each step (and the bake) was held",
            steps.clone(),
        );
        let adapter_seconds = Family::<AdapterLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0])
        });
        registry.register(
            "adapter_call_seconds",
            "Latency of router, check, platform and store calls",
            adapter_seconds.clone(),
        );
        let adapter_errors = Family::<AdapterLabel, Counter>::default();
        registry.register(
            "adapter_errors",
            "Router, check, platform and store calls that failed",
            adapter_errors.clone(),
        );
        let takeovers = Counter::default();
        registry.register(
            "lease_takeovers",
            "Rollouts taken over from a driver that stopped",
            takeovers.clone(),
        );
        let triggers = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "trigger_events",
            "Trigger events, by what became of them",
            triggers.clone(),
        );
        Metrics {
            registry,
            rollouts,
            split,
            verdicts,
            rollbacks,
            steps,
            adapter_seconds,
            adapter_errors,
            takeovers,
            triggers,
            seen: Mutex::default(),
        }
    }

    /// The engine observer's half: a rollout was persisted with `events`.
    pub fn observe(&self, id: &str, r: &Rollout, events: &[Event]) {
        for e in events {
            for o in &e.observations {
                self.verdicts
                    .get_or_create(&VerdictLabel {
                        check: o.check.clone(),
                        verdict: o.verdict.to_string(),
                    })
                    .inc();
            }
            if let Some(cause) = e.cause {
                self.rollbacks
                    .get_or_create(&CauseLabel {
                        cause: cause.as_str().into(),
                    })
                    .inc();
            }
        }
        let service = r.plan.service.clone();
        self.split
            .get_or_create(&ServiceLabel {
                service: service.clone(),
            })
            .set(r.split.percent() / 100.0);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let phase = r.phase.name();
        if let Some(before) = seen.get(id) {
            let held = matches!(before.phase, "holding" | "baking");
            let moved = before.step != r.step || before.phase != phase;
            if held && moved && !matches!(r.phase, Phase::Paused { .. }) {
                let now = r.ended_at.unwrap_or(r.phase_started);
                self.steps
                    .get_or_create(&ServiceLabel {
                        service: service.clone(),
                    })
                    .observe(now.since(before.phase_started).as_secs_f64());
            }
            self.rollouts
                .get_or_create(&PhaseLabel {
                    phase: before.phase.into(),
                })
                .dec();
        }
        if r.phase.is_terminal() {
            seen.remove(id);
        } else {
            self.rollouts
                .get_or_create(&PhaseLabel {
                    phase: phase.into(),
                })
                .inc();
            seen.insert(
                id.to_string(),
                Seen {
                    service,
                    phase,
                    step: r.step,
                    phase_started: r.phase_started,
                },
            );
        }
    }

    /// The controller's reports.
    pub fn happening(&self, h: &Happening) {
        match h {
            Happening::Took { orphan: true, .. } => {
                self.takeovers.inc();
            }
            Happening::Ended { id, .. } => {
                // A rollout this controller no longer drives is not counted.
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(before) = seen.remove(id) {
                    self.rollouts
                        .get_or_create(&PhaseLabel {
                            phase: before.phase.into(),
                        })
                        .dec();
                    let _ = before.service;
                }
            }
            _ => {}
        }
    }

    /// Trigger events: `outcome` is received, ignored, stale, duplicate,
    /// claimed (a rollout started), refused, deferred or malformed.
    pub fn trigger(&self, outcome: &str, n: u64) {
        if n > 0 {
            self.triggers
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

impl Instruments for Metrics {
    fn adapter_call(&self, adapter: &str, operation: &str, took: Duration, failed: bool) {
        let label = AdapterLabel {
            adapter: adapter.into(),
            operation: operation.into(),
        };
        self.adapter_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if failed {
            self.adapter_errors.get_or_create(&label).inc();
        }
    }
}
