//! A real moto server for this test binary.
//!
//! Uses `CUTOVER_MOTO_URL` if set (e.g. by `.ci/run`); otherwise starts
//! `moto_server` on a free loopback port, once per test binary, and waits
//! until it answers. Each test uses its own resource names, so tests in one
//! binary can share the server.

#![allow(dead_code)]

pub mod cbor_shim;
pub mod fixtures;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cutover_core::plan::AwsConfig;

struct Moto {
    url: String,
    _child: Option<ChildGuard>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The moto endpoint, starting the server if needed.
pub fn moto_url() -> String {
    MOTO.get_or_init(|| {
        if let Ok(url) = std::env::var("CUTOVER_MOTO_URL") {
            return Moto { url, _child: None };
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A static is never dropped, so a small shell reaper stops the server
        // once this test process is gone.
        let script = format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
             while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
            parent = std::process::id()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("sh runs");
        let guard = ChildGuard(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}; is it installed? (pip install 'moto[server]')"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { url, _child: Some(guard) }
    })
    .url
    .clone()
}

/// Plan-level AWS settings pointing at moto, with dummy credentials.
pub fn aws() -> AwsConfig {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    AwsConfig {
        region: Some("us-east-1".into()),
        profile: None,
        endpoint_url: Some(moto_url()),
        ..AwsConfig::default()
    }
}

/// A name unique within this test binary's run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// SDK configuration for moto, with CloudWatch's CBOR protocol translated
/// by [`cbor_shim`] (every other service passes through untouched).
pub async fn sdk() -> aws_config::SdkConfig {
    let mut aws = aws();
    aws.endpoint_url = Some(cbor_shim::url());
    cutover_aws::config::load(&aws).await
}
