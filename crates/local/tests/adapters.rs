//! LocalRouter and the local checks against a real proxy and demo apps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use cutover_core::plan::{CheckConfig, CheckSpec, LocalRouter as RouterSettings};
use cutover_core::{Split, Verdict};
use cutover_engine::ports::{Check, CheckContext, Router};
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
        &c.evaluate(&look()).await,
        Verdict::Inconclusive,
        "green served 0 of 50 requests needed in the last 1m",
    );
    send(&p, 60).await;
    assert_obs(
        &c.evaluate(&look()).await,
        Verdict::Inconclusive,
        "green served 30 of 50",
    );
    send(&p, 40).await;
    let o = c.evaluate(&look()).await;
    assert_obs(
        &o,
        Verdict::Pass,
        "green error rate 0 % <= 1 % over 50 requests",
    );
    assert_eq!(
        (
            o.numbers["green.requests"],
            o.numbers["green.failures"],
            o.numbers["max_percent"]
        ),
        (50.0, 0.0, 1.0)
    );
    green.set_fail_ratio(0.5);
    send(&p, 100).await;
    assert_obs(
        &c.evaluate(&look()).await,
        Verdict::Fail,
        "green error rate 25 % > 1 % over 100 requests (25 5xx)",
    );
    assert_obs(
        &check(&p, rate(30.0)).evaluate(&look()).await,
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
        &down.evaluate(&look()).await,
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
        &check(&p, latency(Some(10), None, 5))
            .evaluate(&look())
            .await,
        Verdict::Inconclusive,
        "green served 0 of 5",
    );
    send(&p, 20).await; // 10 each
    assert_obs(
        &check(&p, latency(Some(10), None, 5))
            .evaluate(&look())
            .await,
        Verdict::Fail,
        "> max 10 ms over 10 green requests",
    );
    assert_obs(
        &check(&p, latency(Some(5000), None, 5))
            .evaluate(&look())
            .await,
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
        &check(&p, p995).evaluate(&look()).await,
        Verdict::Pass,
        "<= max 5000 ms",
    );
    assert_obs(
        &check(&p, latency(None, Some(2.0), 5))
            .evaluate(&look())
            .await,
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
        &check(&p, floored(500)).evaluate(&look()).await,
        Verdict::Pass,
        "x blue's",
    );
    assert_obs(
        &check(&p, floored(500)).evaluate(&look()).await,
        Verdict::Pass,
        "(limit raised to the floor 500 ms)",
    );
    assert_obs(
        &check(&p, floored(5)).evaluate(&look()).await,
        Verdict::Fail,
        "(limit raised to the floor 5 ms)",
    );
    // Blue too quiet for the ratio: judged on max alone, or not at all.
    let o = check(&p, latency(Some(5000), Some(2.0), 50))
        .evaluate(&look())
        .await;
    assert_obs(&o, Verdict::Inconclusive, "green served 10 of 50");
    // At 90 %, 50 more requests: exactly 45 to green, 5 to blue (15 in all).
    p.set_split(Split::from_percent(90.0).unwrap());
    send(&p, 50).await;
    let o = check(&p, latency(Some(5000), Some(2.0), 50))
        .evaluate(&look())
        .await;
    assert_obs(
        &o,
        Verdict::Pass,
        "ratio to blue not judged: blue served 15 of 50",
    );
    assert_obs(
        &check(&p, latency(None, Some(2.0), 50))
            .evaluate(&look())
            .await,
        Verdict::Inconclusive,
        "blue served 15 of 50",
    );
    // At 100 % blue serves nothing by design: no baseline, so the ratio is
    // not asked for (a bake would otherwise stall on inconclusive verdicts).
    p.set_split(Split::FULL);
    assert_obs(
        &check(&p, latency(None, Some(2.0), 50))
            .evaluate(&look())
            .await,
        Verdict::Pass,
        "no ratio to blue at 100 % green",
    );
    // Green as fast as blue passes the ratio.
    green.set_latency(Duration::ZERO);
    blue.set_latency(Duration::from_millis(20));
    let fresh = proxy(&[&blue.url()], &[&green.url()], "initial_split = 50").await;
    send(&fresh, 20).await;
    assert_obs(
        &check(&fresh, latency(None, Some(1.5), 5))
            .evaluate(&look())
            .await,
        Verdict::Pass,
        "<= 1.5 x blue's",
    );
    assert_obs(
        &check(&p, latency(None, None, 5)).evaluate(&look()).await,
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
        &check(&no_probes, CheckConfig::Health)
            .evaluate(&look())
            .await,
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
        c.evaluate(&look()).await.verdict == Verdict::Fail
    })
    .await;
    let o = c.evaluate(&look()).await;
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
        c.evaluate(&look()).await.verdict == Verdict::Pass
    })
    .await;
    assert_obs(
        &c.evaluate(&look()).await,
        Verdict::Pass,
        "all 1 green upstream(s) pass",
    );
    // The demo's point: /healthz stays 200 while real requests fail.
    green.set_fail_ratio(1.0);
    assert_eq!(c.evaluate(&look()).await.verdict, Verdict::Pass);

    let down = build_check(
        &CheckSpec {
            name: "health".into(),
            config: CheckConfig::Health,
        },
        Some(&dead_router_settings(dead_addr().await)),
    )
    .expect("a local check");
    assert_obs(
        &down.evaluate(&look()).await,
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
        &http(healthz.clone(), None, 2000).evaluate(&look()).await,
        Verdict::Pass,
        "answered 200",
    );
    assert_obs(
        &http(healthz.clone(), Some("ok"), 2000)
            .evaluate(&look())
            .await,
        Verdict::Pass,
        "body contains \"ok\"",
    );
    assert_obs(
        &http(healthz, Some("nope"), 2000).evaluate(&look()).await,
        Verdict::Fail,
        "body lacks \"nope\": ok",
    );
    app.set_fail_ratio(1.0);
    assert_obs(
        &http(app.url(), None, 2000).evaluate(&look()).await,
        Verdict::Fail,
        "answered 500",
    );
    assert_obs(
        &http(format!("http://{}/", dead_addr().await), None, 2000)
            .evaluate(&look())
            .await,
        Verdict::Error,
        "GET http://",
    );
    app.set_latency(Duration::from_secs(5));
    assert_obs(
        &http(app.url(), None, 100).evaluate(&look()).await,
        Verdict::Error,
        "no answer within 100ms",
    );
    let bad = http("https://example.com/".into(), None, 100);
    assert!(bad.preflight().await.is_err());
    assert_obs(
        &bad.evaluate(&look()).await,
        Verdict::Error,
        "https is not supported",
    );
    app.shutdown().await;
}

