//! The SDK's own limits, as `[aws]` sets them, against a server that
//! accepts connections and never answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::plan::{AwsConfig, SdkTimeouts};
use cutover_engine::ports::Router;

/// Accepts every connection and holds it open without a byte in reply;
/// counts the connections.
async fn black_hole() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_call_that_never_answers_is_cut_at_the_read_timeout_and_reported_transient() {
    let (url, accepted) = black_hole().await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let aws = AwsConfig {
        region: Some("us-east-1".into()),
        profile: None,
        endpoint_url: Some(url),
        sdk_timeouts: SdkTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_millis(300),
            attempt: Duration::from_millis(500),
        },
    };
    let sdk = cutover_aws::config::load(&aws).await;
    let plan = cutover_core::plan::parse(
        "[service]\nname = \"web\"\n[router]\nkind = \"route53\"\nhosted_zone_id = \"Z1\"\nrecord_name = \"web.example.com.\"\n[strategy]\npreset = \"seed\"\n",
        "plan.toml",
    )
    .unwrap();
    let cutover_core::plan::RouterConfig::Route53(config) = &plan.router else {
        panic!("a route53 plan");
    };
    let router = cutover_aws::route53::Route53Router::new(config, &sdk);

    let started = Instant::now();
    // Without the SDK's read timeout this never returns; the outer limit
    // only keeps a regression from hanging the suite.
    let result = tokio::time::timeout(Duration::from_secs(60), router.current())
        .await
        .expect("the SDK's timeouts cut the call");
    let took = started.elapsed();
    let err = result.expect_err("nothing answered");
    assert!(err.transient, "{err:?}");
    // The SDK's three attempts, each cut at 300 ms, with its back-off between.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}
