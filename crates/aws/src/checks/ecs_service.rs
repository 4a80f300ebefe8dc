//! `ecs-service`: green's ECS service runs its desired count, and no
//! green task stopped for a failure since the rollout started (since the
//! check was built).
//!
//! Judging ([`judge_ecs_service`]), in this order:
//! - a task of the service stopped for a failure ([`is_failed_stop`])
//!   since the check was built: fail, naming the task, its stop code,
//!   reason and non-zero container exit codes;
//! - the service is not ACTIVE, its desired count is 0, or its deployment
//!   rollout FAILED: fail;
//! - running == desired: pass;
//! - fewer running while a deployment is in progress (rollout
//!   IN_PROGRESS, more than one deployment, or tasks pending): inconclusive;
//! - fewer running with nothing under way: fail.
//!
//! A stopping task without any stop time yet (or, in emulators, without
//! one at all) is counted as recent: it is stopping now.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ecs::types::{DeploymentRolloutState, DesiredStatus, Service, Task, TaskStopCode};
use aws_smithy_types::DateTime;
use cutover_core::{Observation, Verdict};
use cutover_engine::ports::{AdapterError, Check, CheckContext};

use super::{list_some, sdk_adapter_error, sdk_error_text};

pub struct EcsServiceCheck {
    name: String,
    client: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    since: SystemTime,
}

impl EcsServiceCheck {
    /// `since`: task failures before this instant are not held against green.
    pub fn new(
        name: String,
        client: aws_sdk_ecs::Client,
        cluster: String,
        service: String,
        since: SystemTime,
    ) -> Self {
        EcsServiceCheck {
            name,
            client,
            cluster,
            service,
            since,
        }
    }

    /// The service's name (the last part of an ARN).
    fn service_name(&self) -> &str {
        self.service.rsplit('/').next().unwrap_or(&self.service)
    }

    async fn describe(&self) -> Result<Result<Service, String>, String> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot describe ECS service {} in cluster {}: {}",
                    self.service,
                    self.cluster,
                    sdk_error_text(&e)
                )
            })?;
        if let Some(s) = out.services().first() {
            return Ok(Ok(s.clone()));
        }
        let reason = out
            .failures()
            .first()
            .and_then(|f| f.reason())
            .unwrap_or("not returned");
        Ok(Err(format!(
            "ECS service {} not found in cluster {} ({reason})",
            self.service, self.cluster
        )))
    }

    /// The service's tasks with desired status STOPPED.
    async fn stopped_tasks(&self) -> Result<Vec<Task>, String> {
        let err = |what: &str, e: String| {
            format!(
                "cannot {what} stopped tasks of ECS service {} in cluster {}: {e}",
                self.service, self.cluster
            )
        };
        let mut arns = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_tasks()
                .cluster(&self.cluster)
                .service_name(self.service_name())
                .desired_status(DesiredStatus::Stopped)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| err("list", sdk_error_text(&e)))?;
            arns.extend(out.task_arns().iter().cloned());
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let mut tasks = Vec::new();
        for chunk in arns.chunks(100) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| err("describe", sdk_error_text(&e)))?;
            tasks.extend(out.tasks().iter().cloned());
        }
        // ListTasks filters by service; keep only the service's tasks
        // anyway (their group is `service:NAME`), in case it did not.
        let group = format!("service:{}", self.service_name());
        tasks.retain(|t| t.group().is_none_or(|g| g == group));
        Ok(tasks)
    }
}

/// Whether a stopped task stopped for a failure: it failed to start, an
/// essential container exited with a non-zero code, or a health check
/// (ELB or container) failed. Scale-in, deployments replacing tasks, user
/// stops and spot interruptions are not failures.
pub fn is_failed_stop(task: &Task) -> bool {
    let reason = task
        .stopped_reason()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let nonzero_exit = task
        .containers()
        .iter()
        .any(|c| c.exit_code().is_some_and(|code| code != 0));
    match task.stop_code() {
        Some(TaskStopCode::TaskFailedToStart) => true,
        Some(TaskStopCode::EssentialContainerExited) if nonzero_exit => true,
        _ => {
            reason.contains("health check")
                || (reason.contains("essential container") && nonzero_exit)
                || reason.contains("cannotpullcontainer")
                || reason.contains("resourceinitializationerror")
        }
    }
}

fn stopped_at(task: &Task) -> Option<SystemTime> {
    task.stopped_at()
        .or(task.execution_stopped_at())
        .or(task.stopping_at())
        .and_then(|t: &DateTime| SystemTime::try_from(*t).ok())
}

