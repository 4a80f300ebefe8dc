//! `cutover demo`: the whole job on one machine, nothing to set up.
//!
//! On loopback and free ports: a blue and a green sample app, the embedded
//! proxy in front of them, and steady synthetic load through the proxy.
//! Then two rollouts through the real engine, router and checks: one where
//! green is healthy, one where green fails a share of real requests while
//! its health endpoint still answers OK. It prints a summary and writes an
//! HTML report (with a JSON twin) of the split and green's error rate.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cutover_core::plan::{self, LocalRouter as LocalRouterConfig};
use cutover_core::{Phase, Rollout, Timestamp};
use cutover_engine::ports::Router;
use cutover_engine::{Clock, Engine, Options};
use cutover_local::{DemoAppConfig, ProxyConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::cli::{DemoArgs, Output};
use crate::progress::Progress;
use crate::Exit;

/// The demo's plan: short steps so both scenarios fit well under 90 s.
fn demo_plan(admin: SocketAddr, store: &Path) -> String {
    format!(
        r#"[service]
name = "demo"

[router]
kind = "local"
admin_url = "http://{admin}"

[strategy]
steps = [
  {{ split = 5, hold = "4s" }},
  {{ split = 25, hold = "4s" }},
  {{ split = 50, hold = "4s" }},
  {{ split = 100, hold = "4s" }},
]
bake = "4s"

[analysis]
interval = "1s"
inconclusive_limit = 3

[[analysis.checks]]
kind = "error-rate"
max_percent = 2
min_requests = 5
window = "1s"

[[analysis.checks]]
kind = "latency"
percentile = 99
max = "250ms"
window = "2s"

[[analysis.checks]]
kind = "health"

[store]
kind = "sqlite"
path = "{}"
"#,
        store.display()
    )
}

/// One request of the synthetic load.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Timestamp,
    green: bool,
    error: bool,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Point {
    /// Seconds since the scenario started.
    t: f64,
    split_percent: f64,
    /// Green's 5xx share over the last second, in percent (None: no green requests).
    green_error_percent: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ScenarioReport {
    name: String,
    outcome: String,
    reason: Option<String>,
    seconds: f64,
    blue_requests: u64,
    green_requests: u64,
    blue_errors: u64,
    green_errors: u64,
    /// From green's first failing request to 0 % green.
    reaction_ms: Option<u64>,
    /// Green's failed requests between its first failure and 0 % green.
    failed_during_reaction: Option<u64>,
    analysis_interval_ms: u64,
    series: Vec<Point>,
    history: Vec<String>,
}

pub async fn demo(args: DemoArgs) -> Exit {
    if !(0.0..=1.0).contains(&args.fail_ratio) {
        return Exit::Usage(format!(
            "--fail-ratio {} must be between 0 and 1",
            args.fail_ratio
        ));
    }
    if args.rps == 0 || args.rps > 5_000 {
        return Exit::Usage(format!("--rps {} must be between 1 and 5000", args.rps));
    }
    match run_demo(&args).await {
        Ok(exit) => exit,
        Err(e) => Exit::Internal(e),
    }
}

async fn run_demo(args: &DemoArgs) -> Result<Exit, String> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let app = |colour: &str| DemoAppConfig {
        colour: colour.into(),
        fail_ratio: 0.0,
        latency: Duration::from_millis(2),
    };
    let blue = cutover_local::start_demo_app(loopback, app("blue"))
        .await
        .map_err(|e| format!("blue app: {e}"))?;
    let green = cutover_local::start_demo_app(loopback, app("green"))
        .await
        .map_err(|e| format!("green app: {e}"))?;

    let blue_url = format!("http://{}", blue.addr());
    let green_url = format!("http://{}", green.addr());
    let mut config =
        ProxyConfig::for_upstreams(&[&blue_url], &[&green_url]).map_err(|e| e.to_string())?;
    config.listen = loopback;
    config.admin_listen = loopback;
    config.metrics_window = Duration::from_secs(10);
    config.health_probe = Some(cutover_local::proxy::HealthProbeConfig {
        path: "/healthz".into(),
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        unhealthy_after: 2,
        healthy_after: 1,
    });
    let proxy = cutover_local::start(config)
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    outln!(
        "blue app {blue_url}, green app {green_url}; proxy http://{} (admin http://{}); load {} req/s",
        proxy.data_addr(),
        proxy.admin_addr(),
        args.rps
    );

    let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let store_path = args
        .store
        .clone()
        .unwrap_or_else(|| tmp.path().join("demo.db"));
    let plan = plan::parse(&demo_plan(proxy.admin_addr(), &store_path), "demo plan")
        .map_err(|e| e.to_string())?;
    let store = crate::settings::open_sqlite(&store_path).map_err(|e| format!("{e:?}"))?;
    let router = cutover_local::LocalRouter::new(&LocalRouterConfig {
        admin_url: format!("http://{}", proxy.admin_addr()),
        token: None,
        swapped: false,
    });

    let clock = Clock::system();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = tokio_util_stop();
    let load = tokio::spawn(load(
        proxy.data_addr(),
        args.rps,
        clock,
        samples.clone(),
        stop.1.clone(),
    ));

    let mut reports = Vec::new();
    for (name, fail_ratio) in [
        ("healthy green", 0.0),
        ("green fails real requests", args.fail_ratio),
    ] {
        router
            .apply(cutover_core::Split::ZERO)
            .await
            .map_err(|e| format!("resetting the split: {e}"))?;
        green.set_fail_ratio(fail_ratio);
        outln!("\n== scenario: {name} ==");
        let report = scenario(name, &plan, store.clone(), clock, &samples).await?;
        reports.push(report);
    }

    let _ = stop.0.send(true);
    let _ = load.await;
    proxy.shutdown().await;
    blue.shutdown().await;
    green.shutdown().await;

    out!("\n{}", summary_table(&reports));
    let html = render_html(&reports);
    std::fs::write(&args.report, html)
        .map_err(|e| format!("cannot write {}: {e}", args.report.display()))?;
    let json_path = args.report.with_extension("json");
    let json = serde_json::to_string_pretty(&reports).expect("serialisable");
    std::fs::write(&json_path, json)
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    outln!(
        "report: {} (data: {})",
        args.report.display(),
        json_path.display()
    );

    let as_expected = reports[0].outcome == "succeeded"
        && (args.fail_ratio == 0.0 || reports[1].outcome == "rolled-back");
    Ok(if as_expected {
        Exit::Ok
    } else {
        Exit::Internal("the demo's rollouts did not end as expected; see the report".into())
    })
}

/// A stop flag for the load generator.
fn tokio_util_stop() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}

