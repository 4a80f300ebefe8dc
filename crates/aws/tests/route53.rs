//! The route53 router against a real moto server, through the real SDK.

mod common;

use std::time::Duration;

use aws_sdk_route53::types::{ResourceRecord, ResourceRecordSet, ResourceRecordSetRegion, RrType};
use common::fixtures::Zone;
use cutover_aws::route53::Route53Router;
use cutover_core::Split;
use cutover_engine::ports::Router;

fn bp(bp: u16) -> Split {
    Split::from_basis_points(bp).unwrap()
}

/// `rrs` with its weight replaced: everything else must be as before.
fn with_weight(rrs: &ResourceRecordSet, weight: i64) -> ResourceRecordSet {
    let mut r = rrs.clone();
    r.weight = Some(weight);
    r
}

#[tokio::test]
async fn alias_records_follow_every_split_and_keep_their_other_fields() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.alias("blue", 100, "blue"),
        zone.alias("green", 0, "green"),
    ])
    .await;
    let (blue0, green0) = (zone.record("blue").await, zone.record("green").await);
    let router = zone.router();
    // An alias to a load balancer counts 60 s: a 60 s hold is fine.
    router.preflight(Duration::from_secs(60)).await.unwrap();
    assert_eq!(router.current().await.unwrap(), Split::ZERO);

    for (split, green, blue) in [
        (1_000, 10, 90),
        (5_000, 50, 50),
        (10_000, 100, 0),
        (0, 0, 100),
    ] {
        let realized = router.apply(bp(split)).await.unwrap();
        assert_eq!(realized, bp(split));
        assert_eq!(zone.weights().await, (green, blue), "at {split} bp");
        assert_eq!(zone.record("blue").await, with_weight(&blue0, blue));
        assert_eq!(zone.record("green").await, with_weight(&green0, green));
        assert_eq!(zone.records().await.len(), 2);
        assert_eq!(router.current().await.unwrap(), bp(split));
    }
    // Applying the same split again is harmless.
    router.apply(bp(5_000)).await.unwrap();
    router.apply(bp(5_000)).await.unwrap();
    assert_eq!(zone.weights().await, (50, 50));
}

#[tokio::test]
async fn plain_records_keep_ttl_and_values_and_unrepresentable_splits_are_reported() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 30, "192.0.2.10"),
        zone.plain("green", 0, 30, "192.0.2.20"),
    ])
    .await;
    let (blue0, green0) = (zone.record("blue").await, zone.record("green").await);
    let router = zone.router();
    router.preflight(Duration::from_secs(30)).await.unwrap();

    for (split, green, blue) in [
        (1_000, 10, 90),
        (5_000, 50, 50),
        (10_000, 100, 0),
        (0, 0, 100),
    ] {
        assert_eq!(router.apply(bp(split)).await.unwrap(), bp(split));
        assert_eq!(zone.weights().await, (green, blue));
        let b = zone.record("blue").await;
        assert_eq!(b, with_weight(&blue0, blue));
        assert_eq!(b.ttl(), Some(30));
        assert_eq!(b.resource_records()[0].value(), "192.0.2.10");
        assert_eq!(zone.record("green").await, with_weight(&green0, green));
    }

    // 0.3 %: the closest Route53 can do is 1/256 = 0.39 %, and it says so.
    assert_eq!(router.apply(bp(30)).await.unwrap(), bp(39));
    assert_eq!(zone.weights().await, (1, 255));
    assert_eq!(router.current().await.unwrap(), bp(39));
    // 0.1 %: 0 is closer than 1/256.
    assert_eq!(router.apply(bp(10)).await.unwrap(), Split::ZERO);
    assert_eq!(zone.weights().await, (0, 100));
    // 33.33 %: not exact either; the realized split is the weights' ratio.
    let realized = router.apply(bp(3_333)).await.unwrap();
    let (g, b) = zone.weights().await;
    let expected = ((g * 10_000 + (g + b) / 2) / (g + b)) as u16;
    assert_eq!(realized, bp(expected));
    assert!(realized.basis_points().abs_diff(3_333) <= 1);
}

#[tokio::test]
async fn names_match_case_insensitively_and_without_the_trailing_dot() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.alias("blue", 100, "blue"),
        zone.alias("green", 0, "green"),
    ])
    .await;
    let mut config = zone.config();
    config.record_name = zone.record.trim_end_matches('.').to_uppercase();
    let router = Route53Router::new(&config, &zone.sdk);
    router.preflight(Duration::from_secs(60)).await.unwrap();
    assert_eq!(router.apply(bp(2_500)).await.unwrap(), bp(2_500));
    assert_eq!(zone.weights().await, (25, 75));
    assert_eq!(zone.records().await.len(), 2);
}

