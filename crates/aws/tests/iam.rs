//! The least-privilege policy for two plans, action by action and resource
//! by resource.

use cutover_aws::iam::{notes, policy};
use serde_json::{json, Value};

fn plan(text: &str) -> cutover_core::Plan {
    cutover_core::plan::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// `(Sid, actions, resources, condition)`.
type Stmt = (String, Vec<String>, Vec<String>, Option<Value>);

fn statements(policy: &Value) -> Vec<Stmt> {
    assert_eq!(policy["Version"], "2012-10-17");
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["Effect"], "Allow");
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned())
                    .collect()
            };
            (
                s["Sid"].as_str().unwrap().to_owned(),
                strings(&s["Action"]),
                strings(&s["Resource"]),
                s.get("Condition").cloned(),
            )
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn a_route53_plan_needs_its_zone_its_changes_and_its_alarms() {
    let p = plan(
        r#"
[service]
name = "web"

[aws]
region = "us-east-1"

[router]
kind = "route53"
hosted_zone_id = "Z0123456789ABCDEFGHIJ"
record_name = "web.example.com."

[strategy]
preset = "seed"

[[analysis.checks]]
kind = "alarm"
alarm_names = ["web-5xx", "web-latency"]

[[analysis.checks]]
kind = "cloudwatch"
namespace = "AWS/ApplicationELB"
metric_name = "HTTPCode_Target_5XX_Count"
dimensions = { TargetGroup = "targetgroup/web-green/943f017f100becff" }
statistic = "Sum"
max = 10
"#,
    );
    let got = statements(&policy(&p));
    let expected = vec![
        (
            "CloudWatchAlarms".to_owned(),
            s(&["cloudwatch:DescribeAlarms"]),
            s(&[
                "arn:aws:cloudwatch:us-east-1:*:alarm:web-5xx",
                "arn:aws:cloudwatch:us-east-1:*:alarm:web-latency",
            ]),
            None,
        ),
        (
            "CloudWatchMetrics".to_owned(),
            s(&["cloudwatch:GetMetricData"]),
            s(&["*"]),
            None,
        ),
        (
            "Route53Changes".to_owned(),
            s(&["route53:GetChange"]),
            s(&["arn:aws:route53:::change/*"]),
            None,
        ),
        (
            "Route53Records".to_owned(),
            s(&[
                "route53:ChangeResourceRecordSets",
                "route53:ListResourceRecordSets",
            ]),
            s(&["arn:aws:route53:::hostedzone/Z0123456789ABCDEFGHIJ"]),
            None,
        ),
    ];
    assert_eq!(got, expected);
    let notes = notes(&p);
    assert!(
        notes.iter().any(|n| n.contains("GetMetricData")),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("no `[aws] region`")),
        "{notes:?}"
    );
}