async fn scenario(
    name: &str,
    plan: &cutover_core::Plan,
    store: Arc<cutover_engine::store::SqliteStore>,
    clock: Clock,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> Result<ScenarioReport, String> {
    let splits: Arc<Mutex<Vec<(Timestamp, f64)>>> = Arc::default();
    let progress = Progress::new(Output::Text, "  ").plain();
    let observer = {
        let splits = splits.clone();
        Arc::new(
            move |id: &str, r: &Rollout, events: &[cutover_core::Event]| {
                progress.update(id, r, events);
                if let Ok(mut s) = splits.lock() {
                    if s.last().map(|l| l.1) != Some(r.split.percent()) {
                        s.push((clock.now(), r.split.percent()));
                    }
                }
            },
        )
    };
    let options = Options {
        tick: Duration::from_millis(100),
        ..Options::default()
    };
    let engine =
        Engine::new(store, clock, crate::settings::holder(), options).with_observer(observer);
    let adapters = crate::adapters::build(plan)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let started = clock.now();
    let id = format!("demo-{}-{}", started.as_millis(), name.len());
    engine
        .create(&id, plan.clone(), false)
        .await
        .map_err(|e| e.to_string())?;
    let end = engine
        .drive(&id, &adapters)
        .await
        .map_err(|e| e.to_string())?;
    let ended = clock.now();
    let history: Vec<cutover_core::Event> = engine
        .store()
        .events(&id, 0, usize::MAX)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(cutover_engine::driver::decode_event)
        .collect::<Result<_, _>>()?;

    let all = samples.lock().map_err(|_| "load samples lost")?.clone();
    let window: Vec<Sample> = all
        .into_iter()
        .filter(|s| s.at >= started && s.at <= ended)
        .collect();
    let count = |green: bool, error: bool| {
        window
            .iter()
            .filter(|s| s.green == green && (!error || s.error))
            .count() as u64
    };
    let splits = splits.lock().map_err(|_| "split series lost")?.clone();

    // Reaction: from green's first failing request to the moment 0 % landed.
    let first_failure = window.iter().find(|s| s.green && s.error).map(|s| s.at);
    let zero_at = matches!(end.phase, Phase::RolledBack { .. })
        .then(|| {
            history
                .iter()
                .rev()
                .find(|e| e.split == cutover_core::Split::ZERO && e.phase == "rolled-back")
                .map(|e| e.at)
        })
        .flatten();
    let (reaction_ms, failed_during_reaction) = match (first_failure, zero_at) {
        (Some(f), Some(z)) => (
            Some(z.since(f).as_millis() as u64),
            Some(
                window
                    .iter()
                    .filter(|s| s.green && s.error && s.at >= f && s.at <= z)
                    .count() as u64,
            ),
        ),
        _ => (None, None),
    };

    Ok(ScenarioReport {
        name: name.into(),
        outcome: end.phase.name().into(),
        reason: end.phase.reason().map(str::to_string),
        seconds: ended.since(started).as_secs_f64(),
        blue_requests: count(false, false),
        green_requests: count(true, false),
        blue_errors: count(false, true),
        green_errors: count(true, true),
        reaction_ms,
        failed_during_reaction,
        analysis_interval_ms: plan.analysis.interval.as_millis() as u64,
        series: series(started, ended, &splits, &window),
        history: history
            .iter()
            .map(|e| format!("+{:.1}s  {}", e.at.since(started).as_secs_f64(), e.message))
            .collect(),
    })
}

/// Samples the split and green's error rate every 250 ms.
fn series(
    started: Timestamp,
    ended: Timestamp,
    splits: &[(Timestamp, f64)],
    samples: &[Sample],
) -> Vec<Point> {
    let mut out = Vec::new();
    let mut t = started;
    while t <= ended {
        let split = splits
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0.0, |s| s.1);
        let from = Timestamp::from_millis(t.as_millis().saturating_sub(1000));
        let green: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.green && s.at > from && s.at <= t)
            .collect();
        let errors = green.iter().filter(|s| s.error).count();
        out.push(Point {
            t: t.since(started).as_secs_f64(),
            split_percent: split,
            green_error_percent: (!green.is_empty())
                .then(|| errors as f64 * 100.0 / green.len() as f64),
        });
        t = t.after(Duration::from_millis(250));
    }
    out
}

