//! The ECS platform: one ECS service per colour. Before traffic moves, the
//! new version goes on the idle colour's service, scaled like the live one,
//! and cutover waits until that service is steady and its load-balancer
//! targets are healthy; after the bake, the old colour may be scaled to
//! zero.
//!
//! Ready means both, within one deadline (the shorter of the engine's and
//! the plan's `ready_deadline`):
//! - steady: one deployment, on the new revision, running its desired
//!   count ([`EcsPlatform::prepare`]);
//! - healthy targets: in every target group the service registers its tasks
//!   with (its `loadBalancers`), at least the desired count of targets
//!   `healthy` and none `initial`, `unhealthy`, `unused`, `unavailable` or
//!   without a state; `draining` targets (old tasks leaving) are ignored.
//!   ECS counts a task as running before the load balancer's health checks
//!   pass, so steady alone does not mean green can take traffic. A service
//!   without a target group (no load balancer, e.g. behind Route53 with
//!   service discovery) is ready once steady.
//!
//! Which colour is live is decided by traffic, not by name: the colour with
//! at least half of it ([`live_colour`], fed the router's current split).
//! After a rollout that ended at 100 % green, green is live and the next
//! deploy goes to blue's service, and so on, back and forth.
//!
//! With [`NewVersion::Image`], the idle service's current task definition
//! is copied with only the image of the plan's `container` replaced, and
//! registered as a new revision of the idle service's own family (so
//! settings particular to a colour, e.g. its log group, are kept). With
//! [`NewVersion::TaskDefinition`] the given task definition is used as is.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{Service, TaskDefinition, TaskDefinitionField};
use aws_sdk_elasticloadbalancingv2::types::{TargetHealthDescription, TargetHealthStateEnum};
use cutover_core::plan::EcsPlatform as EcsPlatformConfig;
use cutover_core::Split;
use cutover_engine::ports::{AdapterError, Platform};
use tokio::time::Instant;

use crate::checks::target_health::{state_of, target_state_text};
use crate::checks::{list_some, sdk_adapter_error};
use crate::trigger::sdk_error;

/// A colour's role in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }
}

/// The live colour is the one with the traffic: green once it has at least
/// 50 % of it, else blue. The idle colour (the other) gets the new version.
pub fn live_colour(green_share: Split) -> Colour {
    if green_share.basis_points() >= 5_000 {
        Colour::Green
    } else {
        Colour::Blue
    }
}

/// What goes on the idle colour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewVersion {
    /// Replace the image of the plan's container in the idle service's
    /// current task definition; register that as a new revision.
    Image(String),
    /// Use this task definition (ARN or `family:revision`) as is.
    TaskDefinition(String),
}

/// The default interval between two looks at the idle service (and its
/// targets).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// [`Platform`] on two ECS services.
pub struct EcsPlatform {
    ecs: aws_sdk_ecs::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    config: EcsPlatformConfig,
    new_version: NewVersion,
    live: Colour,
    poll_interval: Duration,
}

