//! LocalRouter and the local checks against a real proxy and demo apps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use cutover_core::plan::{CheckConfig, CheckSpec, LocalRouter as RouterSettings};
use cutover_core::{Split, Verdict};
use cutover_engine::ports::{Check, Router};
use cutover_local::{build_check, DemoAppHandle, LocalRouter, ProxyHandle};

fn settings(p: &ProxyHandle) -> RouterSettings {
    RouterSettings {
        admin_url: p.admin_url(),
        token: p.config().admin_token.clone(),
        swapped: false,
    }
}

fn check(p: &ProxyHandle, config: CheckConfig) -> Arc<dyn Check> {
    build_check(
        &CheckSpec {
            name: config.kind().into(),
            config,
        },
        Some(&settings(p)),
    )
    .expect("a local check")
}

fn dead_router_settings(addr: std::net::SocketAddr) -> RouterSettings {
    RouterSettings {
        admin_url: format!("http://{addr}"),
        token: None,
        swapped: false,
    }
}

async fn send(p: &ProxyHandle, n: usize) {
    let c = client();
    let url = p.data_url();
    for _ in 0..n {
        get(&c, &url, &[]).await;
    }
}

async fn setup(split: f64) -> (DemoAppHandle, DemoAppHandle, ProxyHandle) {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let p = proxy(
        &[&blue.url()],
        &[&green.url()],
        &format!("initial_split = {split}"),
    )
    .await;
    (blue, green, p)
}

fn assert_obs(o: &cutover_core::Observation, verdict: Verdict, says: &str) {
    eprintln!("{o}");
    assert_eq!(o.verdict, verdict, "{o}");
    assert!(o.detail.contains(says), "`{}` lacks `{says}`", o.detail);
}