#[tokio::test]
async fn describe_names_record_type_and_zone() {
    let zone = Zone::new().await;
    let d = zone.router().describe();
    assert_eq!(d, format!("route53 {} A (zone {})", zone.record, zone.id));
}

#[tokio::test]
async fn preflight_refuses_a_missing_record_before_anything_changes() {
    let zone = Zone::new().await;
    zone.create(vec![zone.alias("blue", 100, "blue")]).await;
    let router = zone.router();
    let e = router
        .preflight(Duration::from_secs(300))
        .await
        .unwrap_err();
    assert!(!e.transient);
    assert!(
        e.message.contains("`green`") && e.message.contains("no record"),
        "{e}"
    );
    let e = router.apply(bp(1_000)).await.unwrap_err();
    assert!(!e.transient, "{e}");
    assert_eq!(zone.record("blue").await.weight(), Some(100));
    assert_eq!(zone.records().await.len(), 1);
}

#[tokio::test]
async fn preflight_refuses_an_unknown_weighted_member() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.alias("blue", 100, "blue"),
        zone.alias("green", 0, "green"),
        zone.alias("canary-2023", 5, "old"),
    ])
    .await;
    let e = zone
        .router()
        .preflight(Duration::from_secs(300))
        .await
        .unwrap_err();
    assert!(!e.transient);
    assert!(e.message.contains("`canary-2023`"), "{e}");
    let e = zone.router().apply(bp(1_000)).await.unwrap_err();
    assert!(!e.transient);
    assert_eq!(zone.weights().await, (0, 100));
}

#[tokio::test]
async fn preflight_refuses_a_record_that_is_not_weighted() {
    let zone = Zone::new().await;
    let latency = ResourceRecordSet::builder()
        .name(&zone.record)
        .r#type(RrType::A)
        .set_identifier("green")
        .region(ResourceRecordSetRegion::UsEast1)
        .ttl(30)
        .resource_records(
            ResourceRecord::builder()
                .value("192.0.2.20")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    zone.create(vec![zone.plain("blue", 100, 30, "192.0.2.10"), latency])
        .await;
    let e = zone
        .router()
        .preflight(Duration::from_secs(300))
        .await
        .unwrap_err();
    assert!(!e.transient);
    assert!(
        e.message.contains("not weighted") && e.message.contains("`green`"),
        "{e}"
    );
}

#[tokio::test]
async fn preflight_refuses_holds_shorter_than_the_ttl_unless_allowed() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 300, "192.0.2.10"),
        zone.plain("green", 0, 30, "192.0.2.20"),
    ])
    .await;
    let e = zone
        .router()
        .preflight(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(!e.transient);
    assert!(
        e.message.contains("300 s") && e.message.contains("allow_short_holds"),
        "{e}"
    );
    zone.router()
        .preflight(Duration::from_secs(300))
        .await
        .unwrap();
    let mut config = zone.config();
    config.allow_short_holds = true;
    Route53Router::new(&config, &zone.sdk)
        .preflight(Duration::from_secs(60))
        .await
        .unwrap();
    // Nothing was changed by the preflights.
    assert_eq!(zone.weights().await, (0, 100));
}

#[tokio::test]
async fn an_alias_counts_sixty_seconds() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.alias("blue", 100, "blue"),
        zone.alias("green", 0, "green"),
    ])
    .await;
    let e = zone
        .router()
        .preflight(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(e.message.contains("60 s"), "{e}");
}

#[tokio::test]
async fn a_missing_zone_is_a_permanent_error() {
    let zone = Zone::new().await;
    let mut config = zone.config();
    config.hosted_zone_id = "ZNOSUCHZONE0000".into();
    let router = Route53Router::new(&config, &zone.sdk);
    let e = router
        .preflight(Duration::from_secs(300))
        .await
        .unwrap_err();
    assert!(!e.transient, "{e}");
    let e = router.apply(bp(1_000)).await.unwrap_err();
    assert!(!e.transient, "{e}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transient_error() {
    let zone = Zone::new().await;
    let mut aws = common::aws();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    aws.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    let sdk = cutover_aws::config::load(&aws).await;
    let router = Route53Router::new(&zone.config(), &sdk);
    let e = router.current().await.unwrap_err();
    assert!(e.transient, "{e}");
}
