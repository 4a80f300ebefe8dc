//! AWS resources on moto shared by the test binaries: raw EC2 query calls
//! (the EC2 SDK crate is not a dependency of this crate, and is not worth
//! one), a Route53 hosted zone with weighted records, an ALB with a
//! weighted listener and rule, CloudWatch datapoints, an ECS cluster with a
//! service per colour (optionally each behind a target group of its own),
//! and ECS task state change events on an SQS queue.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, LoadBalancerTypeEnum, PathPatternConditionConfig,
    ProtocolEnum, RuleCondition, TargetDescription, TargetGroupStickinessConfig, TargetGroupTuple,
    TargetTypeEnum,
};
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use cutover_aws::alb::AlbRouter;
use cutover_aws::route53::Route53Router;

// ---------------------------------------------------------------- EC2

/// One EC2 Query API call to moto; returns the whole response. moto
/// routes on the credential scope and does not verify signatures.
pub fn ec2(params: &[(&str, &str)]) -> String {
    let url = super::moto_url();
    let addr = url.trim_start_matches("http://");
    let body = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .chain(["Version=2016-11-15".to_string()])
        .collect::<Vec<_>>()
        .join("&");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/ec2/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Form-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one EC2 instance (moto: `running` at once); returns its id.
pub fn run_instance() -> String {
    let out = ec2(&[
        ("Action", "RunInstances"),
        ("ImageId", "ami-12c6146b"),
        ("MinCount", "1"),
        ("MaxCount", "1"),
    ]);
    xml_values(&out, "instanceId")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no instance: {out}"))
}

/// Starts (`running`) or stops an EC2 instance. moto reports a registered
/// instance target `unused` while its instance is stopped and `healthy`
/// otherwise.
pub fn set_instance_running(id: &str, running: bool) {
    let action = if running {
        "StartInstances"
    } else {
        "StopInstances"
    };
    let out = ec2(&[("Action", action), ("InstanceId.1", id)]);
    assert!(out.contains(id), "{action} {id}: {out}");
}

/// The text of every `<tag>` in `xml`.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split('<').next().map(str::to_string))
        .collect()
}

