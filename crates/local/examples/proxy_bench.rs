//! Starts two demo apps and the proxy in front of them (50 % split) for a
//! quick load test with an external tool:
//!
//! ```text
//! cargo run --release -p cutover-local --example proxy_bench
//! wrk -t2 -c64 -d10s http://127.0.0.1:18080/
//! ```
//!
//! Ports: proxy 18080, admin 19901, blue app 18081, green app 18082
//! (override with the first argument as the base port).

use std::net::SocketAddr;

use cutover_local::{start_demo_app, DemoAppConfig, ProxyConfig};

#[tokio::main]
async fn main() {
    let base: u16 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(18080);
    let addr = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
    let blue = start_demo_app(addr(base + 1), DemoAppConfig::new("blue"))
        .await
        .unwrap();
    let green = start_demo_app(addr(base + 2), DemoAppConfig::new("green"))
        .await
        .unwrap();
    let mut config = ProxyConfig::for_upstreams(&[&blue.url()], &[&green.url()]).unwrap();
    config.listen = addr(base);
    config.admin_listen = addr(base + 1821);
    config.services[0].initial_split = cutover_core::Split::from_percent(50.0).unwrap();
    let proxy = cutover_local::start(config).await.unwrap();
    println!(
        "proxy {} admin {} blue {} green {}",
        proxy.data_url(),
        proxy.admin_url(),
        blue.url(),
        green.url()
    );
    let _ = tokio::signal::ctrl_c().await;
    proxy.shutdown().await;
}