#[test]
fn an_alb_dynamodb_ecs_plan_gets_exact_actions_and_resources() {
    let listener = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";
    let p = plan(&format!(
        r#"
[service]
name = "web"

[router]
kind = "alb"
listener_arn = "{listener}"
blue_target_group_arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web-blue/73e2d6bc24d8a067"
green_target_group_arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web-green/943f017f100becff"

[strategy]
preset = "canary"
split = 10
hold = "2m"
bake = "5m"

[analysis]
interval = "1m"

[[analysis.checks]]
kind = "target-health"

[[analysis.checks]]
kind = "ecs-service"

[platform]
kind = "ecs"
cluster = "prod"
blue_service = "web-blue"
green_service = "web-green"
container = "app"
ready_deadline = "10m"
scale_down_after = "15m"

[trigger]
kind = "ecs-events"
queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/cutover-events"
services = ["web-green", "web-blue"]

[store]
kind = "dynamodb"
table = "cutover"
"#
    ));
    let got = statements(&policy(&p));
    let expected = vec![
        (
            "AlbListener".to_owned(),
            s(&["elasticloadbalancing:ModifyListener"]),
            s(&[listener]),
            None,
        ),
        (
            "DynamoDbStore".to_owned(),
            s(&[
                "dynamodb:BatchGetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:DescribeTable",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:UpdateItem",
            ]),
            s(&["arn:aws:dynamodb:*:*:table/cutover"]),
            None,
        ),
        (
            "EcsListTasks".to_owned(),
            s(&["ecs:ListTasks"]),
            s(&["*"]),
            Some(json!({"ArnEquals": {"ecs:cluster": ["arn:aws:ecs:*:*:cluster/prod"]}})),
        ),
        (
            "EcsPlatformServices".to_owned(),
            s(&["ecs:DescribeServices", "ecs:UpdateService"]),
            s(&[
                "arn:aws:ecs:*:*:service/prod/web-blue",
                "arn:aws:ecs:*:*:service/prod/web-green",
            ]),
            None,
        ),
        (
            "EcsReadServices".to_owned(),
            s(&["ecs:DescribeServices"]),
            s(&["arn:aws:ecs:*:*:service/prod/web-green"]),
            None,
        ),
        (
            "EcsReadTasks".to_owned(),
            s(&["ecs:DescribeTasks"]),
            s(&["arn:aws:ecs:*:*:task/prod/*"]),
            None,
        ),
        (
            "EcsTagNewTaskDefinitions".to_owned(),
            s(&["ecs:TagResource"]),
            s(&["arn:aws:ecs:*:*:task-definition/*"]),
            Some(json!({"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}})),
        ),
        (
            "EcsTaskDefinitions".to_owned(),
            s(&["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"]),
            s(&["*"]),
            None,
        ),
        (
            "ElbDescribe".to_owned(),
            s(&[
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetHealth",
            ]),
            s(&["*"]),
            None,
        ),
        (
            "PassTaskRoles".to_owned(),
            s(&["iam:PassRole"]),
            s(&["arn:aws:iam::*:role/*"]),
            Some(json!({"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}})),
        ),
        (
            "SqsTriggerQueue".to_owned(),
            s(&["sqs:DeleteMessage", "sqs:ReceiveMessage"]),
            s(&["arn:aws:sqs:eu-west-1:123456789012:cutover-events"]),
            None,
        ),
    ];
    assert_eq!(got, expected);
    let notes = notes(&p);
    for needle in [
        "no `[aws] region`",
        "iam:PassRole",
        "CreateTable",
        "Describe*",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(needle)),
            "{needle}: {notes:?}"
        );
    }
}

#[test]
fn a_local_plan_needs_nothing() {
    let p = plan(
        r#"
[service]
name = "checkout"

[router]
kind = "local"
admin_url = "http://127.0.0.1:9901"

[strategy]
preset = "all-at-once"

[[analysis.checks]]
kind = "error-rate"
max_percent = 1
min_requests = 100
"#,
    );
    assert_eq!(policy(&p)["Statement"], json!([]));
    assert_eq!(
        notes(&p),
        ["this plan calls no AWS API; it needs no IAM permissions"]
    );
}

#[test]
fn the_ecs_platform_reads_its_targets_health_even_without_an_elb_check() {
    let p = plan(
        r#"
[service]
name = "web"

[aws]
region = "eu-west-1"

[router]
kind = "route53"
hosted_zone_id = "Z0123456789ABCDEFGHIJ"
record_name = "web.example.com."

[strategy]
preset = "seed"

[platform]
kind = "ecs"
cluster = "prod"
blue_service = "web-blue"
green_service = "web-green"
container = "app"
"#,
    );
    let got = statements(&policy(&p));
    let elb: Vec<_> = got.iter().filter(|s| s.0 == "ElbDescribe").collect();
    assert_eq!(
        elb,
        [&(
            "ElbDescribe".to_owned(),
            s(&["elasticloadbalancing:DescribeTargetHealth"]),
            s(&["*"]),
            None,
        )]
    );
    assert!(
        !got.iter().any(|st| st.0 != "ElbDescribe"
            && st.1.iter().any(|a| a.starts_with("elasticloadbalancing:"))),
        "{got:?}"
    );
    let services = got
        .iter()
        .find(|st| st.0 == "EcsPlatformServices")
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(
        services.2,
        s(&[
            "arn:aws:ecs:eu-west-1:*:service/prod/web-blue",
            "arn:aws:ecs:eu-west-1:*:service/prod/web-green",
        ])
    );
    let notes = notes(&p);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("elasticloadbalancing:Describe*")),
        "{notes:?}"
    );
}