impl EcsPlatform {
    /// Blue is taken as live until [`EcsPlatform::with_live`] says otherwise.
    /// ECS and ELBv2 (target health) are both reached through `sdk`.
    pub fn new(
        config: &EcsPlatformConfig,
        sdk: &aws_config::SdkConfig,
        new_version: NewVersion,
    ) -> EcsPlatform {
        EcsPlatform {
            ecs: aws_sdk_ecs::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            config: config.clone(),
            new_version,
            live: Colour::Blue,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// Sets the live colour (see [`live_colour`]); the other one is prepared.
    pub fn with_live(mut self, live: Colour) -> EcsPlatform {
        self.live = live;
        self
    }

    /// How often the idle service and its targets are looked at while
    /// waiting for them.
    pub fn with_poll_interval(mut self, interval: Duration) -> EcsPlatform {
        self.poll_interval = interval;
        self
    }

    pub fn live(&self) -> Colour {
        self.live
    }

    /// The ECS service of a colour.
    pub fn service(&self, colour: Colour) -> &str {
        match colour {
            Colour::Blue => &self.config.blue_service,
            Colour::Green => &self.config.green_service,
        }
    }

    async fn describe_service(&self, name: &str) -> Result<Service, AdapterError> {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.config.cluster)
            .services(name)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    &format!(
                        "describing ECS service `{name}` in cluster `{}`",
                        self.config.cluster
                    ),
                    e,
                )
            })?;
        let found = out
            .services
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.status.as_deref() != Some("INACTIVE"));
        found.ok_or_else(|| {
            let why = out
                .failures
                .unwrap_or_default()
                .into_iter()
                .find_map(|f| f.reason)
                .unwrap_or_else(|| "INACTIVE".into());
            AdapterError::permanent(format!(
                "ECS service `{name}` not found in cluster `{}` ({why})",
                self.config.cluster
            ))
        })
    }

    async fn describe_task_definition(
        &self,
        arn: &str,
    ) -> Result<(TaskDefinition, Vec<aws_sdk_ecs::types::Tag>), AdapterError> {
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("describing task definition `{arn}`"), e))?;
        let def = out
            .task_definition
            .ok_or_else(|| AdapterError::permanent(format!("task definition `{arn}` not found")))?;
        Ok((def, out.tags.unwrap_or_default()))
    }

    /// Registers a copy of `base` with only the container's image replaced;
    /// returns the new ARN. Reuses `base` when it already has that image.
    async fn register_with_image(
        &self,
        base_arn: &str,
        image: &str,
        container: &str,
    ) -> Result<String, AdapterError> {
        let (base, tags) = self.describe_task_definition(base_arn).await?;
        let mut containers = base.container_definitions.clone().unwrap_or_default();
        let Some(target) = containers
            .iter_mut()
            .find(|c| c.name.as_deref() == Some(container))
        else {
            let names: Vec<_> = containers.iter().filter_map(|c| c.name.clone()).collect();
            return Err(AdapterError::permanent(format!(
                "task definition `{base_arn}` has no container `{container}` (it has {names:?}); \
                 check `[platform] container` (one name per colour: `container = {{ blue = \"...\", green = \"...\" }}`)"
            )));
        };
        if target.image.as_deref() == Some(image) {
            tracing::info!(task_definition = %base_arn, image, "the idle service already runs this image");
            return Ok(base
                .task_definition_arn
                .unwrap_or_else(|| base_arn.to_owned()));
        }
        target.image = Some(image.to_owned());
        let family = base.family.clone().ok_or_else(|| {
            AdapterError::permanent(format!("task definition `{base_arn}` has no family"))
        })?;
        let out = self
            .ecs
            .register_task_definition()
            .family(&family)
            .set_task_role_arn(base.task_role_arn)
            .set_execution_role_arn(base.execution_role_arn)
            .set_network_mode(base.network_mode)
            .set_container_definitions(Some(containers))
            .set_volumes(base.volumes.filter(|v| !v.is_empty()))
            .set_placement_constraints(base.placement_constraints.filter(|v| !v.is_empty()))
            .set_requires_compatibilities(base.requires_compatibilities.filter(|v| !v.is_empty()))
            .set_cpu(base.cpu)
            .set_memory(base.memory)
            .set_tags(Some(tags).filter(|t| !t.is_empty()))
            .set_pid_mode(base.pid_mode)
            .set_ipc_mode(base.ipc_mode)
            .set_proxy_configuration(base.proxy_configuration)
            .set_ephemeral_storage(base.ephemeral_storage)
            .set_runtime_platform(base.runtime_platform)
            .set_enable_fault_injection(base.enable_fault_injection)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    &format!("registering a new revision of `{family}` with image `{image}`"),
                    e,
                )
            })?;
        out.task_definition
            .and_then(|d| d.task_definition_arn)
            .ok_or_else(|| {
                AdapterError::permanent(format!(
                    "registering a new revision of `{family}`: no ARN in the answer"
                ))
            })
    }

    /// Describes how far the service is from steady, or `None` when steady.
    fn unsteady(service: &Service, task_definition: &str) -> Result<Option<String>, AdapterError> {
        let deployments = service.deployments.as_deref().unwrap_or_default();
        if let Some(primary) = deployments
            .iter()
            .find(|d| d.status.as_deref() == Some("PRIMARY"))
        {
            if primary.rollout_state.as_ref().map(|s| s.as_str()) == Some("FAILED") {
                return Err(AdapterError::permanent(format!(
                    "ECS deployment of `{task_definition}` failed: {}",
                    primary
                        .rollout_state_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                )));
            }
        }
        let current = service.task_definition.as_deref().unwrap_or_default();
        if !same_task_definition(current, task_definition) {
            return Ok(Some(format!("runs `{current}`, not `{task_definition}`")));
        }
        if deployments.len() != 1 || service.running_count != service.desired_count {
            return Ok(Some(format!(
                "{} deployment(s), {} of {} tasks running",
                deployments.len(),
                service.running_count,
                service.desired_count
            )));
        }
        Ok(None)
    }

    /// Describes why the service's targets cannot take traffic yet (every
    /// target group that is not ready, see [`unready_targets`]), or `None`
    /// when all of `target_groups` are ready. An error reading a target
    /// group ends the wait; a group that does not exist is permanent.
    async fn unhealthy_targets(
        &self,
        target_groups: &[&str],
        desired: i32,
    ) -> Result<Option<String>, AdapterError> {
        let mut reasons = Vec::new();
        for &arn in target_groups {
            let out = self
                .elb
                .describe_target_health()
                .target_group_arn(arn)
                .send()
                .await
                .map_err(|e| {
                    sdk_adapter_error(
                        format_args!("describing the health of target group `{arn}`"),
                        &e,
                    )
                })?;
            if let Some(why) = unready_targets(arn, out.target_health_descriptions(), desired) {
                reasons.push(why);
            }
        }
        Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
    }
}