fn failure_text(task: &Task) -> String {
    let arn = task.task_arn().unwrap_or("?");
    let id = arn.rsplit('/').next().unwrap_or(arn);
    let mut text = format!(
        "task {id} stopped: {}",
        task.stopped_reason().unwrap_or("no reason given")
    );
    if let Some(code) = task.stop_code() {
        text.push_str(&format!(" (stop code {})", code.as_str()));
    }
    let exits: Vec<String> = task
        .containers()
        .iter()
        .filter(|c| c.exit_code().is_some_and(|code| code != 0))
        .map(|c| {
            let mut s = format!(
                "container {} exited {}",
                c.name().unwrap_or("?"),
                c.exit_code().unwrap_or_default()
            );
            if let Some(r) = c.reason() {
                s.push_str(&format!(" ({r})"));
            }
            s
        })
        .collect();
    if !exits.is_empty() {
        text.push_str(&format!(", {}", exits.join(", ")));
    }
    text
}

/// Judges a service from DescribeServices and its stopped tasks; failures
/// stopped before `since` are ignored.
pub fn judge_ecs_service(
    service: &Service,
    stopped: &[Task],
    since: SystemTime,
) -> (Verdict, String) {
    let name = service.service_name().unwrap_or("?");
    let failures: Vec<String> = stopped
        .iter()
        .filter(|t| is_failed_stop(t))
        .filter(|t| stopped_at(t).is_none_or(|at| at >= since))
        .map(failure_text)
        .collect();
    if !failures.is_empty() {
        return (
            Verdict::Fail,
            format!(
                "{} green task(s) of {name} failed since the rollout started: {}",
                failures.len(),
                list_some(&failures, 3)
            ),
        );
    }
    let status = service.status().unwrap_or("ACTIVE");
    if status != "ACTIVE" {
        return (Verdict::Fail, format!("ECS service {name} is {status}"));
    }
    let (running, desired, pending) = (
        service.running_count(),
        service.desired_count(),
        service.pending_count(),
    );
    if desired <= 0 {
        return (
            Verdict::Fail,
            format!("ECS service {name} has a desired count of {desired}: green runs nothing"),
        );
    }
    let deployments = service.deployments();
    if let Some(d) = deployments
        .iter()
        .find(|d| d.rollout_state() == Some(&DeploymentRolloutState::Failed))
    {
        return (
            Verdict::Fail,
            format!(
                "ECS service {name} runs {running} of {desired} desired task(s); its deployment failed: {}",
                d.rollout_state_reason().unwrap_or("no reason given")
            ),
        );
    }
    if running == desired {
        return (
            Verdict::Pass,
            format!("ECS service {name} runs {running} of {desired} desired task(s); no task failed since the rollout started"),
        );
    }
    let in_progress = deployments.len() > 1
        || pending > 0
        || deployments
            .iter()
            .any(|d| d.rollout_state() == Some(&DeploymentRolloutState::InProgress));
    if in_progress {
        let reason = deployments
            .iter()
            .find_map(|d| d.rollout_state_reason())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        (
            Verdict::Inconclusive,
            format!(
                "ECS service {name} runs {running} of {desired} desired task(s) ({pending} pending); deployment in progress{reason}"
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "ECS service {name} runs {running} of {desired} desired task(s) and no deployment is in progress"
            ),
        )
    }
}

#[async_trait]
impl Check for EcsServiceCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, _ctx: &CheckContext) -> Observation {
        let obs = |v, d: String| Observation::new(&self.name, v, d);
        let service = match self.describe().await {
            Ok(Ok(s)) => s,
            Ok(Err(missing)) => return obs(Verdict::Error, missing),
            Err(e) => return obs(Verdict::Error, e),
        };
        let stopped = match self.stopped_tasks().await {
            Ok(t) => t,
            Err(e) => return obs(Verdict::Error, e),
        };
        let (verdict, detail) = judge_ecs_service(&service, &stopped, self.since);
        obs(verdict, detail)
    }

    /// Refuses a service that does not exist (or cannot be read).
    async fn preflight(&self) -> Result<(), AdapterError> {
        match self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
        {
            Ok(out) if !out.services().is_empty() => Ok(()),
            Ok(_) => Err(AdapterError::permanent(format!(
                "ECS service {} not found in cluster {}",
                self.service, self.cluster
            ))),
            Err(e) => Err(sdk_adapter_error(
                format_args!(
                    "cannot describe ECS service {} in cluster {}",
                    self.service, self.cluster
                ),
                &e,
            )),
        }
    }
}
