//! The least-privilege IAM policy a plan needs (`cutover print iam`).
//!
//! Every action cutover's AWS adapters call for this plan, and nothing
//! else, each on the narrowest resource the API lets a policy name:
//!
//! | what | actions | resource |
//! |---|---|---|
//! | router `route53` | `ChangeResourceRecordSets`, `ListResourceRecordSets` | the hosted zone |
//! | | `GetChange` | `change/*` (change ids are not known in advance) |
//! | router `alb` | `ModifyListener` / `ModifyRule` | the listener / rule |
//! | | `DescribeListeners` / `DescribeRules` | `*` (ELB Describe* take no resource) |
//! | check `target-health` | `DescribeTargetHealth` | `*` |
//! | checks on metrics | `cloudwatch:GetMetricData` | `*` (no resource-level permissions) |
//! | check `alarm` | `cloudwatch:DescribeAlarms` | the alarms' ARNs |
//! | check `ecs-service` | `DescribeServices`; `DescribeTasks`; `ListTasks` | the service; the cluster's tasks; `*` with an `ecs:cluster` condition |
//! | store `dynamodb` | item reads and writes, `DescribeTable` | the table |
//! | platform `ecs` | `UpdateService`, `DescribeServices` | both colours' services |
//! | | `RegisterTaskDefinition`, `DescribeTaskDefinition` | `*` |
//! | | `TagResource` (tags copied on register) | task definitions, only on create |
//! | | `elasticloadbalancing:DescribeTargetHealth` (the idle service's targets) | `*` |
//! | | `iam:PassRole` | roles, only passed to ECS tasks |
//! | trigger `ecs-events` | `sqs:ReceiveMessage`, `sqs:DeleteMessage` | the queue |
//!
//! The account is never in a plan, so ARNs carry `*` for it; the region is
//! the plan's `[aws] region` when set, else `*`. [`notes`] says where a
//! user may narrow further by hand.

use std::collections::{BTreeMap, BTreeSet};

use cutover_core::plan::{CheckConfig, PlatformConfig, RouterConfig, StoreConfig, TriggerConfig};
use cutover_core::Plan;
use serde_json::{json, Value};

/// One statement being built: its actions, resources and condition.
#[derive(Default)]
struct Statement {
    actions: BTreeSet<String>,
    resources: BTreeSet<String>,
    condition: Option<Value>,
}

/// Statements by Sid. Grants under one Sid are merged, so a Sid is only
/// shared by grants where every action may apply to every resource.
#[derive(Default)]
struct Builder {
    statements: BTreeMap<&'static str, Statement>,
}

impl Builder {
    fn allow(&mut self, sid: &'static str, actions: &[&str], resources: &[String]) {
        let s = self.statements.entry(sid).or_default();
        s.actions.extend(actions.iter().map(|a| a.to_string()));
        s.resources.extend(resources.iter().cloned());
    }

    fn allow_if(
        &mut self,
        sid: &'static str,
        actions: &[&str],
        resources: &[String],
        condition: Value,
    ) {
        self.allow(sid, actions, resources);
        if let Some(s) = self.statements.get_mut(sid) {
            s.condition = Some(condition);
        }
    }

    fn build(self) -> Value {
        let statements: Vec<Value> = self
            .statements
            .into_iter()
            .map(|(sid, s)| {
                let mut v = json!({
                    "Sid": sid,
                    "Effect": "Allow",
                    "Action": s.actions.into_iter().collect::<Vec<_>>(),
                    "Resource": s.resources.into_iter().collect::<Vec<_>>(),
                });
                if let Some(c) = s.condition {
                    v["Condition"] = c;
                }
                v
            })
            .collect();
        json!({ "Version": "2012-10-17", "Statement": statements })
    }
}

/// Where ARNs are: partition and region (`*` when the plan names none).
struct Place {
    partition: &'static str,
    region: String,
}

impl Place {
    fn of(plan: &Plan) -> Place {
        let region = plan.aws.region.clone().unwrap_or_else(|| "*".into());
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        Place { partition, region }
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:*:{resource}",
            self.partition, self.region
        )
    }

    /// `service/CLUSTER/NAME`; `cluster` and `service` may be names or ARNs.
    fn ecs_service(&self, cluster: &str, service: &str) -> String {
        if service.starts_with("arn:") {
            return service.to_owned();
        }
        format!(
            "{}:service/{}/{service}",
            self.ecs_prefix(cluster),
            cluster_name(cluster)
        )
    }

    fn ecs_cluster(&self, cluster: &str) -> String {
        if cluster.starts_with("arn:") {
            return cluster.to_owned();
        }
        self.arn("ecs", &format!("cluster/{cluster}"))
    }

    fn ecs_tasks(&self, cluster: &str) -> String {
        format!(
            "{}:task/{}/*",
            self.ecs_prefix(cluster),
            cluster_name(cluster)
        )
    }

    /// `arn:P:ecs:REGION:ACCOUNT`, taken from the cluster's ARN if it is one.
    fn ecs_prefix(&self, cluster: &str) -> String {
        if cluster.starts_with("arn:") {
            if let Some((prefix, _)) = cluster.rsplit_once(":cluster/") {
                return prefix.to_owned();
            }
        }
        format!("arn:{}:ecs:{}:*", self.partition, self.region)
    }
}