/// The distinct target groups a service registers its tasks with, in the
/// order of its `loadBalancers` (a Classic Load Balancer, named rather than
/// reached through a target group, has none).
fn target_groups(service: &Service) -> Vec<&str> {
    let mut groups: Vec<&str> = Vec::new();
    for arn in service
        .load_balancers()
        .iter()
        .filter_map(|lb| lb.target_group_arn())
    {
        if !groups.contains(&arn) {
            groups.push(arn);
        }
    }
    groups
}

/// Whether one target group can take the idle colour's traffic, from its
/// DescribeTargetHealth answer: `None` when at least `desired` targets are
/// `healthy` and none is `initial`, `unhealthy`, `unused`, `unavailable`,
/// without a state or in a state unknown here; else a sentence naming the
/// group and each offending target with its reason and description.
/// `draining` targets (old tasks leaving the group) are ignored.
fn unready_targets(
    target_group: &str,
    targets: &[TargetHealthDescription],
    desired: i32,
) -> Option<String> {
    use TargetHealthStateEnum as S;
    let count = |s: &S| targets.iter().filter(|d| state_of(d) == Some(s)).count();
    let healthy = count(&S::Healthy);
    let draining = count(&S::Draining);
    let required = usize::try_from(desired).unwrap_or(0);
    let bad: Vec<String> = targets
        .iter()
        .filter(|d| !matches!(state_of(d), Some(S::Healthy | S::Draining)))
        .map(target_state_text)
        .collect();
    if bad.is_empty() && healthy >= required {
        return None;
    }
    let draining_note = if draining > 0 {
        format!("; {draining} draining (ignored)")
    } else {
        String::new()
    };
    let counts = format!("{healthy} healthy, {required} required{draining_note}");
    Some(if bad.is_empty() {
        format!("target group `{target_group}`: {counts}")
    } else {
        format!(
            "target group `{target_group}`: {} of {} target(s) not healthy: {}; {counts}",
            bad.len(),
            targets.len() - draining,
            list_some(&bad, 5)
        )
    })
}

/// What the idle colour is still waiting for.
enum Waiting {
    /// The service to be steady; why it is not.
    Steady(String),
    /// The service is steady; why its targets cannot take traffic yet.
    Targets(String),
}

/// Whether the service's task definition `current` (an ARN) is `wanted`
/// (an ARN, `family:N`, or `family` for its latest revision).
fn same_task_definition(current: &str, wanted: &str) -> bool {
    let short = |s: &str| {
        s.rsplit_once(":task-definition/")
            .map_or(s, |(_, r)| r)
            .to_owned()
    };
    let (current, wanted) = (short(current), short(wanted));
    current == wanted
        || (!wanted.contains(':')
            && current
                .rsplit_once(':')
                .is_some_and(|(family, _)| family == wanted))
}