/// The text of the first `<tag>` in `xml`; panics without one.
pub fn xml_value(xml: &str, tag: &str) -> String {
    xml_values(xml, tag)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

// ---------------------------------------------------------------- Route53

/// The hosted zone id of us-east-1 load balancers, for alias records.
pub const ELB_ZONE: &str = "Z35SXDOTRQ7X7K";

/// A fresh hosted zone and the record name the tests weight.
pub struct Zone {
    pub client: aws_sdk_route53::Client,
    pub sdk: aws_config::SdkConfig,
    pub id: String,
    /// `web.<zone>.`, with the trailing dot.
    pub record: String,
}

impl Zone {
    pub async fn new() -> Zone {
        let sdk = cutover_aws::config::load(&super::aws()).await;
        let client = aws_sdk_route53::Client::new(&sdk);
        let name = format!("{}.example.com", super::unique("r53"));
        let created = client
            .create_hosted_zone()
            .name(&name)
            .caller_reference(&name)
            .send()
            .await
            .unwrap();
        let id = created
            .hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string();
        Zone {
            client,
            sdk,
            id,
            record: format!("web.{name}."),
        }
    }

    /// Router settings for the `blue` / `green` records of our name.
    pub fn config(&self) -> cutover_core::plan::Route53Router {
        cutover_core::plan::Route53Router {
            hosted_zone_id: self.id.clone(),
            record_name: self.record.clone(),
            record_type: "A".into(),
            blue_set_identifier: "blue".into(),
            green_set_identifier: "green".into(),
            allow_short_holds: false,
            insync_timeout: Duration::from_secs(30),
        }
    }

    pub fn router(&self) -> Route53Router {
        Route53Router::new(&self.config(), &self.sdk)
    }

    pub async fn create(&self, records: Vec<ResourceRecordSet>) {
        let mut batch = ChangeBatch::builder();
        for r in records {
            batch = batch.changes(
                Change::builder()
                    .action(ChangeAction::Create)
                    .resource_record_set(r)
                    .build()
                    .unwrap(),
            );
        }
        self.client
            .change_resource_record_sets()
            .hosted_zone_id(&self.id)
            .change_batch(batch.build().unwrap())
            .send()
            .await
            .unwrap();
    }

    /// A weighted alias record to the load balancer named `lb`.
    pub fn alias(&self, id: &str, weight: i64, lb: &str) -> ResourceRecordSet {
        ResourceRecordSet::builder()
            .name(&self.record)
            .r#type(RrType::A)
            .set_identifier(id)
            .weight(weight)
            .alias_target(
                AliasTarget::builder()
                    .hosted_zone_id(ELB_ZONE)
                    .dns_name(format!("{lb}-123456.us-east-1.elb.amazonaws.com."))
                    .evaluate_target_health(false)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// A weighted A record to `ip`.
    pub fn plain(&self, id: &str, weight: i64, ttl: i64, ip: &str) -> ResourceRecordSet {
        ResourceRecordSet::builder()
            .name(&self.record)
            .r#type(RrType::A)
            .set_identifier(id)
            .weight(weight)
            .ttl(ttl)
            .resource_records(ResourceRecord::builder().value(ip).build().unwrap())
            .build()
            .unwrap()
    }

    /// Every record of our name, straight from moto.
    pub async fn records(&self) -> Vec<ResourceRecordSet> {
        let out = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(&self.id)
            .send()
            .await
            .unwrap();
        out.resource_record_sets()
            .iter()
            .filter(|r| r.name().eq_ignore_ascii_case(&self.record))
            .cloned()
            .collect()
    }

    pub async fn record(&self, id: &str) -> ResourceRecordSet {
        self.records()
            .await
            .into_iter()
            .find(|r| r.set_identifier() == Some(id))
            .unwrap_or_else(|| panic!("no record {id}"))
    }

    /// (green, blue) weights as moto has them.
    pub async fn weights(&self) -> (i64, i64) {
        (
            self.record("green").await.weight().unwrap(),
            self.record("blue").await.weight().unwrap(),
        )
    }
}

// ---------------------------------------------------------------- ALB

/// A VPC, two subnets, an ALB, three target groups (blue, green, other),
/// a listener and a rule.
pub struct Alb {
    pub client: aws_sdk_elasticloadbalancingv2::Client,
    pub sdk: aws_config::SdkConfig,
    pub load_balancer: String,
    pub listener: String,
    pub rule: String,
    pub blue: String,
    pub green: String,
    pub other: String,
}

pub fn tuple(arn: &str, weight: i32) -> TargetGroupTuple {
    TargetGroupTuple::builder()
        .target_group_arn(arn)
        .weight(weight)
        .build()
}

pub fn sticky() -> TargetGroupStickinessConfig {
    TargetGroupStickinessConfig::builder()
        .enabled(true)
        .duration_seconds(300)
        .build()
}

/// A forward action to `groups`, with [`sticky`] stickiness.
pub fn forward(groups: Vec<TargetGroupTuple>) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .forward_config(
            ForwardActionConfig::builder()
                .set_target_groups(Some(groups))
                .target_group_stickiness_config(sticky())
                .build(),
        )
        .build()
}

/// The weight of `arn` in the first action's forward config.
pub fn weight(actions: &[Action], arn: &str) -> i32 {
    actions[0]
        .forward_config()
        .unwrap()
        .target_groups()
        .iter()
        .find(|t| t.target_group_arn() == Some(arn))
        .unwrap()
        .weight()
        .unwrap()
}

pub fn stickiness(actions: &[Action]) -> TargetGroupStickinessConfig {
    actions[0]
        .forward_config()
        .unwrap()
        .target_group_stickiness_config()
        .unwrap()
        .clone()
}

impl Alb {
    /// A VPC, two subnets, an ALB, three target groups, a listener whose
    /// default action forwards to blue (100) and green (0) with stickiness,
    /// and a rule forwarding to blue (100), green (0) and another group (5).
    pub async fn new() -> Alb {
        let sdk = cutover_aws::config::load(&super::aws()).await;
        let client = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
        let vpc = xml_value(
            &ec2(&[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")]),
            "vpcId",
        );
        let subnet = |cidr: &str, az: &str| {
            xml_value(
                &ec2(&[
                    ("Action", "CreateSubnet"),
                    ("VpcId", &vpc),
                    ("CidrBlock", cidr),
                    ("AvailabilityZone", az),
                ]),
                "subnetId",
            )
        };
        let subnets = [
            subnet("10.0.1.0/24", "us-east-1a"),
            subnet("10.0.2.0/24", "us-east-1b"),
        ];
        let lb = client
            .create_load_balancer()
            .name(super::unique("lb"))
            .r#type(LoadBalancerTypeEnum::Application)
            .set_subnets(Some(subnets.to_vec()))
            .send()
            .await
            .unwrap();
        let load_balancer = lb.load_balancers()[0]
            .load_balancer_arn()
            .unwrap()
            .to_string();
        let mut groups = Vec::new();
        for colour in ["blue", "green", "other"] {
            let tg = client
                .create_target_group()
                .name(super::unique(colour))
                .protocol(ProtocolEnum::Http)
                .port(80)
                .vpc_id(&vpc)
                .target_type(TargetTypeEnum::Ip)
                .send()
                .await
                .unwrap();
            groups.push(
                tg.target_groups()[0]
                    .target_group_arn()
                    .unwrap()
                    .to_string(),
            );
        }
        let [blue, green, other] = <[String; 3]>::try_from(groups).unwrap();
        let listener = client
            .create_listener()
            .load_balancer_arn(&load_balancer)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .default_actions(forward(vec![tuple(&blue, 100), tuple(&green, 0)]))
            .send()
            .await
            .unwrap();
        let listener = listener.listeners()[0].listener_arn().unwrap().to_string();
        let rule = client
            .create_rule()
            .listener_arn(&listener)
            .priority(10)
            .conditions(
                RuleCondition::builder()
                    .field("path-pattern")
                    .path_pattern_config(
                        PathPatternConditionConfig::builder()
                            .values("/api/*")
                            .build(),
                    )
                    .build(),
            )
            .actions(forward(vec![
                tuple(&blue, 100),
                tuple(&green, 0),
                tuple(&other, 5),
            ]))
            .send()
            .await
            .unwrap();
        let rule = rule.rules()[0].rule_arn().unwrap().to_string();
        Alb {
            client,
            sdk,
            load_balancer,
            listener,
            rule,
            blue,
            green,
            other,
        }
    }

    /// Router settings for the listener's default action (`listener`) or
    /// the rule.
    pub fn config(&self, listener: bool) -> cutover_core::plan::AlbRouter {
        cutover_core::plan::AlbRouter {
            listener_arn: listener.then(|| self.listener.clone()),
            rule_arn: (!listener).then(|| self.rule.clone()),
            blue_target_group_arn: self.blue.clone(),
            green_target_group_arn: self.green.clone(),
        }
    }

    pub fn router(&self, listener: bool) -> AlbRouter {
        AlbRouter::new(&self.config(listener), &self.sdk)
    }

    pub async fn listener_actions(&self) -> Vec<Action> {
        let out = self
            .client
            .describe_listeners()
            .listener_arns(&self.listener)
            .send()
            .await
            .unwrap();
        out.listeners()[0].default_actions().to_vec()
    }

    pub async fn rule(&self) -> aws_sdk_elasticloadbalancingv2::types::Rule {
        let out = self
            .client
            .describe_rules()
            .rule_arns(&self.rule)
            .send()
            .await
            .unwrap();
        out.rules()[0].clone()
    }

    /// (green, blue) weights of the listener's default action, as moto has them.
    pub async fn listener_weights(&self) -> (i32, i32) {
        let actions = self.listener_actions().await;
        (weight(&actions, &self.green), weight(&actions, &self.blue))
    }

    /// The `LoadBalancer` CloudWatch dimension (`app/NAME/ID`).
    pub fn load_balancer_dimension(&self) -> String {
        let i = self.load_balancer.find(":loadbalancer/").unwrap();
        self.load_balancer[i + ":loadbalancer/".len()..].to_string()
    }

    /// The `TargetGroup` CloudWatch dimension (`targetgroup/NAME/ID`) of `arn`.
    pub fn target_group_dimension(arn: &str) -> String {
        let i = arn.find(":targetgroup/").unwrap();
        arn[i + 1..].to_string()
    }
}

// ---------------------------------------------------------------- CloudWatch

/// Puts one datapoint per `(at, value)` of `namespace`/`metric` with `dims`.
pub async fn put_metric(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    metric: &str,
    dims: &BTreeMap<String, String>,
    points: &[(SystemTime, f64)],
) {
    let data = points
        .iter()
        .map(|(at, v)| {
            MetricDatum::builder()
                .metric_name(metric)
                .set_dimensions(Some(
                    dims.iter()
                        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                        .collect(),
                ))
                .timestamp((*at).into())
                .value(*v)
                .build()
        })
        .collect();
    cw.put_metric_data()
        .namespace(namespace)
        .set_metric_data(Some(data))
        .send()
        .await
        .unwrap();
}

/// The `AWS/ApplicationELB` dimensions of one target group.
pub fn alb_dims(load_balancer: &str, target_group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("LoadBalancer".to_string(), load_balancer.to_string()),
        ("TargetGroup".to_string(), target_group.to_string()),
    ])
}

/// One target group's `RequestCount` and (unless `None`: not published)
/// `HTTPCode_Target_5XX_Count` at `at`.
pub async fn alb_traffic(
    cw: &aws_sdk_cloudwatch::Client,
    dims: &BTreeMap<String, String>,
    at: SystemTime,
    requests: f64,
    errors: Option<f64>,
) {
    put_metric(
        cw,
        "AWS/ApplicationELB",
        "RequestCount",
        dims,
        &[(at, requests)],
    )
    .await;
    if let Some(e) = errors {
        put_metric(
            cw,
            "AWS/ApplicationELB",
            "HTTPCode_Target_5XX_Count",
            dims,
            &[(at, e)],
        )
        .await;
    }
}

// ---------------------------------------------------------------- ECS

/// A cluster with two services, one per colour, each on a task definition
/// of its own family (containers `app` and `envoy`): blue on
/// `registry/app:v1` with `blue_count` tasks, green (idle) on
/// `registry/app:v0` with none.
pub struct Ecs {
    pub sdk: aws_config::SdkConfig,
    pub ecs: aws_sdk_ecs::Client,
    /// Platform settings for the two services, container `app`.
    pub config: cutover_core::plan::EcsPlatform,
    pub blue_def: String,
    pub green_def: String,
    /// Each service's target group, with [`Ecs::behind_target_groups`].
    pub target_groups: Option<EcsTargetGroups>,
}

/// One target group (instance targets, HTTP, in the default VPC) per
/// colour, named in the service's `loadBalancers` (container `app`, port
/// 8080). moto registers no task as a target: tests do, with
/// [`EcsTargetGroups::register`].
pub struct EcsTargetGroups {
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub blue: String,
    pub green: String,
}

impl EcsTargetGroups {
    async fn new(sdk: &aws_config::SdkConfig) -> EcsTargetGroups {
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(sdk);
        let vpc = xml_values(&ec2(&[("Action", "DescribeVpcs")]), "vpcId")
            .into_iter()
            .next()
            .expect("moto has a default VPC");
        let mut arns = Vec::new();
        for colour in ["blue", "green"] {
            let out = elb
                .create_target_group()
                .name(super::unique(colour))
                .protocol(ProtocolEnum::Http)
                .port(8080)
                .vpc_id(&vpc)
                .target_type(TargetTypeEnum::Instance)
                .send()
                .await
                .unwrap();
            arns.push(
                out.target_groups()[0]
                    .target_group_arn()
                    .unwrap()
                    .to_string(),
            );
        }
        let [blue, green] = <[String; 2]>::try_from(arns).unwrap();
        EcsTargetGroups { elb, blue, green }
    }

    /// Registers `instances` (port 8080) as targets of `target_group`.
    pub async fn register(&self, target_group: &str, instances: &[String]) {
        self.elb
            .register_targets()
            .target_group_arn(target_group)
            .set_targets(Some(
                instances
                    .iter()
                    .map(|id| TargetDescription::builder().id(id).port(8080).build())
                    .collect(),
            ))
            .send()
            .await
            .unwrap();
    }
}

pub fn ecs_container(name: &str, image: &str) -> aws_sdk_ecs::types::ContainerDefinition {
    aws_sdk_ecs::types::ContainerDefinition::builder()
        .name(name)
        .image(image)
        .memory(256)
        .essential(true)
        .environment(
            aws_sdk_ecs::types::KeyValuePair::builder()
                .name("COLOUR")
                .value(name)
                .build(),
        )
        .build()
}

/// Registers a revision of `family` with containers `app` (on `image`) and
/// `envoy`; returns its ARN.
pub async fn register(ecs: &aws_sdk_ecs::Client, family: &str, image: &str) -> String {
    ecs.register_task_definition()
        .family(family)
        .cpu("256")
        .memory("512")
        .container_definitions(ecs_container("app", image))
        .container_definitions(ecs_container("envoy", "envoyproxy/envoy:v1.30"))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap()
        .task_definition_arn
        .unwrap()
}

impl Ecs {
    pub async fn new(blue_count: i32, scale_down_after: Option<Duration>) -> Ecs {
        Ecs::build(blue_count, scale_down_after, false).await
    }

    /// [`Ecs::new`] with each service behind a target group of its own
    /// ([`Ecs::target_groups`]), with no target registered yet.
    pub async fn behind_target_groups(blue_count: i32, scale_down_after: Option<Duration>) -> Ecs {
        Ecs::build(blue_count, scale_down_after, true).await
    }

    async fn build(blue_count: i32, scale_down_after: Option<Duration>, balanced: bool) -> Ecs {
        let sdk = cutover_aws::config::load(&super::aws()).await;
        let ecs = aws_sdk_ecs::Client::new(&sdk);
        let cluster = super::unique("cluster");
        ecs.create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .unwrap();
        let blue_family = super::unique("blue");
        let green_family = super::unique("green");
        let blue_def = register(&ecs, &blue_family, "registry/app:v1").await;
        let green_def = register(&ecs, &green_family, "registry/app:v0").await;
        let target_groups = if balanced {
            Some(EcsTargetGroups::new(&sdk).await)
        } else {
            None
        };
        for (service, def, count, target_group) in [
            (
                &blue_family,
                &blue_def,
                blue_count,
                target_groups.as_ref().map(|t| &t.blue),
            ),
            (
                &green_family,
                &green_def,
                0,
                target_groups.as_ref().map(|t| &t.green),
            ),
        ] {
            let load_balancer = target_group.map(|arn| {
                aws_sdk_ecs::types::LoadBalancer::builder()
                    .target_group_arn(arn)
                    .container_name("app")
                    .container_port(8080)
                    .build()
            });
            ecs.create_service()
                .cluster(&cluster)
                .service_name(service)
                .task_definition(def)
                .desired_count(count)
                .set_load_balancers(load_balancer.map(|lb| vec![lb]))
                .send()
                .await
                .unwrap();
        }
        Ecs {
            sdk,
            ecs,
            config: cutover_core::plan::EcsPlatform {
                cluster,
                blue_service: blue_family,
                green_service: green_family,
                container: "app".into(),
                green_container: None,
                ready_deadline: Duration::from_secs(10),
                scale_down_after,
            },
            blue_def,
            green_def,
            target_groups,
        }
    }

    pub async fn service(&self, name: &str) -> aws_sdk_ecs::types::Service {
        self.ecs
            .describe_services()
            .cluster(&self.config.cluster)
            .services(name)
            .send()
            .await
            .unwrap()
            .services
            .unwrap()
            .remove(0)
    }

    pub async fn task_definition(&self, arn: &str) -> aws_sdk_ecs::types::TaskDefinition {
        self.ecs
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .unwrap()
            .task_definition
            .unwrap()
    }
}

// ---------------------------------------------------------------- ECS events (SQS)

pub const ACCOUNT: &str = "123456789012";

pub fn task_def(family: &str, revision: u32) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{family}:{revision}")
}

/// An EventBridge "ECS Task State Change" event of `task` of `service` in
/// cluster `prod`, as delivered to SQS.
pub fn event(service: &str, task_def: &str, task: &str, version: u64, last: &str) -> String {
    serde_json::json!({
        "version": "0",
        "id": format!("{task}-{version}"),
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": ACCOUNT,
        "time": "2026-11-26T10:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/prod/{task}")],
        "detail": {
            "clusterArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/prod"),
            "group": format!("service:{service}"),
            "taskArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/prod/{task}"),
            "taskDefinitionArn": task_def,
            "lastStatus": last,
            "desiredStatus": "RUNNING",
            "containers": [{"name": "app"}, {"name": "envoy"}],
            "version": version,
        }
    })
    .to_string()
}

/// An SDK config for moto, an SQS client and a new queue's URL.
pub async fn event_queue() -> (aws_config::SdkConfig, aws_sdk_sqs::Client, String) {
    let sdk = cutover_aws::config::load(&super::aws()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs
        .create_queue()
        .queue_name(super::unique("events"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (sdk, sqs, url)
}

/// Trigger settings watching `green-app` and `blue-app` in cluster `prod`,
/// container `app`.
pub fn ecs_trigger(queue_url: &str) -> cutover_core::plan::EcsEventsTrigger {
    cutover_core::plan::EcsEventsTrigger {
        queue_url: queue_url.to_owned(),
        cluster: Some("prod".into()),
        services: vec!["green-app".into(), "blue-app".into()],
        containers: vec!["app".into()],
    }
}

pub async fn send(sqs: &aws_sdk_sqs::Client, url: &str, body: &str) {
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .unwrap();
}

/// Messages in the queue, visible or not.
pub async fn queue_len(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    attrs.values().map(|v| v.parse::<u64>().unwrap()).sum()
}