fn cluster_name(cluster: &str) -> &str {
    cluster
        .rsplit_once(":cluster/")
        .map_or(cluster, |(_, name)| name)
}

/// The policy document (JSON) granting what `plan` needs.
pub fn policy(plan: &Plan) -> Value {
    let place = Place::of(plan);
    let p = place.partition;
    let mut b = Builder::default();

    match &plan.router {
        RouterConfig::Local(_) => {}
        RouterConfig::Route53(r) => {
            let zone = r
                .hosted_zone_id
                .trim_start_matches("/hostedzone/")
                .to_owned();
            b.allow(
                "Route53Records",
                &[
                    "route53:ChangeResourceRecordSets",
                    "route53:ListResourceRecordSets",
                ],
                &[format!("arn:{p}:route53:::hostedzone/{zone}")],
            );
            b.allow(
                "Route53Changes",
                &["route53:GetChange"],
                &[format!("arn:{p}:route53:::change/*")],
            );
        }
        RouterConfig::Alb(a) => {
            if let Some(listener) = &a.listener_arn {
                b.allow(
                    "AlbListener",
                    &["elasticloadbalancing:ModifyListener"],
                    std::slice::from_ref(listener),
                );
            }
            if let Some(rule) = &a.rule_arn {
                b.allow(
                    "AlbRule",
                    &["elasticloadbalancing:ModifyRule"],
                    std::slice::from_ref(rule),
                );
            }
            b.allow(
                "ElbDescribe",
                &[
                    "elasticloadbalancing:DescribeListeners",
                    "elasticloadbalancing:DescribeRules",
                ],
                &["*".into()],
            );
        }
    }

    for check in &plan.analysis.checks {
        match &check.config {
            CheckConfig::ErrorRate { .. }
            | CheckConfig::SequentialErrorRate { .. }
            | CheckConfig::Latency { .. }
            | CheckConfig::Health
            | CheckConfig::Http { .. }
            | CheckConfig::Prometheus(_) => {}
            CheckConfig::TargetHealth { .. } => b.allow(
                "ElbDescribe",
                &["elasticloadbalancing:DescribeTargetHealth"],
                &["*".into()],
            ),
            CheckConfig::Cloudwatch { .. }
            | CheckConfig::AlbErrorRate { .. }
            | CheckConfig::AlbSequentialErrorRate { .. }
            | CheckConfig::AlbLatency { .. } => b.allow(
                "CloudWatchMetrics",
                &["cloudwatch:GetMetricData"],
                &["*".into()],
            ),
            CheckConfig::Alarm { alarm_names } => {
                let arns: Vec<String> = alarm_names
                    .iter()
                    .map(|n| place.arn("cloudwatch", &format!("alarm:{n}")))
                    .collect();
                b.allow("CloudWatchAlarms", &["cloudwatch:DescribeAlarms"], &arns);
            }
            CheckConfig::EcsService { cluster, service } => {
                b.allow(
                    "EcsReadServices",
                    &["ecs:DescribeServices"],
                    &[place.ecs_service(cluster, service)],
                );
                b.allow(
                    "EcsReadTasks",
                    &["ecs:DescribeTasks"],
                    &[place.ecs_tasks(cluster)],
                );
                let clusters = b
                    .statements
                    .get("EcsListTasks")
                    .and_then(|s| s.condition.as_ref())
                    .and_then(|c| c["ArnEquals"]["ecs:cluster"].as_array().cloned())
                    .unwrap_or_default();
                let mut clusters: BTreeSet<String> = clusters
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect();
                clusters.insert(place.ecs_cluster(cluster));
                b.allow_if(
                    "EcsListTasks",
                    &["ecs:ListTasks"],
                    &["*".into()],
                    json!({ "ArnEquals": { "ecs:cluster": clusters } }),
                );
            }
        }
    }

    match &plan.store {
        StoreConfig::Sqlite { .. } => {}
        StoreConfig::Dynamodb { table } => b.allow(
            "DynamoDbStore",
            &[
                "dynamodb:BatchGetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:DescribeTable",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:UpdateItem",
            ],
            &[place.arn("dynamodb", &format!("table/{table}"))],
        ),
    }

    if let Some(PlatformConfig::Ecs(e)) = &plan.platform {
        b.allow(
            "EcsPlatformServices",
            &["ecs:DescribeServices", "ecs:UpdateService"],
            &[
                place.ecs_service(&e.cluster, &e.blue_service),
                place.ecs_service(&e.cluster, &e.green_service),
            ],
        );
        // prepare waits for the idle service's load-balancer targets to be
        // healthy; DescribeTargetHealth takes no resource-level permissions.
        b.allow(
            "ElbDescribe",
            &["elasticloadbalancing:DescribeTargetHealth"],
            &["*".into()],
        );
        b.allow(
            "EcsTaskDefinitions",
            &["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"],
            &["*".into()],
        );
        b.allow_if(
            "EcsTagNewTaskDefinitions",
            &["ecs:TagResource"],
            &[place.arn("ecs", "task-definition/*")],
            json!({ "StringEquals": { "ecs:CreateAction": "RegisterTaskDefinition" } }),
        );
        b.allow_if(
            "PassTaskRoles",
            &["iam:PassRole"],
            &[format!("arn:{p}:iam::*:role/*")],
            json!({ "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } }),
        );
    }

    if let Some(TriggerConfig::EcsEvents(t)) = &plan.trigger {
        let queue = crate::trigger::queue_arn_from_url(&t.queue_url)
            .map(|arn| {
                if place.partition != "aws" || place.region != "*" {
                    // Prefer the plan's own partition/region for a URL that names none.
                    arn.replace("arn:aws:sqs:*:", &format!("arn:{p}:sqs:{}:", place.region))
                } else {
                    arn
                }
            })
            .unwrap_or_else(|| "*".into());
        b.allow(
            "SqsTriggerQueue",
            &["sqs:DeleteMessage", "sqs:ReceiveMessage"],
            &[queue],
        );
    }

    b.build()
}

/// What the policy cannot pin down by itself, for the user to read (and
/// narrow by hand where they know more than the plan).
pub fn notes(plan: &Plan) -> Vec<String> {
    let mut notes = Vec::new();
    let uses_aws = !matches!(plan.router, RouterConfig::Local(_))
        || matches!(plan.store, StoreConfig::Dynamodb { .. })
        || plan.platform.is_some()
        || plan.trigger.is_some()
        || plan.analysis.checks.iter().any(|c| c.config.reads_aws());
    if !uses_aws {
        notes.push("this plan calls no AWS API; it needs no IAM permissions".into());
        return notes;
    }
    notes.push(
        "ARNs use `*` for the account (a plan does not name it); replace it with yours to narrow further".into(),
    );
    if plan.aws.region.is_none() {
        notes.push(
            "no `[aws] region` in the plan: ARNs use `*` for the region; set it to narrow them"
                .into(),
        );
    }
    if matches!(plan.router, RouterConfig::Alb(_)) || plan.platform.is_some() {
        notes.push("elasticloadbalancing:Describe* support no resource-level permissions: they are granted on `*`".into());
    }
    if plan.analysis.checks.iter().any(|c| {
        matches!(
            c.config,
            CheckConfig::Cloudwatch { .. }
                | CheckConfig::AlbErrorRate { .. }
                | CheckConfig::AlbLatency { .. }
        )
    }) {
        notes.push(
            "cloudwatch:GetMetricData supports no resource-level permissions: granted on `*`"
                .into(),
        );
    }
    if let StoreConfig::Dynamodb { table } = &plan.store {
        notes.push(format!(
            "`cutover init-store` also needs dynamodb:CreateTable on table `{table}` (once, not at run time)"
        ));
    }
    if plan.platform.is_some() {
        notes.push("ecs:RegisterTaskDefinition and DescribeTaskDefinition support no resource-level permissions: granted on `*`".into());
        notes.push("iam:PassRole is granted on every role but only for ECS tasks; narrow it to your task and execution roles' ARNs".into());
    }
    if let Some(TriggerConfig::EcsEvents(t)) = &plan.trigger {
        if crate::trigger::queue_arn_from_url(&t.queue_url).is_none() {
            notes.push(format!(
                "cannot derive the queue's ARN from `{}`: SQS actions are granted on `*`",
                t.queue_url
            ));
        }
        notes.push(
            "the EventBridge rule and queue policy are separate: see `cutover print eventbridge`"
                .into(),
        );
    }
    notes
}