#[async_trait]
impl Platform for EcsPlatform {
    fn describe(&self) -> String {
        let idle = self.live.other();
        let what = match &self.new_version {
            NewVersion::Image(image) => format!("image `{image}`"),
            NewVersion::TaskDefinition(def) => format!("task definition `{def}`"),
        };
        format!(
            "ECS cluster `{}`: {what} on {} service `{}` (idle; ready once steady, with healthy \
             targets if behind a load balancer); {} service `{}` is live",
            self.config.cluster,
            idle.name(),
            self.service(idle),
            self.live.name(),
            self.service(self.live),
        )
    }

    /// Registers the revision (for an image), points the idle service at it
    /// with the live service's desired count, and waits until the idle
    /// service is steady (one deployment, on that revision, running its
    /// desired count) and then until the targets of each of its target
    /// groups are healthy (at least the desired count, none initial or
    /// unhealthy; see [`unready_targets`]). A service without a target group
    /// is ready once steady. Looks every poll interval, at most the shorter
    /// of `deadline` (the engine's) and the plan's `ready_deadline`, then
    /// fails with what it was still waiting for; a deployment that ECS
    /// marks FAILED (circuit breaker) or a target group that does not exist
    /// ends the wait at once.
    async fn prepare(&self, deadline: Duration) -> Result<(), AdapterError> {
        let deadline = deadline.min(self.config.ready_deadline);
        let until = Instant::now() + deadline;
        let (live_name, idle_name) = (self.service(self.live), self.service(self.live.other()));
        let live = self.describe_service(live_name).await?;
        let idle = self.describe_service(idle_name).await?;
        let desired = live.desired_count;
        if desired <= 0 {
            return Err(AdapterError::permanent(format!(
                "live ECS service `{live_name}` wants {desired} tasks; nothing to mirror on `{idle_name}`"
            )));
        }
        let task_definition = match &self.new_version {
            NewVersion::TaskDefinition(def) => def.clone(),
            NewVersion::Image(image) => {
                let base = idle.task_definition.as_deref().ok_or_else(|| {
                    AdapterError::permanent(format!(
                        "ECS service `{idle_name}` has no task definition"
                    ))
                })?;
                let idle = self.live.other();
                let container = self.config.container_of(idle == Colour::Green);
                self.register_with_image(base, image, container).await?
            }
        };
        tracing::info!(service = idle_name, task_definition = %task_definition, desired, "updating the idle service");
        self.ecs
            .update_service()
            .cluster(&self.config.cluster)
            .service(idle_name)
            .task_definition(&task_definition)
            .desired_count(desired)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    &format!("updating ECS service `{idle_name}` to `{task_definition}`"),
                    e,
                )
            })?;
        loop {
            let service = self.describe_service(idle_name).await?;
            let waiting = match Self::unsteady(&service, &task_definition)? {
                Some(why) => Waiting::Steady(why),
                None => {
                    let groups = target_groups(&service);
                    if groups.is_empty() {
                        tracing::info!(
                            service = idle_name,
                            "the idle service has no load-balancer target group: ready once steady"
                        );
                        return Ok(());
                    }
                    match self.unhealthy_targets(&groups, desired).await? {
                        None => {
                            tracing::info!(service = idle_name, target_groups = ?groups, "the idle service is steady and its targets are healthy");
                            return Ok(());
                        }
                        Some(why) => Waiting::Targets(why),
                    }
                }
            };
            let now = Instant::now();
            if now >= until {
                return Err(AdapterError::permanent(match waiting {
                    Waiting::Steady(why) => format!(
                        "ECS service `{idle_name}` not steady on `{task_definition}` within {deadline:?}: {why}"
                    ),
                    Waiting::Targets(why) => format!(
                        "ECS service `{idle_name}` steady on `{task_definition}` but its targets not healthy within {deadline:?}: {why}"
                    ),
                }));
            }
            match &waiting {
                Waiting::Steady(why) => {
                    tracing::debug!(service = idle_name, state = %why, "waiting for the idle service to be steady")
                }
                Waiting::Targets(why) => {
                    tracing::debug!(service = idle_name, state = %why, "waiting for the idle service's targets to be healthy")
                }
            }
            tokio::time::sleep(self.poll_interval.min(until - now)).await;
        }
    }

    /// Scales the colour that was live before this rollout to 0, after the
    /// plan's `scale_down_after`; does nothing (and says so) when unset.
    async fn finalize(&self) -> Result<(), AdapterError> {
        let old = self.service(self.live);
        let Some(after) = self.config.scale_down_after else {
            tracing::info!(
                service = old,
                "scale_down_after not set: the old colour keeps running"
            );
            return Ok(());
        };
        tokio::time::sleep(after).await;
        tracing::info!(service = old, "scaling the old colour to 0");
        self.ecs
            .update_service()
            .cluster(&self.config.cluster)
            .service(old)
            .desired_count(0)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("scaling ECS service `{old}` to 0"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_with_the_traffic_is_live() {
        assert_eq!(live_colour(Split::ZERO), Colour::Blue);
        assert_eq!(
            live_colour(Split::from_percent(49.99).unwrap()),
            Colour::Blue
        );
        assert_eq!(
            live_colour(Split::from_percent(50.0).unwrap()),
            Colour::Green
        );
        assert_eq!(live_colour(Split::FULL), Colour::Green);
        assert_eq!(Colour::Green.other(), Colour::Blue);
    }

    #[test]
    fn steady_means_one_deployment_of_the_new_revision_fully_running() {
        use aws_sdk_ecs::types::{Deployment, DeploymentRolloutState};
        let def = "arn:aws:ecs:us-east-1:1:task-definition/app:3";
        let primary = Deployment::builder().status("PRIMARY").task_definition(def);
        let service = |running: i32, deployments: Vec<Deployment>| {
            Service::builder()
                .task_definition(def)
                .desired_count(3)
                .running_count(running)
                .set_deployments(Some(deployments))
                .build()
        };
        let steady = service(3, vec![primary.clone().build()]);
        assert_eq!(EcsPlatform::unsteady(&steady, "app:3").unwrap(), None);
        let starting = service(1, vec![primary.clone().build()]);
        assert_eq!(
            EcsPlatform::unsteady(&starting, def).unwrap().unwrap(),
            "1 deployment(s), 1 of 3 tasks running"
        );
        let draining = service(
            3,
            vec![
                primary.clone().build(),
                Deployment::builder().status("ACTIVE").build(),
            ],
        );
        assert!(EcsPlatform::unsteady(&draining, def).unwrap().is_some());
        assert!(EcsPlatform::unsteady(&steady, "app:4")
            .unwrap()
            .unwrap()
            .contains("not `app:4`"));
        let failed = service(
            0,
            vec![primary
                .rollout_state(DeploymentRolloutState::Failed)
                .rollout_state_reason("tasks failed to start")
                .build()],
        );
        let err = EcsPlatform::unsteady(&failed, def).unwrap_err();
        assert!(!err.transient && err.message.contains("tasks failed to start"));
    }

    fn target(
        id: &str,
        state: Option<TargetHealthStateEnum>,
        reason: Option<aws_sdk_elasticloadbalancingv2::types::TargetHealthReasonEnum>,
        description: Option<&str>,
    ) -> TargetHealthDescription {
        use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealth};
        TargetHealthDescription::builder()
            .target(TargetDescription::builder().id(id).port(8080).build())
            .target_health(
                TargetHealth::builder()
                    .set_state(state)
                    .set_reason(reason)
                    .set_description(description.map(str::to_owned))
                    .build(),
            )
            .build()
    }

    const TG: &str =
        "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web-green/943f017f100becff";

    #[test]
    fn targets_are_ready_when_enough_are_healthy_and_none_is_not() {
        use aws_sdk_elasticloadbalancingv2::types::TargetHealthReasonEnum as R;
        use TargetHealthStateEnum as S;
        let healthy = |id: &str| target(id, Some(S::Healthy), None, None);
        let draining = target(
            "10.0.0.9",
            Some(S::Draining),
            Some(R::DeregistrationInProgress),
            None,
        );
        let three = [
            healthy("10.0.0.1"),
            healthy("10.0.0.2"),
            healthy("10.0.0.3"),
        ];
        assert_eq!(unready_targets(TG, &three, 3), None);
        assert_eq!(unready_targets(TG, &three, 2), None);
        // Old tasks leaving the group are neither counted nor held against it.
        let mut with_draining = three.to_vec();
        with_draining.push(draining.clone());
        assert_eq!(unready_targets(TG, &with_draining, 3), None);

        let unhealthy = target(
            "10.0.0.5",
            Some(S::Unhealthy),
            Some(R::ResponseCodeMismatch),
            Some("Health checks failed with these codes: [502]"),
        );
        assert_eq!(
            unready_targets(
                TG,
                &[healthy("10.0.0.1"), unhealthy.clone(), healthy("10.0.0.2")],
                2
            )
            .unwrap(),
            format!(
                "target group `{TG}`: 1 of 3 target(s) not healthy: target 10.0.0.5:8080 unhealthy \
                 (Target.ResponseCodeMismatch: Health checks failed with these codes: [502]); \
                 2 healthy, 2 required"
            )
        );

        // Enough healthy targets, but one still in its first health checks.
        let initial = target(
            "10.0.0.6",
            Some(S::Initial),
            Some(R::RegistrationInProgress),
            Some("Target registration is in progress"),
        );
        let mut pending = three.to_vec();
        pending.push(initial);
        let why = unready_targets(TG, &pending, 3).unwrap();
        assert!(
            why.contains("1 of 4 target(s) not healthy: target 10.0.0.6:8080 initial (Elb.RegistrationInProgress: Target registration is in progress); 3 healthy, 3 required"),
            "{why}"
        );

        for (state, text) in [
            (Some(S::Unused), "unused"),
            (Some(S::Unavailable), "unavailable"),
            (None, "without a state"),
            (Some(S::from("confused")), "confused"),
        ] {
            let mut targets = three.to_vec();
            targets.push(target("10.0.0.7", state, None, None));
            let why = unready_targets(TG, &targets, 3).unwrap();
            assert!(
                why.contains(&format!("target 10.0.0.7:8080 {text}; 3 healthy")),
                "{why}"
            );
        }
    }

    #[test]
    fn too_few_healthy_targets_are_not_ready_and_counts_are_told() {
        use TargetHealthStateEnum as S;
        let healthy = |id: &str| target(id, Some(S::Healthy), None, None);
        assert_eq!(
            unready_targets(TG, &[], 3).unwrap(),
            format!("target group `{TG}`: 0 healthy, 3 required")
        );
        let draining = target("10.0.0.9", Some(S::Draining), None, None);
        assert_eq!(
            unready_targets(TG, &[healthy("10.0.0.1"), draining, healthy("10.0.0.2")], 3).unwrap(),
            format!("target group `{TG}`: 2 healthy, 3 required; 1 draining (ignored)")
        );
        // A count below one asks for no healthy target, never panics.
        assert_eq!(unready_targets(TG, &[], 0), None);
        assert_eq!(unready_targets(TG, &[], -1), None);

        // Many offending targets: a few named, the rest counted.
        let unused: Vec<_> = (1..=8)
            .map(|i| target(&format!("10.0.1.{i}"), Some(S::Unused), None, None))
            .collect();
        let why = unready_targets(TG, &unused, 2).unwrap();
        assert!(
            why.starts_with(&format!(
                "target group `{TG}`: 8 of 8 target(s) not healthy: target 10.0.1.1:8080 unused;"
            )) && why.ends_with("; and 3 more; 0 healthy, 2 required"),
            "{why}"
        );
    }

    #[test]
    fn target_groups_are_read_once_each_from_the_load_balancers() {
        use aws_sdk_ecs::types::LoadBalancer;
        let by_group = |arn: &str, port: i32| {
            LoadBalancer::builder()
                .target_group_arn(arn)
                .container_name("app")
                .container_port(port)
                .build()
        };
        let service = Service::builder()
            .load_balancers(by_group("tg-a", 8080))
            .load_balancers(
                LoadBalancer::builder()
                    .load_balancer_name("classic")
                    .build(),
            )
            .load_balancers(by_group("tg-b", 8080))
            .load_balancers(by_group("tg-a", 9090))
            .build();
        assert_eq!(target_groups(&service), ["tg-a", "tg-b"]);
        assert!(target_groups(&Service::builder().build()).is_empty());
    }

    #[test]
    fn task_definitions_compare_by_family_and_revision() {
        assert!(same_task_definition(
            "arn:aws:ecs:us-east-1:1:task-definition/app:3",
            "app:3"
        ));
        assert!(!same_task_definition(
            "arn:aws:ecs:us-east-1:1:task-definition/app:3",
            "app:4"
        ));
        assert!(same_task_definition(
            "arn:aws:ecs:us-east-1:1:task-definition/app:3",
            "app"
        ));
        assert!(!same_task_definition(
            "arn:aws:ecs:us-east-1:1:task-definition/app:3",
            "ap"
        ));
    }
}
