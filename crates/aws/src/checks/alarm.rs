//! `alarm`: none of the named CloudWatch alarms (metric or composite) is
//! in ALARM.
//!
//! - any in ALARM: fail, naming each with its state reason;
//! - else a named alarm that does not exist: error (a typo must not pass);
//! - else any in INSUFFICIENT_DATA: inconclusive;
//! - else pass.
//!
//! `preflight` refuses the rollout when an alarm is already in ALARM
//! before any traffic moved, or when one does not exist.

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use cutover_core::{Observation, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext};

use super::{list_some, sdk_adapter_error, sdk_error_text};

/// One alarm as DescribeAlarms reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmState {
    pub name: String,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    pub reason: String,
}

pub struct AlarmCheck {
    name: String,
    client: aws_sdk_cloudwatch::Client,
    alarm_names: Vec<String>,
}

impl AlarmCheck {
    pub fn new(name: String, client: aws_sdk_cloudwatch::Client, alarm_names: Vec<String>) -> Self {
        AlarmCheck {
            name,
            client,
            alarm_names,
        }
    }

    /// The states of the named alarms that exist.
    async fn states(
        &self,
    ) -> Result<
        Vec<AlarmState>,
        aws_sdk_cloudwatch::error::SdkError<
            aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsError,
            aws_sdk_cloudwatch::config::http::HttpResponse,
        >,
    > {
        let mut found = Vec::new();
        // DescribeAlarms takes at most 100 names.
        for chunk in self.alarm_names.chunks(100) {
            let mut token = None;
            loop {
                let out = self
                    .client
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .set_next_token(token.take())
                    .send()
                    .await?;
                let state = |s: Option<&StateValue>| s.map_or("?", |s| s.as_str()).to_string();
                for a in out.metric_alarms() {
                    found.push(AlarmState {
                        name: a.alarm_name().unwrap_or_default().to_string(),
                        state: state(a.state_value()),
                        reason: a.state_reason().unwrap_or_default().to_string(),
                    });
                }
                for a in out.composite_alarms() {
                    found.push(AlarmState {
                        name: a.alarm_name().unwrap_or_default().to_string(),
                        state: state(a.state_value()),
                        reason: a.state_reason().unwrap_or_default().to_string(),
                    });
                }
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }
}

/// Judges the named alarms from the states found (names absent from
/// `found` do not exist).
pub fn judge_alarms(names: &[String], found: &[AlarmState]) -> (Verdict, String) {
    let of = |state: &str| -> Vec<&AlarmState> {
        names
            .iter()
            .filter_map(|n| found.iter().find(|a| &a.name == n))
            .filter(|a| a.state == state)
            .collect()
    };
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !found.iter().any(|a| &a.name == *n))
        .cloned()
        .collect();
    let missing_text = || format!("alarm(s) not found: {}", missing.join(", "));
    let alarm = of("ALARM");
    if !alarm.is_empty() {
        let lines: Vec<String> = alarm
            .iter()
            .map(|a| format!("alarm {} is in ALARM: {}", a.name, a.reason))
            .collect();
        let mut detail = list_some(&lines, 5);
        if !missing.is_empty() {
            detail.push_str(&format!("; {}", missing_text()));
        }
        return (Verdict::Fail, detail);
    }
    if !missing.is_empty() {
        return (
            Verdict::Error,
            format!("{} (check the names and the region)", missing_text()),
        );
    }
    let insufficient = of("INSUFFICIENT_DATA");
    if !insufficient.is_empty() {
        let lines: Vec<String> = insufficient
            .iter()
            .map(|a| format!("alarm {} has INSUFFICIENT_DATA: {}", a.name, a.reason))
            .collect();
        return (Verdict::Inconclusive, list_some(&lines, 5));
    }
    let unknown: Vec<String> = names
        .iter()
        .filter_map(|n| found.iter().find(|a| &a.name == n))
        .filter(|a| a.state != "OK")
        .map(|a| format!("alarm {} is in state {}", a.name, a.state))
        .collect();
    if !unknown.is_empty() {
        return (Verdict::Inconclusive, list_some(&unknown, 5));
    }
    (
        Verdict::Pass,
        format!("{} alarm(s) OK: {}", names.len(), names.join(", ")),
    )
}

#[async_trait]
impl Check for AlarmCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        match self.states().await {
            Ok(found) => {
                let (verdict, detail) = judge_alarms(&self.alarm_names, &found);
                Observation::new(&self.name, verdict, detail)
            }
            Err(e) => Observation::new(
                &self.name,
                Verdict::Error,
                format!("cannot describe CloudWatch alarms: {}", sdk_error_text(&e)),
            ),
        }
    }

    async fn preflight(&self) -> Result<(), AdapterError> {
        let found = self
            .states()
            .await
            .map_err(|e| sdk_adapter_error("cannot describe CloudWatch alarms", &e))?;
        let firing: Vec<String> = self
            .alarm_names
            .iter()
            .filter_map(|n| found.iter().find(|a| &a.name == n))
            .filter(|a| a.state == "ALARM")
            .map(|a| {
                format!(
                    "alarm {} is already in ALARM before any traffic moved: {}",
                    a.name, a.reason
                )
            })
            .collect();
        if !firing.is_empty() {
            return Err(AdapterError::permanent(firing.join("; ")));
        }
        let missing: Vec<&str> = self
            .alarm_names
            .iter()
            .filter(|n| !found.iter().any(|a| &a.name == *n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(AdapterError::permanent(format!(
                "alarm(s) not found: {} (check the names and the region)",
                missing.join(", ")
            )));
        }
        Ok(())
    }
}
