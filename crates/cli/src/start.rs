//! Starting a rollout of a plan, as `cutover run` and `serve`'s API do it:
//! read the router first, deploy to the idle side when a release is given,
//! refuse anything but all traffic on the live target (unless adopting),
//! and record the rollout.

use cutover_core::plan::Release;
use cutover_core::{Plan, Rollout, Split};
use cutover_engine::store::StoreError;
use cutover_engine::{Engine, EngineError};

/// How to start.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub release: Option<Release>,
    pub label: Option<String>,
    pub adopt: bool,
    pub swap_colours: bool,
}

/// Why a rollout was not started.
#[derive(Debug)]
pub enum StartError {
    /// The plan or the router's state does not allow it; nothing changed.
    Refused(String),
    /// The service has an active rollout.
    Busy(String),
    /// The id is taken (an idempotency key used before).
    Exists,
    /// An adapter or the store failed.
    Failed(String),
}

/// A started rollout, and what was decided on the way.
pub struct Started {
    pub plan: Plan,
    pub notes: Vec<String>,
}

/// Records a new rollout of `plan` under `id`.
pub async fn new_rollout(
    engine: &Engine,
    mut plan: Plan,
    id: &str,
    options: &StartOptions,
) -> Result<Started, StartError> {
    if options.release.is_some() && plan.platform.is_none() {
        return Err(StartError::Refused(
            "an image or task definition needs a `[platform]` in the plan".into(),
        ));
    }
    if options.adopt && options.release.is_some() {
        return Err(StartError::Refused(
            "--adopt cannot be combined with an image or task definition".into(),
        ));
    }
    plan.release = options.release.clone();
    plan.label = options.label.clone();
    if options.swap_colours {
        plan = plan.with_colours_swapped();
    }
    let mut notes = Vec::new();
    let adapters = crate::adapters::build(&plan)
        .await
        .map_err(|e| StartError::Refused(e.message()))?;
    let found = adapters.router.current().await.map_err(|e| {
        StartError::Failed(format!(
            "reading the router's split before moving traffic ({}): {e}",
            adapters.router.describe()
        ))
    })?;
    let mut found = found;
    if plan.release.is_some() && found == Split::FULL && !options.swap_colours {
        // The candidate side serves everything: it is the live version
        // now; deploy to the other side and move traffic there.
        plan = plan.with_colours_swapped();
        let t = plan.targets();
        notes.push(format!(
            "`{}` is live: this rollout deploys to `{}` and moves traffic there",
            t.live, t.candidate
        ));
        found = Split::ZERO;
    }
    if let Some(why) = cutover_core::machine::start_refusal(
        &plan.targets(),
        found,
        options.adopt,
        plan.release.is_some(),
    ) {
        return Err(StartError::Refused(why));
    }
    // What the preflight refuses on its merits is refused here, before a
    // record exists; a transient failure is left to the rollout's own
    // preflight, which retries it.
    let refused: Vec<String> = cutover_engine::driver::preflight(&plan, &adapters)
        .await
        .into_iter()
        .filter(|(_, e)| !e.transient)
        .map(|(what, e)| format!("{what}: {e}"))
        .collect();
    if !refused.is_empty() {
        return Err(StartError::Refused(format!(
            "refused before any traffic moved: preflight: {}",
            refused.join("; ")
        )));
    }
    let mut rollout = Rollout::new(plan.clone(), plan.release.is_some(), engine.now());
    if options.adopt {
        rollout = rollout.adopting();
    }
    match engine.create_rollout(id, rollout).await {
        Ok(_) => Ok(Started { plan, notes }),
        Err(EngineError::Store(StoreError::DuplicateId(_))) => Err(StartError::Exists),
        Err(EngineError::Store(e @ StoreError::ActiveExists { .. })) => {
            Err(StartError::Busy(e.to_string()))
        }
        Err(e) => Err(StartError::Failed(e.to_string())),
    }
}

/// `{service}-{YYYYMMDD}T{HHMMSS}-{pid}`: readable and unique enough, since
/// the store refuses a duplicate id anyway.
pub fn new_id(service: &str, now: cutover_core::Timestamp) -> String {
    let stamp = crate::progress::date_time(now)
        .replace(['-', ':'], "")
        .replace(' ', "T");
    format!("{service}-{stamp}-{:x}", std::process::id())
}

/// The id an idempotency key stands for: the same key (for the same
/// service) always names the same rollout, so the store's refusal of a
/// taken id makes a repeated request find the first one.
pub fn keyed_id(service: &str, key: &str) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{service}-k{h:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keyed_ids_are_stable_and_distinct() {
        assert_eq!(
            super::keyed_id("web", "build-42"),
            super::keyed_id("web", "build-42")
        );
        assert_ne!(
            super::keyed_id("web", "build-42"),
            super::keyed_id("web", "build-43")
        );
        assert_ne!(super::keyed_id("web", "k"), super::keyed_id("api", "k"));
        assert_eq!(super::keyed_id("web", "").len(), "web-k".len() + 16);
    }
}
