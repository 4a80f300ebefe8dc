//! The proxy over real HTTP on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use cutover_core::Split;
use cutover_local::api::{Colour, ProbeState, UpstreamHealth};
use cutover_local::AdminClient;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};

fn admin(p: &cutover_local::ProxyHandle) -> AdminClient {
    AdminClient::new(&p.admin_url(), None).unwrap()
}

#[tokio::test]
async fn split_is_exact_at_every_prefix() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let p = proxy(&[&blue.url()], &[&green.url()], "").await;
    let admin = admin(&p);
    assert_eq!(
        admin
            .set_split(Split::from_percent(12.5).unwrap())
            .await
            .unwrap()
            .basis_points(),
        1250
    );
    let c = client();
    let url = p.data_url();
    let mut greens = 0;
    for k in 1..=800u64 {
        let a = get(&c, &url, &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.body,
            format!("hello from {}\n", a.colour()),
            "the colour header names who answered"
        );
        greens += u64::from(a.colour() == "green");
        assert!(
            (greens as f64 - k as f64 * 0.125).abs() <= 1.0,
            "after {k}: {greens} green"
        );
    }
    assert_eq!(greens, 100);
    assert_eq!((green.served().0, blue.served().0), (100, 700));

    // Mid-stream change: every prefix after it stays within one request.
    admin
        .set_split(Split::from_percent(30.0).unwrap())
        .await
        .unwrap();
    let mut greens = 0;
    for k in 1..=300u64 {
        greens += u64::from(get(&c, &url, &[]).await.colour() == "green");
        assert!(
            (greens as f64 - k as f64 * 0.3).abs() <= 1.0,
            "after {k}: {greens} green"
        );
    }
    assert_eq!(greens, 90);

    // 0 % and 100 % are absolute.
    p.set_split(Split::ZERO);
    for _ in 0..20 {
        assert_eq!(get(&c, &url, &[]).await.colour(), "blue");
    }
    p.set_split(Split::FULL);
    for _ in 0..20 {
        assert_eq!(get(&c, &url, &[]).await.colour(), "green");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn sticky_cookie_keeps_a_session_on_its_colour() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let p = proxy(
        &[&blue.url()],
        &[&green.url()],
        "sticky_cookie = \"cutover-colour\"\ninitial_split = 50",
    )
    .await;
    let c = client();
    let url = p.data_url();
    // No cookie: chosen by the split, told with Set-Cookie.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let a = get(&c, &url, &[]).await;
        let cookie = a.header("set-cookie").expect("a cookie for a new session");
        assert!(
            cookie.starts_with(&format!("cutover-colour={}; Path=/", a.colour())),
            "{cookie}"
        );
        seen.push(a.colour().to_string());
    }
    assert_eq!(seen, ["blue", "green", "blue", "green"]);
    // With a cookie: that colour, whatever the round-robin says, no new cookie.
    for _ in 0..10 {
        let a = get(&c, &url, &[("cookie", "a=1; cutover-colour=green")]).await;
        assert_eq!(a.colour(), "green");
        assert!(a.header("set-cookie").is_none());
    }
    let a = get(&c, &url, &[("cookie", "cutover-colour=blue")]).await;
    assert_eq!(a.colour(), "blue");
    // A colour with 0 % does not keep its sessions.
    p.set_split(Split::ZERO);
    let a = get(&c, &url, &[("cookie", "cutover-colour=green")]).await;
    assert_eq!(a.colour(), "blue");
    assert!(a
        .header("set-cookie")
        .unwrap()
        .starts_with("cutover-colour=blue;"));
    // A garbage value is treated as no cookie.
    let a = get(&c, &url, &[("cookie", "cutover-colour=purple")]).await;
    assert_eq!(a.colour(), "blue");
    assert!(a.header("set-cookie").is_some());
    p.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let request = "GET /echo?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
                   X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nProxy-Foo: 1\r\n\
                   TE: trailers\r\nTrailer: x-t\r\nX-Forwarded-For: 203.0.113.7\r\nX-Keep: yes\r\n\r\n";
    let (status, headers, body) = raw_request(p.data_addr(), request).await;
    assert_eq!(status, 200, "{body}");
    let seen: std::collections::HashMap<String, Vec<String>> = serde_json::from_str(&body).unwrap();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-foo",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["x-keep"], ["yes"]);
    assert_eq!(seen["host"], ["shop.example"]);
    assert_eq!(seen["x-forwarded-for"], ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], ["http"]);
    assert_eq!(seen["x-forwarded-host"], ["shop.example"]);
    assert_eq!(seen[":path"], ["/echo?q=1"]);
    // And on the way back.
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    assert!(
        !has("x-resp-secret") && !has("proxy-foo") && !has("keep-alive"),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .all(|(k, v)| k != "connection" || v == "keep-alive"),
        "{headers:?}"
    );
    assert!(has("x-resp-keep") && has("x-cutover-colour"), "{headers:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn dead_upstream_is_502_and_counts_as_5xx() {
    let blue = demo("blue").await;
    let dead = format!("http://{}", dead_addr().await);
    let p = proxy(
        &[&blue.url()],
        &[&dead],
        "initial_split = 100\nconnect_timeout = \"1s\"",
    )
    .await;
    let a = get(&client(), &p.data_url(), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.colour(), "green");
    assert!(
        a.body
            .starts_with(&format!("cutover: green upstream {dead} unreachable")),
        "{}",
        a.body
    );
    let m = admin(&p)
        .metrics(Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert_eq!(
        (m.green.requests, m.green.errors_5xx, m.blue.requests),
        (1, 1, 0)
    );
    p.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let slow = demo("blue").await;
    slow.set_latency(Duration::from_secs(10));
    let p = proxy(
        &[&slow.url()],
        &[&slow.url()],
        "request_timeout = \"150ms\"",
    )
    .await;
    let started = std::time::Instant::now();
    let a = get(&client(), &p.data_url(), &[]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        a.body.contains("sent no response within 150ms"),
        "{}",
        a.body
    );
    let m = p.metrics(Duration::from_secs(60));
    assert_eq!((m.blue.requests, m.blue.errors_5xx), (1, 1));
    p.shutdown_within(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let echo = echo_upstream().await;
    let url = format!("http://{echo}");
    let p = proxy(&[&url], &[&url], "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let req = Request::post(format!("{}/body", p.data_url()))
        .body(ChannelBody(rx))
        .unwrap();
    let pending = tokio::spawn(async move { client.request(req).await });
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; 64 * 1024]);
    tx.send(chunk(0)).await.unwrap();
    // The echoed response head arrives while the upload is still open:
    // neither direction is buffered whole.
    let response = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let total = 8 * 1024 * 1024;
    let sender = tokio::spawn(async move {
        for i in 1..total / (64 * 1024) {
            tx.send(chunk(i)).await.unwrap();
        }
    });
    let body = response.into_body().collect().await.unwrap().to_bytes();
    sender.await.unwrap();
    assert_eq!(body.len(), total);
    assert!(body
        .chunks(64 * 1024)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&b| b == (i % 251) as u8)));
    p.shutdown().await;
}

