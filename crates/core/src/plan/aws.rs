//! The AWS parts of a plan: plain data, read by `cutover-aws`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[aws]`: where and as whom. Anything unset comes from the standard
/// chain (environment, profile, instance role); no region is assumed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Overrides every AWS endpoint (moto, LocalStack).
    pub endpoint_url: Option<String>,
    /// The SDK's own limits on each HTTP attempt.
    #[serde(default)]
    pub sdk_timeouts: SdkTimeouts,
}

/// The AWS SDK's limits on one HTTP attempt, set explicitly rather than
/// left to the SDK's defaults (which leave reads unbounded): a call that
/// hangs is cut here, retried by the SDK, and bounded as a whole by the
/// plan's `[timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SdkTimeouts {
    /// Establishing the TCP and TLS connection.
    #[serde(with = "crate::time::serde_duration")]
    pub connect: Duration,
    /// Waiting for the first byte of a response. Above SQS's 20 s long
    /// poll, which `cutover watch` uses.
    #[serde(with = "crate::time::serde_duration")]
    pub read: Duration,
    /// One attempt, from sending the request to reading the whole answer.
    #[serde(with = "crate::time::serde_duration")]
    pub attempt: Duration,
}

impl Default for SdkTimeouts {
    fn default() -> Self {
        SdkTimeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(25),
            attempt: Duration::from_secs(30),
        }
    }
}

/// Router `route53`: two weighted records of one name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route53Router {
    pub hosted_zone_id: String,
    /// Fully qualified, e.g. `myservice.example.com.`.
    pub record_name: String,
    /// `A`, `AAAA` or `CNAME`.
    pub record_type: String,
    pub blue_set_identifier: String,
    pub green_set_identifier: String,
    /// Allow holds shorter than the records' TTL (clients would still be on
    /// the previous split when the verdict is taken).
    pub allow_short_holds: bool,
    /// How long to wait for a change to reach INSYNC.
    #[serde(with = "crate::time::serde_duration")]
    pub insync_timeout: Duration,
}

/// Router `alb`: a listener's default action, or one of its rules,
/// forwarding to blue's and green's target groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlbRouter {
    /// Exactly one of `listener_arn` and `rule_arn`.
    pub listener_arn: Option<String>,
    pub rule_arn: Option<String>,
    pub blue_target_group_arn: String,
    pub green_target_group_arn: String,
}

/// A CloudWatch statistic: a standard one or a percentile such as `p99`.
pub const STATISTICS: &[&str] = &["Sum", "Average", "Minimum", "Maximum", "SampleCount"];

/// How green's metric is judged against blue's same metric in the same window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareToBlue {
    /// Blue's dimensions (for ALB shorthands: blue's target group).
    pub blue_dimensions: BTreeMap<String, String>,
    /// Green fails above blue's value times this.
    pub max_ratio: f64,
}

/// `[platform] kind = "ecs"`: one ECS service per colour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EcsPlatform {
    pub cluster: String,
    pub blue_service: String,
    pub green_service: String,
    /// The container whose image is replaced: blue's, and green's too
    /// unless `green_container` names another (`container = { blue =
    /// "blue-app", green = "green-app" }` in the plan).
    pub container: String,
    /// Green's container, when its name differs from blue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub green_container: Option<String>,
    /// How long the idle colour may take to be steady with healthy targets.
    #[serde(with = "crate::time::serde_duration")]
    pub ready_deadline: Duration,
    /// Scale the old colour to 0 this long after the bake; `None`: keep it.
    #[serde(default, with = "super::opt_duration")]
    pub scale_down_after: Option<Duration>,
}

impl EcsPlatform {
    /// The container whose image is replaced on one colour's service.
    pub fn container_of(&self, green: bool) -> &str {
        match (&self.green_container, green) {
            (Some(g), true) => g,
            _ => &self.container,
        }
    }
}

/// `[trigger] kind = "ecs-events"`: ECS task state changes through SQS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EcsEventsTrigger {
    pub queue_url: String,
    /// Only events of this cluster (ARN or name); `None`: any.
    pub cluster: Option<String>,
    /// ECS service names whose tasks trigger (the event's `group` is `service:NAME`).
    pub services: Vec<String>,
    /// Only tasks with a container of one of these names; empty: any.
    pub containers: Vec<String>,
}