/// A look with nothing known about a rollout: these checks judge over
/// their own window.
fn look() -> CheckContext {
    CheckContext::at(cutover_core::Timestamp(0))
}

/// A look at `now_s` seconds, in a hold of the split that took effect at
/// `since_s` and ends at `ends_s`.
fn in_hold(now_s: u64, since_s: u64, ends_s: u64, percent: f64) -> CheckContext {
    let at = |s: u64| cutover_core::Timestamp(1_700_000_000_000 + s * 1000);
    CheckContext {
        now: at(now_s),
        started_at: Some(at(0)),
        split: Split::from_percent(percent).unwrap(),
        split_since: at(since_s),
        hold_ends_at: Some(at(ends_s)),
        answer_by: at(now_s),
    }
}

/// Sends `n` requests and waits until the proxy has counted them all (it
/// counts a request once its response is written, which may come a moment
/// after the client has read it).
async fn send_settled(p: &ProxyHandle, n: usize) {
    let total = |p: &ProxyHandle| {
        let t = p.metrics(Duration::from_secs(1)).totals;
        t.blue.requests + t.green.requests
    };
    let before = total(p);
    send(p, n).await;
    for _ in 0..5_000 {
        if total(p) >= before + n as u64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the proxy never counted {n} requests");
}

/// A `sequential-error-rate` check with the defaults but `alpha`.
fn sequential(alpha: f64) -> CheckConfig {
    CheckConfig::SequentialErrorRate {
        alpha,
        margin: 1.0,
        detect_ratio: 2.0,
        detect_points: 1.0,
        min_rate: 0.001,
    }
}

/// Lets wall time reach `ms` milliseconds after `t`.
async fn at_least_since(t: cutover_core::Timestamp, ms: u64) {
    let now = cutover_engine::Clock::system().now();
    tokio::time::sleep(t.after(Duration::from_millis(ms)).since(now)).await;
}

/// A look now (wall time, as the proxy's windows are), in a hold of the
/// split that took effect at `since`; `over`: its hold has ended.
fn look_now(since: cutover_core::Timestamp, over: bool, percent: f64) -> CheckContext {
    let now = cutover_engine::Clock::system().now();
    let end = if over {
        since
    } else {
        now.after(Duration::from_secs(600))
    };
    CheckContext {
        now,
        started_at: Some(since),
        split: Split::from_percent(percent).unwrap(),
        split_since: since,
        hold_ends_at: Some(end),
        answer_by: now,
    }
}

#[tokio::test]
async fn sequential_error_rate_check_judges_green_against_blue_since_each_split() {
    let (blue, green, p) = setup(50.0).await;
    let c = check(&p, sequential(0.01));
    c.preflight().await.unwrap();
    // Traffic from before the split took effect never counts; what came
    // after it, before the first look, does.
    send_settled(&p, 200).await;
    let since = cutover_engine::Clock::system().now();
    // The window leaves out the first 20 ms after a shift (two of the
    // proxy's 10 ms slots): the traffic after it comes later, as it does
    // under a steady load.
    at_least_since(since, 30).await;
    send_settled(&p, 100).await;
    let first = c.evaluate(&look_now(since, false, 50.0)).await;
    assert_obs(
        &first,
        Verdict::Pass,
        "first look: counting from when the split took effect",
    );
    // 50 of them went to green; nothing from before the shift.
    let base = first.numbers["green.requests"];
    assert_eq!(base, 50.0, "{first}");

    // Both healthy: no evidence; mid-hold that is a pass, at the end of the
    // hold too few requests to have ruled a regression out yet.
    send_settled(&p, 200).await;
    assert_obs(
        &c.evaluate(&look_now(since, false, 50.0)).await,
        Verdict::Pass,
        "no evidence against green so far",
    );
    let end = c.evaluate(&look_now(since, true, 50.0)).await;
    assert_obs(
        &end,
        Verdict::Inconclusive,
        "not enough requests to pass green yet",
    );
    assert!(end.waiting, "only waits for data: {end}");

    // Blue fails 1 %, green 30 %: rolled back on the next look.
    blue.set_fail_ratio(0.01);
    green.set_fail_ratio(0.3);
    send_settled(&p, 200).await;
    let o = c.evaluate(&look_now(since, true, 50.0)).await;
    assert_obs(&o, Verdict::Fail, "green fails more often than blue");
    // The numbers behind it, for scripts.
    let n = &o.numbers;
    assert_eq!(
        (n["green.requests"], n["green.failures"]),
        (base + 200.0, 30.0),
        "{n:?}"
    );
    assert_eq!(n["blue.failures"], 1.0, "{n:?}");
    assert!(
        n["evidence"] >= n["threshold"] && n["threshold"] == 100.0,
        "{n:?}"
    );
    assert!(!n.contains_key("baseline_bound"), "no bake yet: {n:?}");
    // It stays failed across a shift, whose batch holds only what came
    // after the new split took effect.
    green.set_fail_ratio(0.0);
    send_settled(&p, 100).await;
    let shifted = cutover_engine::Clock::system().now();
    at_least_since(shifted, 30).await;
    send_settled(&p, 100).await;
    let o = c.evaluate(&look_now(shifted, false, 50.0)).await;
    assert_obs(
        &o,
        Verdict::Fail,
        "the split changed since the last look: counting from when it took effect",
    );
    let after = o.numbers["green.requests"] - (base + 200.0);
    assert_eq!(after, 50.0, "only what came after the shift: {o}");

    // A proxy that cannot be asked: an error, and nothing taken in.
    let down = build_check(
        &CheckSpec {
            name: "errors".into(),
            config: sequential(0.01),
        },
        Some(&dead_router_settings(dead_addr().await)),
    )
    .expect("a local check");
    assert_obs(
        &down.evaluate(&look_now(since, false, 50.0)).await,
        Verdict::Error,
        "cannot read the proxy's metrics",
    );
    p.shutdown().await;
}

#[tokio::test]
async fn sequential_error_rate_check_passes_a_healthy_green_once_it_has_seen_enough() {
    let (_blue, _green, p) = setup(50.0).await;
    let c = check(&p, sequential(0.01));
    c.evaluate(&in_hold(0, 0, 10, 50.0)).await;
    // Neither colour fails; with blue's rate taken as 0.1 %, ruling out
    // +1 point on green (11-fold) at a 50 % split takes about 1,600 green
    // requests.
    let mut looks = 0;
    let passed = loop {
        send(&p, 100).await;
        looks += 1;
        let o = c.evaluate(&in_hold(10 + looks, 0, 10, 50.0)).await;
        if o.verdict == Verdict::Pass {
            break o;
        }
        assert_obs(
            &o,
            Verdict::Inconclusive,
            "not enough requests to pass green yet",
        );
        assert!(looks < 80, "never passed: {o}");
    };
    assert_obs(
        &passed,
        Verdict::Pass,
        "no evidence green fails more often than blue",
    );
    eprintln!("passed after {} requests", looks * 100);
    p.shutdown().await;
}

#[tokio::test]
async fn sequential_error_rate_check_goes_on_from_a_stored_state_and_refuses_a_bad_one() {
    let (blue, green, p) = setup(50.0).await;
    let config = sequential(0.01);
    blue.set_fail_ratio(0.02);
    green.set_fail_ratio(0.04);
    let first = check(&p, config.clone());
    first.evaluate(&in_hold(1, 0, 600, 50.0)).await;
    // Green fails twice as often as blue: evidence grows slowly.
    let mut evidence = 0.0;
    for look in 0..4 {
        send(&p, 400).await;
        let o = first.evaluate(&in_hold(2 + look, 0, 600, 50.0)).await;
        assert_eq!(o.verdict, Verdict::Pass, "{o}");
        evidence = o.numbers["evidence"];
    }
    let saved = first.state().expect("a state after looks");

    // Another driver's check, given the stored state, goes on from the
    // first one's last look: the requests in between form its first batch.
    let next = check(&p, config.clone());
    next.restore(&saved).unwrap();
    send(&p, 400).await;
    let o = next.evaluate(&in_hold(6, 0, 600, 50.0)).await;
    assert!(!o.detail.contains("counting from now"), "{o}");
    assert_eq!(o.numbers["green.requests"], 1000.0, "{o}");
    assert_ne!(o.numbers["evidence"], evidence, "went on: {o}");

    // A state from other settings, or one that is not a test, is refused.
    let other = check(&p, sequential(0.05));
    let e = other.restore(&saved).unwrap_err();
    assert!(e.contains("other settings"), "{e}");
    let mut broken = saved.clone();
    broken["test"]["log_lr"] = serde_json::json!([1.0, 2.0]);
    let e = check(&p, config.clone()).restore(&broken).unwrap_err();
    assert!(e.contains("values per grid point"), "{e}");
    let e = check(&p, config)
        .restore(&serde_json::json!({"x": 1}))
        .unwrap_err();
    assert!(e.contains("unreadable"), "{e}");
    p.shutdown().await;
}

#[tokio::test]
async fn sequential_error_rate_check_sees_a_proxy_restart_even_after_its_counts_caught_up() {
    let (_blue, _green, p) = setup(50.0).await;
    let config = sequential(0.01);
    let first = check(&p, config.clone());
    first.evaluate(&in_hold(1, 0, 600, 50.0)).await;
    send(&p, 100).await;
    first.evaluate(&in_hold(2, 0, 600, 50.0)).await;
    let mut saved = first.state().unwrap();
    // As if the last look had been at a proxy that started an hour earlier
    // and had counted no more than this one has now: the counts alone look
    // like progress, the start says it is another proxy (a restart).
    let started = saved["proxy_started"].as_u64().unwrap();
    saved["proxy_started"] = serde_json::json!(started - 3_600_000);
    saved["counts"] = serde_json::json!([0, 0, 0, 0]);
    let next = check(&p, config);
    next.restore(&saved).unwrap();
    send(&p, 100).await;
    let o = next.evaluate(&in_hold(3, 0, 600, 50.0)).await;
    assert_obs(&o, Verdict::Pass, "the proxy restarted since the last look");
    p.shutdown().await;
}