/// Sends `rps` requests per second through the proxy until told to stop.
async fn load(
    proxy: SocketAddr,
    rps: u32,
    clock: Clock,
    samples: Arc<Mutex<Vec<Sample>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{proxy}/").parse().expect("valid URI");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (client, uri, samples) = (client.clone(), uri.clone(), samples.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await;
            let sample = match result {
                Ok(Ok(response)) => {
                    let green = response
                        .headers()
                        .get("x-cutover-colour")
                        .is_some_and(|v| v == "green");
                    let error = response.status().is_server_error();
                    let _ = response.into_body().collect().await;
                    Sample {
                        at: clock.now(),
                        green,
                        error,
                    }
                }
                _ => Sample {
                    at: clock.now(),
                    green: false,
                    error: true,
                },
            };
            if let Ok(mut s) = samples.lock() {
                s.push(sample);
            }
        });
    }
}

fn summary_table(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<12} {:>7} {:>9} {:>10} {:>11} {:>12} {:>18}",
        "scenario",
        "outcome",
        "time",
        "blue req",
        "green req",
        "blue err",
        "green err",
        "fail -> 0 % green"
    );
    for r in reports {
        let reaction = match (r.reaction_ms, r.failed_during_reaction) {
            (Some(ms), Some(n)) => format!("{ms} ms, {n} failed"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<12} {:>6.1}s {:>9} {:>10} {:>11} {:>12} {:>18}",
            r.name,
            r.outcome,
            r.seconds,
            r.blue_requests,
            r.green_requests,
            r.blue_errors,
            r.green_errors,
            reaction
        );
    }
    for r in reports {
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "{}: {reason}", r.name);
        }
        if let Some(ms) = r.reaction_ms {
            let _ = writeln!(
                out,
                "{}: green's first failing request to 0 % green took {ms} ms (analysis interval {} ms)",
                r.name, r.analysis_interval_ms
            );
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A self-contained page: one SVG chart per scenario (split and green's
/// error rate over time), the summary and each rollout's decisions.
fn render_html(reports: &[ScenarioReport]) -> String {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>cutover demo report</title>\
         <style>body{font:14px system-ui,sans-serif;margin:2em;max-width:960px}\
         table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}\
         td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}\
         .legend span{display:inline-block;margin-right:1.5em}</style>\
         <h1>cutover demo</h1>",
    );
    html += "<table><tr><th>scenario</th><th>outcome</th><th>time</th><th>blue req</th><th>green req</th>\
             <th>blue err</th><th>green err</th><th>first green failure → 0 % green</th></tr>";
    for r in reports {
        let reaction = r.reaction_ms.map_or("-".into(), |ms| {
            format!(
                "{ms} ms ({} failed requests)",
                r.failed_during_reaction.unwrap_or(0)
            )
        });
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name), r.outcome, r.seconds, r.blue_requests, r.green_requests, r.blue_errors, r.green_errors, reaction
        );
    }
    html += "</table>";
    for r in reports {
        let _ = write!(html, "<h2>{}: {}</h2>", escape(&r.name), r.outcome);
        if let Some(reason) = &r.reason {
            let _ = write!(html, "<p>{}</p>", escape(reason));
        }
        html += &chart(r);
        let _ = write!(html, "<pre>{}</pre>", escape(&r.history.join("\n")));
    }
    html
}

