//! A real Prometheus server (Debian's `prometheus` package; `.ci/run`
//! installs it when missing) scraping the targets a test gives it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus process, killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
}

/// What Prometheus scrapes: a job name, where, and the metrics path.
pub struct Target<'a> {
    pub job: &'a str,
    pub addr: SocketAddr,
    pub path: &'a str,
}

impl Prometheus {
    /// Starts Prometheus with its data under `dir`, scraping `targets`
    /// every `scrape_interval` (e.g. "1s"), and returns once it says it is
    /// ready.
    pub fn start(dir: &Path, scrape_interval: &str, targets: &[Target]) -> Prometheus {
        let binary = which("prometheus").expect(
            "the `prometheus` binary (Debian package `prometheus`; .ci/run installs it) is needed",
        );
        let mut config =
            format!("global:\n  scrape_interval: {scrape_interval}\nscrape_configs:\n");
        for t in targets {
            config.push_str(&format!(
                "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: ['{}']\n",
                t.job, t.path, t.addr
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("writing prometheus.yml");
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("its address")
        };
        let child = Command::new(binary)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { addr, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "Prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The API's base URL, as a plan gives it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET path`: status and body, or None when the server does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// Waits until an instant query of `query` (given URL-encoded) has a
    /// series: the scrape it needs has happened.
    pub fn wait_for_series(&self, encoded_query: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, body)) = self.get(&format!("/api/v1/query?query={encoded_query}")) {
                if body.contains("\"metric\"") {
                    return body;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never had a series for {encoded_query}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