#[tokio::test]
async fn admin_api_needs_the_token_and_validates_input() {
    let blue = demo("blue").await;
    let p = proxy(&[&blue.url()], &[&blue.url()], "admin_token = \"s3cret\"").await;
    let c = client();
    let split_url = format!("{}/split", p.admin_url());
    assert_eq!(
        get(&c, &split_url, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &split_url, &[("authorization", "Bearer nope")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let ok = get(&c, &split_url, &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ok.body).unwrap()["split_bp"],
        0
    );

    let wrong = AdminClient::new(&p.admin_url(), Some("nope")).unwrap();
    let e = wrong.split().await.unwrap_err();
    assert!(!e.transient && e.message.contains("401"), "{e:?}");

    let right = AdminClient::new(&p.admin_url(), Some("s3cret")).unwrap();
    let put = |body: &'static str| {
        let req = Request::put(&split_url)
            .header("authorization", "Bearer s3cret")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let c = c.clone();
        async move {
            let r = c.request(req).await.unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (s, v) = put(r#"{"split_percent": 12.5}"#).await;
    assert_eq!(
        (s, v["split_bp"].as_u64(), v["split_percent"].as_f64()),
        (StatusCode::OK, Some(1250), Some(12.5))
    );
    assert_eq!(right.split().await.unwrap().basis_points(), 1250);
    let (s, v) = put(r#"{"split_bp": 10000}"#).await;
    assert_eq!(
        (s, v["split_percent"].as_f64()),
        (StatusCode::OK, Some(100.0))
    );
    for (body, says) in [
        (r#"{"split_percent": 100.5}"#, "outside 0..=100"),
        (r#"{"split_bp": 10001}"#, "outside 0..=10000"),
        (r#"{"split_percent": 1, "split_bp": 100}"#, "not both"),
        (r#"{}"#, "expected JSON like"),
        (r#"{"percent": 5}"#, "unknown field"),
        ("ten", "expected JSON like"),
    ] {
        let (s, v) = put(body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(v["error"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    assert_eq!(
        right.split().await.unwrap().basis_points(),
        10_000,
        "bad requests change nothing"
    );
    let bad_window = get(
        &c,
        &format!("{}/metrics?window=soon", p.admin_url()),
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(bad_window.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(
            &c,
            &format!("{}/nope", p.admin_url()),
            &[("authorization", "Bearer s3cret")]
        )
        .await
        .status,
        404
    );
    p.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_and_5xx_per_colour() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    green.set_fail_ratio(0.25);
    green.set_latency(Duration::from_millis(5));
    let p = proxy(
        &[&blue.url()],
        &[&green.url()],
        "initial_split = 50\nmetrics_window = \"30s\"",
    )
    .await;
    let c = client();
    for _ in 0..200 {
        get(&c, &p.data_url(), &[]).await;
    }
    let m = admin(&p)
        .metrics(Duration::from_secs(3600), &[95.0])
        .await
        .unwrap();
    assert_eq!(m.window_ms, 30_000, "capped at metrics_window");
    assert_eq!((m.blue.requests, m.blue.errors_5xx), (100, 0));
    assert_eq!((m.green.requests, m.green.errors_5xx), (100, 25));
    assert!(
        (m.green.error_percent - 25.0).abs() < 1e-9 && (m.green.error_rate - 0.25).abs() < 1e-9
    );
    assert_eq!(
        (m.totals.green.requests, m.totals.green.errors_5xx),
        (100, 25)
    );
    let p50 = m.green.latency_ms.p50.unwrap();
    assert!(p50 >= 5.0, "green's p50 {p50} ms includes its 5 ms latency");
    assert!(m.green.percentile_ms(95.0).unwrap() >= p50);
    assert!(m.blue.latency_ms.p99.unwrap() < p50 + 1000.0);
    assert_eq!(m.split_bp, 5000);

    let prom = get(&c, &format!("{}/metrics/prometheus", p.admin_url()), &[]).await;
    assert!(
        prom.body
            .contains("cutover_requests_total{colour=\"green\"} 100"),
        "{}",
        prom.body
    );
    assert!(prom
        .body
        .contains("cutover_responses_5xx_total{colour=\"green\"} 25"));
    assert!(prom.body.contains("cutover_split_basis_points 5000"));
    p.shutdown().await;
}

async fn upstream(admin: &AdminClient, url_suffix: &str) -> UpstreamHealth {
    let h = admin.health().await.unwrap();
    h.upstreams
        .into_iter()
        .find(|u| u.url.ends_with(url_suffix))
        .unwrap()
}

#[tokio::test]
async fn probes_take_an_unhealthy_upstream_out_and_back() {
    let (a, _a_status) = switchable_upstream("blue-a").await;
    let (b, b_status) = switchable_upstream("blue-b").await;
    let green = demo("green").await;
    let p = proxy_with(
        &[&format!("http://{a}"), &format!("http://{b}")],
        &[&green.url()],
        "",
        "[health_probe]\npath = \"/healthz\"\ninterval = \"20ms\"\ntimeout = \"500ms\"",
    )
    .await;
    let admin = admin(&p);
    let b_port = format!(":{}", b.port());
    eventually("both blue upstreams healthy", || async {
        let h = admin.health().await.unwrap();
        h.upstreams.iter().all(|u| u.state == ProbeState::Healthy)
    })
    .await;
    let c = client();
    let names = |n: usize| {
        let c = c.clone();
        let url = p.data_url();
        async move {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(
                    get(&c, &url, &[])
                        .await
                        .header("x-name")
                        .unwrap()
                        .to_string(),
                );
            }
            v
        }
    };
    let before = names(4).await;
    assert_eq!(
        before.iter().filter(|n| *n == "blue-b").count(),
        2,
        "round-robin: {before:?}"
    );

    b_status.store(503, std::sync::atomic::Ordering::Relaxed);
    eventually("blue-b unhealthy", || async {
        upstream(&admin, &b_port).await.state == ProbeState::Unhealthy
    })
    .await;
    let u = upstream(&admin, &b_port).await;
    assert!(!u.healthy && u.consecutive_failures >= 2);
    assert_eq!(u.colour, Colour::Blue);
    let last = u.last_probe.unwrap();
    assert_eq!((last.ok, last.status), (false, Some(503)));
    assert!(
        names(10).await.iter().all(|n| n == "blue-a"),
        "unhealthy upstream skipped"
    );

    b_status.store(200, std::sync::atomic::Ordering::Relaxed);
    eventually("blue-b healthy again", || async {
        upstream(&admin, &b_port).await.healthy
    })
    .await;
    assert!(names(4).await.iter().any(|n| n == "blue-b"));
    p.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let slow = demo("blue").await;
    slow.set_latency(Duration::from_millis(300));
    let p = proxy(&[&slow.url()], &[&slow.url()], "").await;
    let c = client();
    let url = p.data_url();
    let in_flight = tokio::spawn(async move { get(&c, &url, &[]).await });
    eventually("the request reaching the app", || async {
        slow.received() == 1
    })
    .await;
    let addr = p.data_addr();
    p.shutdown().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn connect_is_refused() {
    let blue = demo("blue").await;
    let p = proxy(&[&blue.url()], &[&blue.url()], "").await;
    let (status, _, body) = raw_request(
        p.data_addr(),
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (405, "cutover: CONNECT is not supported\n")
    );
    assert_eq!(blue.received(), 0);
    p.shutdown().await;
}

/// At a steady rate through the real proxy, every window from the bucket
/// size (1 s with the default 60 s `metrics_window`) up counts what the
/// client saw complete in that window, read at 20 phases of the bucket.
/// Before windows were counted per 10 ms slot, a 1 s window read anywhere
/// from 0 to the full second's requests, depending on the phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_reads_a_steady_rate_exactly_at_20_phases() {
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    let blue = demo("blue").await;
    let green = demo("green").await;
    let p = proxy(&[&blue.url()], &[&green.url()], "initial_split = 100").await;
    let admin = admin(&p);
    assert_eq!(
        admin
            .metrics(Duration::from_secs(1), &[])
            .await
            .unwrap()
            .resolution_ms,
        10
    );

    // 100 req/s, paced; each completion time as the client saw it.
    let done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let load = {
        let done = done.clone();
        let url = p.data_url();
        tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                let a = get(&c, &url, &[]).await;
                assert_eq!(a.status, 200);
                done.lock().unwrap().push(Instant::now());
            }
        })
    };

    let windows = [1u64, 2, 3, 5];
    let start = Instant::now() + Duration::from_secs(*windows.last().unwrap());
    // Slack for the proxy counting a request before the client sees it end.
    let eps = Duration::from_millis(5);
    let slot = Duration::from_millis(10);
    let mut worst = [0u64; 4];
    for phase in 0..20u32 {
        // 550 ms apart: the reads fall at 20 different 50 ms phases of the bucket.
        tokio::time::sleep_until(start + Duration::from_millis(550) * phase).await;
        for (i, w) in windows.iter().enumerate() {
            let w = Duration::from_secs(*w);
            let before = Instant::now();
            let m = admin.metrics(w, &[]).await.unwrap();
            let after = Instant::now();
            let got = m.green.requests;
            let seen = done.lock().unwrap().clone();
            let count = |from: Instant, to: Instant| {
                seen.iter().filter(|&&t| t > from && t <= to).count() as u64
            };
            // The proxy counts the current 10 ms slot and `w` before it.
            let lo = count(after - w + eps, before);
            let hi = count(before - w - slot - eps, after + eps);
            assert!(
                (lo..=hi).contains(&got),
                "window {w:?} at phase {phase}: proxy counted {got}, client saw {lo}..={hi} complete"
            );
            let mid = before + (after - before) / 2;
            worst[i] = worst[i].max(got.abs_diff(count(mid - w - slot / 2, mid)));
        }
    }
    load.abort();
    for (w, e) in windows.iter().zip(worst) {
        println!("window {w} s: largest difference from the client's count {e} request(s) at 100 req/s ({} ms)", e * 10);
    }
}

/// A proxy fronting two services: requests go by `Host`, each service has
/// its own split and metrics under `/services/NAME/`, and the router a
/// plan names with such a URL moves only its own service.
#[tokio::test]
async fn one_proxy_fronts_several_services_by_host() {
    let apps = [
        demo("checkout-blue").await,
        demo("checkout-green").await,
        demo("search-blue").await,
        demo("search-green").await,
    ];
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"checkout\"\nhosts = [\"checkout.test\"]\n\
         [service.blue]\nupstreams = [\"{}\"]\n[service.green]\nupstreams = [\"{}\"]\n\
         [[service]]\nname = \"search\"\n\
         [service.blue]\nupstreams = [\"{}\"]\n[service.green]\nupstreams = [\"{}\"]\n",
        apps[0].url(),
        apps[1].url(),
        apps[2].url(),
        apps[3].url()
    );
    let p =
        cutover_local::start(cutover_local::ProxyConfig::from_toml_str(&text, "t.toml").unwrap())
            .await
            .unwrap();
    let checkout = AdminClient::new(&format!("{}/services/checkout", p.admin_url()), None).unwrap();
    let search = AdminClient::new(&format!("{}/services/search/", p.admin_url()), None).unwrap();
    checkout.set_split(Split::FULL).await.unwrap();
    assert_eq!(
        search.split().await.unwrap(),
        Split::ZERO,
        "the other service's split did not move"
    );
    assert_eq!(p.service_split("checkout"), Some(Split::FULL));

    let c = client();
    let url = p.data_url();
    for host in ["checkout.test", "CHECKOUT.Test:8080"] {
        let a = get(&c, &url, &[("host", host)]).await;
        assert_eq!(a.body, "hello from checkout-green\n", "Host `{host}`");
    }
    for host in ["search.test", "127.0.0.1"] {
        let a = get(&c, &url, &[("host", host)]).await;
        assert_eq!(
            a.body, "hello from search-blue\n",
            "Host `{host}` goes to the one without hosts"
        );
    }
    let m = checkout
        .metrics(Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert_eq!((m.blue.requests, m.green.requests), (0, 2));
    let m = search.metrics(Duration::from_secs(60), &[]).await.unwrap();
    assert_eq!((m.blue.requests, m.green.requests), (2, 0));

    // The plain paths name the services rather than guess one.
    let plain = get(&c, &format!("{}/split", p.admin_url()), &[]).await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND);
    assert!(
        plain.body.contains("/services/NAME/split") && plain.body.contains("`checkout`"),
        "{}",
        plain.body
    );
    let unknown = get(&c, &format!("{}/services/cart/split", p.admin_url()), &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.body.contains("no service `cart`"),
        "{}",
        unknown.body
    );
    let list = get(&c, &format!("{}/services", p.admin_url()), &[]).await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list[0]["name"], "checkout");
    assert_eq!(list[0]["split_bp"], 10_000);
    assert_eq!(list[1]["hosts"], serde_json::json!([]));
    let prom = get(&c, &format!("{}/metrics/prometheus", p.admin_url()), &[]).await;
    assert!(
        prom.body
            .contains("cutover_split_basis_points{service=\"checkout\"} 10000"),
        "{}",
        prom.body
    );
    assert!(
        prom.body
            .contains("cutover_requests_total{service=\"search\",colour=\"blue\"} 2"),
        "{}",
        prom.body
    );
    p.shutdown_within(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_host_no_service_names_gets_404_when_none_takes_every_host() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"checkout\"\nhosts = [\"checkout.test\"]\n\
         [service.blue]\nupstreams = [\"{}\"]\n[service.green]\nupstreams = [\"{}\"]\n",
        blue.url(),
        green.url()
    );
    let p =
        cutover_local::start(cutover_local::ProxyConfig::from_toml_str(&text, "t.toml").unwrap())
            .await
            .unwrap();
    let c = client();
    let a = get(&c, &p.data_url(), &[("host", "elsewhere.test")]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(
        a.body.contains("no service here for host `elsewhere.test`"),
        "{}",
        a.body
    );
    assert_eq!(
        get(&c, &p.data_url(), &[("host", "checkout.test")])
            .await
            .status,
        StatusCode::OK
    );
    // With one service the plain admin paths are that service's.
    let plain = AdminClient::new(&p.admin_url(), None).unwrap();
    assert_eq!(plain.split().await.unwrap(), Split::ZERO);
    assert_eq!(blue.served().0, 1);
    p.shutdown_within(Duration::from_secs(1)).await;
}

/// A window longer than the proxy keeps is not cut short without a word:
/// the answer says what was asked and what the figures cover.
#[tokio::test]
async fn a_metrics_window_past_what_the_proxy_keeps_is_answered_with_a_note() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let p = proxy(&[&blue.url()], &[&green.url()], "metrics_window = \"1m\"").await;
    let c = client();
    let long = get(&c, &format!("{}/metrics?window=10d", p.admin_url()), &[]).await;
    assert_eq!(long.status, StatusCode::OK, "{}", long.body);
    let long: serde_json::Value = serde_json::from_str(&long.body).unwrap();
    assert_eq!(long["window"], "1m");
    assert_eq!(
        long["note"],
        "window 240h is longer than this proxy keeps (metrics_window = 1m): the figures cover 1m"
    );
    let short = get(&c, &format!("{}/metrics?window=30s", p.admin_url()), &[]).await;
    let short: serde_json::Value = serde_json::from_str(&short.body).unwrap();
    assert_eq!(
        (short["window"].as_str(), short.get("note")),
        (Some("30s"), None)
    );
    p.shutdown_within(Duration::from_secs(1)).await;
}
