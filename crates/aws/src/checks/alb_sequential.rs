//! `alb-sequential-error-rate`: green's target group against blue's, from
//! the ALB's CloudWatch counts (`RequestCount`, `HTTPCode_Target_5XX_Count`,
//! one-minute sums), judged by the anytime-valid sequential test of
//! [`cutover_core::judge`].
//!
//! Each whole minute after a shift is one batch: a minute that began
//! before the split took effect is never counted (it mixes two splits).
//! A minute is read once `settle` has passed since it ended, since ALB
//! publishes a minute's counts with a delay; each minute is read once, in
//! order, and the first minute not yet read is kept with the rollout, so a
//! driver that takes over goes on from there. A missing
//! `HTTPCode_Target_5XX_Count` counts as 0 (ALB publishes nothing when
//! there were none); a minute without `RequestCount` for a colour counts
//! as that colour serving nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use cutover_core::judge::{Batch, SequentialErrorRate, Settings};
use cutover_core::time::Human;
use cutover_core::{Observation, Split, Timestamp, Verdict};
use cutover_engine::ports::{Check, CheckContext};

use super::metrics::{alb_dims, alb_series, read_periods};

/// ALB's metrics come in one-minute periods.
const MINUTE_MS: u64 = 60_000;

/// The check; see the module docs.
pub struct AlbSequentialCheck {
    pub(crate) name: String,
    pub(crate) client: aws_sdk_cloudwatch::Client,
    pub(crate) load_balancer: String,
    pub(crate) target_group: String,
    pub(crate) blue_load_balancer: String,
    pub(crate) blue_target_group: String,
    pub(crate) settle: Duration,
    pub(crate) settings: Settings,
    pub(crate) state: Mutex<Option<State>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct State {
    test: SequentialErrorRate,
    /// The start of the first minute not yet counted.
    next_minute: Timestamp,
    /// When the split the previous look saw took effect.
    split_since: Timestamp,
}

/// The first whole minute at or after `t`.
fn minute_at_or_after(t: Timestamp) -> Timestamp {
    Timestamp(t.as_millis().div_ceil(MINUTE_MS) * MINUTE_MS)
}

/// The minutes from `next` on that have ended at least `settle` before
/// `now`: their end (exclusive), or None when there is none.
fn readable_until(next: Timestamp, now: Timestamp, settle: Duration) -> Option<Timestamp> {
    let settled = now.as_millis().checked_sub(settle.as_millis() as u64)?;
    let end = settled / MINUTE_MS * MINUTE_MS;
    (end > next.as_millis()).then_some(Timestamp(end))
}

impl AlbSequentialCheck {
    /// Green's and blue's counts per minute in `[from, to)`, in order.
    async fn minutes(&self, from: Timestamp, to: Timestamp) -> Result<Vec<Batch>, String> {
        let green = alb_dims(&self.load_balancer, &self.target_group);
        let blue = alb_dims(&self.blue_load_balancer, &self.blue_target_group);
        let series = [
            alb_series(green.clone(), "RequestCount", "Sum"),
            alb_series(green, "HTTPCode_Target_5XX_Count", "Sum"),
            alb_series(blue.clone(), "RequestCount", "Sum"),
            alb_series(blue, "HTTPCode_Target_5XX_Count", "Sum"),
        ];
        let at = |t: Timestamp| UNIX_EPOCH + Duration::from_millis(t.as_millis());
        let read = read_periods(
            &self.client,
            &series,
            Duration::from_secs(60),
            at(from),
            at(to),
        )
        .await?;
        let values: Vec<&BTreeMap<i64, f64>> = read.iter().map(|stats| &stats[0]).collect();
        let count = |i: usize, minute: i64| -> u64 {
            values[i]
                .get(&minute)
                .filter(|v| v.is_finite() && **v > 0.0)
                .map_or(0, |v| v.round() as u64)
        };
        let first = (from.as_millis() / 1000) as i64;
        let last = (to.as_millis() / 1000) as i64;
        Ok((first..last)
            .step_by(60)
            .map(|m| Batch {
                green_requests: count(0, m),
                green_failures: count(1, m),
                blue_requests: count(2, m),
                blue_failures: count(3, m),
            })
            .collect())
    }
}

#[async_trait]
impl Check for AlbSequentialCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &CheckContext) -> Observation {
        let (next, mut note) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.as_ref() {
                Some(st) if st.split_since == ctx.split_since => (st.next_minute, String::new()),
                _ => (
                    minute_at_or_after(ctx.split_since),
                    " (counting from the first whole minute after the split took effect)"
                        .to_string(),
                ),
            }
        };
        let batches = match readable_until(next, ctx.now, self.settle) {
            Some(until) => match self.minutes(next, until).await {
                Ok(b) => Some((until, b)),
                Err(e) => {
                    return Observation::new(
                        &self.name,
                        Verdict::Error,
                        format!(
                            "cannot read the ALB's counts for {} and {}: {e}",
                            self.target_group, self.blue_target_group
                        ),
                    )
                }
            },
            None => None,
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            match SequentialErrorRate::new(self.settings) {
                Ok(test) => {
                    *state = Some(State {
                        test,
                        next_minute: next,
                        split_since: ctx.split_since,
                    })
                }
                Err(e) => {
                    return Observation::new(
                        &self.name,
                        Verdict::Error,
                        format!("unusable judge settings: {e}"),
                    )
                }
            }
        }
        let st = state.as_mut().expect("set above");
        st.split_since = ctx.split_since;
        st.next_minute = next;
        let full = ctx.split == Split::FULL;
        match batches {
            Some((until, minutes)) => {
                for m in minutes {
                    st.test.observe_at(m, full);
                }
                st.next_minute = until;
            }
            None if note.is_empty() => {}
            None => {
                note = format!(
                " (the first whole minute after the split took effect is read {} after it ends)",
                Human(self.settle)
            )
            }
        }
        st.test
            .judge(ctx.hold_is_over())
            .observation(&self.name, ctx.hold_is_over(), &note)
    }

    fn state(&self) -> Option<serde_json::Value> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(state.as_ref()?).ok()
    }

    fn restore(&self, saved: &serde_json::Value) -> Result<(), String> {
        let mut st: State =
            serde_json::from_value(saved.clone()).map_err(|e| format!("unreadable: {e}"))?;
        if st.test.settings() != &self.settings {
            return Err("it was gathered under other settings".into());
        }
        st.test = SequentialErrorRate::restored(st.test)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_minutes_after_the_shift_that_have_settled_are_read() {
        let t = |s: u64| Timestamp(s * 1000);
        assert_eq!(minute_at_or_after(t(600)), t(600));
        assert_eq!(minute_at_or_after(t(601)), t(660));
        let settle = Duration::from_secs(60);
        // The minute [660, 720) is readable from 780 on.
        assert_eq!(readable_until(t(660), t(779), settle), None);
        assert_eq!(readable_until(t(660), t(780), settle), Some(t(720)));
        assert_eq!(readable_until(t(660), t(905), settle), Some(t(840)));
        assert_eq!(readable_until(t(660), t(30), settle), None);
    }
}