#[tokio::test]
async fn local_router_applies_and_reads_the_split() {
    let blue = demo("blue").await;
    let p = proxy(&[&blue.url()], &[&blue.url()], "admin_token = \"t0k\"").await;
    let router = LocalRouter::new(&settings(&p));
    assert_eq!(
        router.describe(),
        format!("local proxy at {}", p.admin_url())
    );
    assert_eq!(router.current().await.unwrap(), Split::ZERO);
    let s = Split::from_percent(12.5).unwrap();
    assert_eq!(router.apply(s).await.unwrap(), s);
    assert_eq!(router.apply(s).await.unwrap(), s, "idempotent");
    assert_eq!(router.current().await.unwrap(), s);
    assert_eq!(p.split(), s);

    let wrong = LocalRouter::new(&RouterSettings {
        admin_url: p.admin_url(),
        token: Some("nope".into()),
        swapped: false,
    });
    let e = wrong.apply(Split::FULL).await.unwrap_err();
    assert!(!e.transient, "a rejected token is permanent: {e}");
    assert_eq!(p.split(), s);

    let down = LocalRouter::new(&dead_router_settings(dead_addr().await));
    let e = down.current().await.unwrap_err();
    assert!(e.transient && e.message.contains("cannot reach"), "{e:?}");

    let malformed = LocalRouter::new(&RouterSettings {
        admin_url: "ftp://x".into(),
        token: None,
        swapped: false,
    });
    let e = malformed.current().await.unwrap_err();
    assert!(!e.transient && e.message.contains("http://"), "{e:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn router_treats_5xx_as_transient() {
    let addr = serve_fn(|_req| async {
        hyper::Response::builder()
            .status(503)
            .body(http_body_util::Either::Right(http_body_util::Full::new(
                bytes::Bytes::from_static(b"busy"),
            )))
            .unwrap()
    })
    .await;
    let e = LocalRouter::new(&dead_router_settings(addr))
        .current()
        .await
        .unwrap_err();
    assert!(e.transient && e.message.contains("503"), "{e:?}");
}

#[tokio::test]
async fn error_rate_check() {
    let (_blue, green, p) = setup(50.0).await;
    let rate = |max_percent| CheckConfig::ErrorRate {
        max_percent,
        min_requests: 50,
        window: Duration::from_secs(60),
    };
    let c = check(&p, rate(1.0));
    assert_eq!(c.name(), "error-rate");
    c.preflight().await.unwrap();
    assert_obs(
        &c.evaluate().await,
        Verdict::Inconclusive,
        "green served 0 of 50 requests needed in the last 1m",
    );
    send(&p, 60).await;
    assert_obs(
        &c.evaluate().await,
        Verdict::Inconclusive,
        "green served 30 of 50",
    );
    send(&p, 40).await;
    assert_obs(
        &c.evaluate().await,
        Verdict::Pass,
        "green error rate 0 % <= 1 % over 50 requests",
    );
    green.set_fail_ratio(0.5);
    send(&p, 100).await;
    assert_obs(
        &c.evaluate().await,
        Verdict::Fail,
        "green error rate 25 % > 1 % over 100 requests (25 5xx)",
    );
    assert_obs(
        &check(&p, rate(30.0)).evaluate().await,
        Verdict::Pass,
        "25 % <= 30 %",
    );

    let down = build_check(
        &CheckSpec {
            name: "errors".into(),
            config: rate(1.0),
        },
        Some(&dead_router_settings(dead_addr().await)),
    )
    .expect("a local check");
    assert_obs(
        &down.evaluate().await,
        Verdict::Error,
        "cannot read the proxy's metrics",
    );
    p.shutdown().await;
}

#[tokio::test]
async fn latency_check() {
    let (blue, green, p) = setup(50.0).await;
    green.set_latency(Duration::from_millis(20));
    // Medians, so a scheduling hiccup on a busy machine cannot flip a verdict.
    let latency = |max: Option<u64>, ratio: Option<f64>, min_requests| CheckConfig::Latency {
        percentile: 50.0,
        max: max.map(Duration::from_millis),
        max_ratio_to_blue: ratio,
        ratio_floor: None,
        min_requests,
        window: Duration::from_secs(60),
    };
    assert_obs(
        &check(&p, latency(Some(10), None, 5)).evaluate().await,
        Verdict::Inconclusive,
        "green served 0 of 5",
    );
    send(&p, 20).await; // 10 each
    assert_obs(
        &check(&p, latency(Some(10), None, 5)).evaluate().await,
        Verdict::Fail,
        "> max 10 ms over 10 green requests",
    );
    assert_obs(
        &check(&p, latency(Some(5000), None, 5)).evaluate().await,
        Verdict::Pass,
        "green p50 ",
    );
    let p995 = CheckConfig::Latency {
        percentile: 99.5,
        max: Some(Duration::from_secs(5)),
        max_ratio_to_blue: None,
        ratio_floor: None,
        min_requests: 5,
        window: Duration::from_secs(60),
    };
    assert_obs(
        &check(&p, p995).evaluate().await,
        Verdict::Pass,
        "<= max 5000 ms",
    );
    assert_obs(
        &check(&p, latency(None, Some(2.0), 5)).evaluate().await,
        Verdict::Fail,
        "x blue's",
    );
    // Blue answers at once, green in 20 ms: twice blue's is a limit of
    // next to nothing, unless a floor says what is worth failing for.
    let floored = |floor_ms| CheckConfig::Latency {
        percentile: 50.0,
        max: None,
        max_ratio_to_blue: Some(2.0),
        ratio_floor: Some(Duration::from_millis(floor_ms)),
        min_requests: 5,
        window: Duration::from_secs(60),
    };
    assert_obs(
        &check(&p, floored(500)).evaluate().await,
        Verdict::Pass,
        "x blue's",
    );
    assert_obs(
        &check(&p, floored(500)).evaluate().await,
        Verdict::Pass,
        "(limit raised to the floor 500 ms)",
    );
    assert_obs(
        &check(&p, floored(5)).evaluate().await,
        Verdict::Fail,
        "(limit raised to the floor 5 ms)",
    );
    // Blue too quiet for the ratio: judged on max alone, or not at all.
    let o = check(&p, latency(Some(5000), Some(2.0), 50))
        .evaluate()
        .await;
    assert_obs(&o, Verdict::Inconclusive, "green served 10 of 50");
    // At 90 %, 50 more requests: exactly 45 to green, 5 to blue (15 in all).
    p.set_split(Split::from_percent(90.0).unwrap());
    send(&p, 50).await;
    let o = check(&p, latency(Some(5000), Some(2.0), 50))
        .evaluate()
        .await;
    assert_obs(
        &o,
        Verdict::Pass,
        "ratio to blue not judged: blue served 15 of 50",
    );
    assert_obs(
        &check(&p, latency(None, Some(2.0), 50)).evaluate().await,
        Verdict::Inconclusive,
        "blue served 15 of 50",
    );
    // At 100 % blue serves nothing by design: no baseline, so the ratio is
    // not asked for (a bake would otherwise stall on inconclusive verdicts).
    p.set_split(Split::FULL);
    assert_obs(
        &check(&p, latency(None, Some(2.0), 50)).evaluate().await,
        Verdict::Pass,
        "no ratio to blue at 100 % green",
    );
    // Green as fast as blue passes the ratio.
    green.set_latency(Duration::ZERO);
    blue.set_latency(Duration::from_millis(20));
    let fresh = proxy(&[&blue.url()], &[&green.url()], "initial_split = 50").await;
    send(&fresh, 20).await;
    assert_obs(
        &check(&fresh, latency(None, Some(1.5), 5)).evaluate().await,
        Verdict::Pass,
        "<= 1.5 x blue's",
    );
    assert_obs(
        &check(&p, latency(None, None, 5)).evaluate().await,
        Verdict::Error,
        "needs `max`",
    );
    fresh.shutdown().await;
    p.shutdown().await;
}

#[tokio::test]
async fn health_check() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let no_probes = proxy(&[&blue.url()], &[&green.url()], "").await;
    assert_obs(
        &check(&no_probes, CheckConfig::Health).evaluate().await,
        Verdict::Inconclusive,
        "no [health_probe]",
    );

    let dead = format!("http://{}", dead_addr().await);
    let probed = proxy_with(
        &[&blue.url()],
        &[&green.url(), &dead],
        "",
        "[health_probe]\ninterval = \"20ms\"\ntimeout = \"500ms\"\nunhealthy_after = 2",
    )
    .await;
    let c = check(&probed, CheckConfig::Health);
    eventually("the dead green upstream marked unhealthy", || async {
        c.evaluate().await.verdict == Verdict::Fail
    })
    .await;
    let o = c.evaluate().await;
    assert_obs(
        &o,
        Verdict::Fail,
        &format!("green upstream {dead} unhealthy"),
    );
    assert!(
        o.detail.contains("failed probes in a row") && !o.detail.contains(&green.url()),
        "{o}"
    );

    let healthy = proxy_with(
        &[&blue.url()],
        &[&green.url()],
        "",
        "[health_probe]\ninterval = \"20ms\"",
    )
    .await;
    let c = check(&healthy, CheckConfig::Health);
    eventually("green probed", || async {
        c.evaluate().await.verdict == Verdict::Pass
    })
    .await;
    assert_obs(
        &c.evaluate().await,
        Verdict::Pass,
        "all 1 green upstream(s) pass",
    );
    // The demo's point: /healthz stays 200 while real requests fail.
    green.set_fail_ratio(1.0);
    assert_eq!(c.evaluate().await.verdict, Verdict::Pass);

    let down = build_check(
        &CheckSpec {
            name: "health".into(),
            config: CheckConfig::Health,
        },
        Some(&dead_router_settings(dead_addr().await)),
    )
    .expect("a local check");
    assert_obs(
        &down.evaluate().await,
        Verdict::Error,
        "cannot read the proxy's health",
    );
    for p in [no_probes, probed, healthy] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn http_check() {
    let app = demo("green").await;
    let http = |url: String, body_contains: Option<&str>, timeout_ms| {
        let config = CheckConfig::Http {
            url,
            body_contains: body_contains.map(str::to_string),
            timeout: Duration::from_millis(timeout_ms),
        };
        build_check(
            &CheckSpec {
                name: "probe".into(),
                config,
            },
            None,
        )
        .expect("http needs no router")
    };
    let healthz = format!("{}/healthz", app.url());
    assert_obs(
        &http(healthz.clone(), None, 2000).evaluate().await,
        Verdict::Pass,
        "answered 200",
    );
    assert_obs(
        &http(healthz.clone(), Some("ok"), 2000).evaluate().await,
        Verdict::Pass,
        "body contains \"ok\"",
    );
    assert_obs(
        &http(healthz, Some("nope"), 2000).evaluate().await,
        Verdict::Fail,
        "body lacks \"nope\": ok",
    );
    app.set_fail_ratio(1.0);
    assert_obs(
        &http(app.url(), None, 2000).evaluate().await,
        Verdict::Fail,
        "answered 500",
    );
    assert_obs(
        &http(format!("http://{}/", dead_addr().await), None, 2000)
            .evaluate()
            .await,
        Verdict::Error,
        "GET http://",
    );
    app.set_latency(Duration::from_secs(5));
    assert_obs(
        &http(app.url(), None, 100).evaluate().await,
        Verdict::Error,
        "no answer within 100ms",
    );
    let bad = http("https://example.com/".into(), None, 100);
    assert!(bad.preflight().await.is_err());
    assert_obs(
        &bad.evaluate().await,
        Verdict::Error,
        "https is not supported",
    );
    app.shutdown().await;
}