fn chart(r: &ScenarioReport) -> String {
    let (w, h, pad) = (900.0, 260.0, 40.0);
    let t_max = r.series.last().map_or(1.0, |p| p.t).max(1.0);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    let y = |pct: f64| h - pad - (h - 2.0 * pad) * pct / 100.0;
    let split: Vec<String> = r
        .series
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.split_percent)))
        .collect();
    let errors: Vec<String> = r
        .series
        .iter()
        .filter_map(|p| {
            p.green_error_percent
                .map(|e| format!("{:.1},{:.1}", x(p.t), y(e)))
        })
        .collect();
    let mut svg = format!("<svg viewBox='0 0 {w} {h}' width='{w}' height='{h}' role='img' aria-label='split and error rate'>");
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let at = y(pct);
        let _ = write!(
            svg,
            "<line x1='{pad}' x2='{}' y1='{at}' y2='{at}' stroke='#eee'/><text x='4' y='{}' font-size='11'>{pct}%</text>",
            w - pad,
            at + 4.0,
        );
    }
    let step = if t_max > 20.0 { 5.0 } else { 1.0 };
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(
            svg,
            "<text x='{:.1}' y='{}' font-size='11' text-anchor='middle'>{t}s</text>",
            x(t),
            h - pad + 16.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        "<polyline fill='none' stroke='#2a7' stroke-width='2' points='{}'/>",
        split.join(" ")
    );
    let _ = write!(
        svg,
        "<polyline fill='none' stroke='#d33' stroke-width='1.5' points='{}'/>",
        errors.join(" ")
    );
    svg += "</svg><div class=legend><span style='color:#2a7'>■ green's share of traffic</span>\
            <span style='color:#d33'>■ green's error rate (last second)</span></div>";
    svg
}
