//! AWS resources on moto shared by the test binaries: raw EC2 query calls
//! (the EC2 SDK crate is not a dependency of this crate, and is not worth
//! one), a Route53 hosted zone with weighted records, an ALB with a
//! weighted listener and rule, and CloudWatch datapoints.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, LoadBalancerTypeEnum, PathPatternConditionConfig,
    ProtocolEnum, RuleCondition, TargetGroupStickinessConfig, TargetGroupTuple, TargetTypeEnum,
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
