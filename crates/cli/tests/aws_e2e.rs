//! The real `cutover` binary against moto: the DynamoDB store made by
//! `init-store`, a Route53 router, the ECS platform deploying with
//! `run --image`, and the next deploy going the other way.

#[path = "../../aws/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::fixtures::{Ecs, Zone};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

fn cutover(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn blocking(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        cutover(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

fn write_plan(dir: &Path, zone: &Zone, ecs: &Ecs, table: &str) -> String {
    let p = &ecs.config;
    let text = format!(
        r#"[service]
name = "web"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[router]
kind = "route53"
hosted_zone_id = "{zone}"
record_name = "{record}"

[strategy]
steps = [{{ split = 50, hold = "1s" }}, {{ split = 100, hold = "1s" }}]

[analysis]
interval = "500ms"

[[analysis.checks]]
kind = "ecs-service"

[platform]
kind = "ecs"
cluster = "{cluster}"
blue_service = "{blue}"
green_service = "{green}"
container = "app"
ready_deadline = "20s"
scale_down_after = "1ms"

[store]
kind = "dynamodb"
table = "{table}"
"#,
        endpoint = common::moto_url(),
        zone = zone.id,
        record = zone.record,
        cluster = p.cluster,
        blue = p.blue_service,
        green = p.green_service,
    );
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn image_of(ecs: &Ecs, service: &str) -> (i32, String) {
    let s = ecs.service(service).await;
    let def = ecs
        .task_definition(s.task_definition.as_deref().unwrap())
        .await;
    let app = def
        .container_definitions
        .unwrap()
        .into_iter()
        .find(|c| c.name.as_deref() == Some("app"))
        .unwrap();
    (s.desired_count, app.image.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_go_to_the_idle_colour_and_alternate() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 1, "192.0.2.10"),
        zone.plain("green", 0, 1, "192.0.2.20"),
    ])
    .await;
    let ecs = Ecs::new(2, Some(Duration::from_millis(1))).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(dir.path(), &zone, &ecs, &common::unique("cutover"));
    let (blue, green) = (
        ecs.config.blue_service.clone(),
        ecs.config.green_service.clone(),
    );

    let o = blocking(vec!["init-store".into(), plan.clone()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("created table"), "{}", text(&o));
    let o = blocking(vec!["init-store".into(), plan.clone()]).await;
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    // First deploy: blue is live, so v2 goes to green and traffic follows.
    let o = blocking(vec![
        "run".into(),
        plan.clone(),
        "--image".into(),
        "repo/app:v2".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(image_of(&ecs, &green).await, (2, "repo/app:v2".into()));
    assert_eq!(image_of(&ecs, &blue).await, (0, "registry/app:v1".into()));
    let (g, b) = zone.weights().await;
    assert!(g > 0 && b == 0, "weights green {g} blue {b}");

    // The same plan again without a release: green already holds all
    // traffic, and nothing may move it backwards (it once set 90 / 10).
    let o = blocking(vec!["run".into(), plan.clone()]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("refused before any traffic moved")
            && text(&o).contains("all traffic on candidate `green`")
            && text(&o).contains("--swap-colours"),
        "{}",
        text(&o)
    );
    assert_eq!(zone.weights().await, (g, b), "the records are untouched");

    // Second deploy: green is live, so v3 goes to blue and traffic moves back.
    let o = blocking(vec![
        "run".into(),
        plan.clone(),
        "--image".into(),
        "repo/app:v3".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("`green` is live: this rollout deploys to `blue`"),
        "{}",
        text(&o)
    );
    // What it says is what the records do: blue, the candidate this time,
    // holds everything (it once said "all traffic on green").
    assert!(
        text(&o).contains("succeeded: all traffic on `blue` (the candidate, now live)"),
        "{}",
        text(&o)
    );
    let s = wait_for_status(&plan, |s| s["phase"] == "succeeded");
    assert_eq!(s["targets"]["candidate"], "blue");
    assert_eq!(s["traffic"], "all traffic on candidate `blue`");
    assert_eq!(image_of(&ecs, &blue).await, (2, "repo/app:v3".into()));
    assert_eq!(image_of(&ecs, &green).await, (0, "repo/app:v2".into()));
    let (g, b) = zone.weights().await;
    assert!(b > 0 && g == 0, "weights green {g} blue {b}");

    let o = blocking(vec![
        "history".into(),
        plan.clone(),
        "--all".into(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    let list: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let phases: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["succeeded", "succeeded"]);
}

/// Polls `cutover status` until `cond` holds; at most 30 s.
fn wait_for_status(plan: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = cutover(&["status", plan, "--output", "json"]);
        if let Ok(s) = serde_json::from_slice::<Value>(&o.stdout) {
            if cond(&s) {
                return s;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out; last: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_turns_duplicated_events_into_one_rollout() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 1, "192.0.2.10"),
        zone.plain("green", 0, 1, "192.0.2.20"),
    ])
    .await;
    let (_, sqs, queue) = common::fixtures::event_queue().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[service]\nname = \"web\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
             [router]\nkind = \"route53\"\nhosted_zone_id = \"{}\"\nrecord_name = \"{}\"\n\
             [strategy]\nsteps = [{{ split = 50, hold = \"1s\" }}, {{ split = 100, hold = \"1s\" }}]\n[analysis]\ninterval = \"500ms\"\n\
             [trigger]\nkind = \"ecs-events\"\nqueue_url = \"{queue}\"\ncluster = \"prod\"\nservices = [\"green-app\"]\ncontainers = [\"app\"]\n\
             [store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            common::moto_url(),
            zone.id,
            zone.record,
            dir.path().join("store.db").display()
        ),
    )
    .unwrap();
    let plan = plan.to_str().unwrap().to_string();

    // The same revision from two tasks, each delivered twice and out of
    // order, an unwatched service, and a body that is not an event.
    let def = common::fixtures::task_def("green-app", 7);
    for body in [
        common::fixtures::event("green-app", &def, "t1", 3, "RUNNING"),
        common::fixtures::event("green-app", &def, "t2", 2, "RUNNING"),
        common::fixtures::event("green-app", &def, "t1", 2, "RUNNING"),
        common::fixtures::event("green-app", &def, "t2", 2, "RUNNING"),
        common::fixtures::event(
            "other-app",
            &common::fixtures::task_def("other-app", 1),
            "t3",
            1,
            "RUNNING",
        ),
        "{not json".to_string(),
    ] {
        common::fixtures::send(&sqs, &queue, &body).await;
    }

    let child = Command::new(BIN)
        .args(["watch", &plan, "--wait", "1s"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for_status(&p, |s| s["phase"] == "succeeded"))
        .await
        .unwrap();
    let (g, b) = zone.weights().await;
    assert!(g > 0 && b == 0, "weights green {g} blue {b}");

    // Stop the watcher as an operator would (Ctrl-C).
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(log.matches("started by task").count(), 1, "{log}");
    assert!(log.contains("set aside a malformed message"), "{log}");

    let o = blocking(vec![
        "history".into(),
        plan,
        "--all".into(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "exactly one rollout: {list}"
    );
}

/// examples/ecs-events.toml as shipped, with only what points at this
/// test's world changed: moto, its zone and queue, short holds, a SQLite
/// store. The service is still `web` and the ECS services still
/// `web-blue` / `web-green`, names that differ, as users' do.
fn shipped_ecs_events_plan(dir: &Path, zone: &Zone, queue: &str, hold: &str) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ecs-events.toml");
    let mut plan: toml::Table = std::fs::read_to_string(example).unwrap().parse().unwrap();
    let table = |plan: &mut toml::Table, key: &str| -> toml::Table {
        plan[key].as_table().unwrap().clone()
    };
    let mut aws = table(&mut plan, "aws");
    aws.insert("region".into(), "us-east-1".into());
    aws.insert("endpoint_url".into(), common::moto_url().into());
    plan.insert("aws".into(), aws.into());
    let mut router = table(&mut plan, "router");
    router.insert("hosted_zone_id".into(), zone.id.clone().into());
    router.insert("record_name".into(), zone.record.clone().into());
    plan.insert("router".into(), router.into());
    let mut strategy = table(&mut plan, "strategy");
    strategy.insert("hold".into(), hold.into());
    strategy.insert("bake".into(), "0s".into());
    plan.insert("strategy".into(), strategy.into());
    // The checks read CloudWatch and running ECS services, which this
    // world does not have; the rollouts only move traffic.
    plan.insert(
        "analysis".into(),
        toml::Table::from_iter([("interval".to_string(), toml::Value::from("500ms"))]).into(),
    );
    let mut trigger = table(&mut plan, "trigger");
    assert_eq!(
        trigger["services"].as_array().unwrap()[0].as_str(),
        Some("web-green")
    );
    trigger.insert("queue_url".into(), queue.into());
    plan.insert("trigger".into(), trigger.into());
    plan.insert(
        "store".into(),
        toml::Table::from_iter([
            ("kind".to_string(), toml::Value::from("sqlite")),
            (
                "path".to_string(),
                dir.join("store.db").display().to_string().into(),
            ),
        ])
        .into(),
    );
    assert_eq!(plan["service"]["name"].as_str(), Some("web"));
    let path = dir.join("ecs-events.toml");
    std::fs::write(&path, toml::to_string(&plan).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn spawn_watch(plan: &str) -> std::process::Child {
    Command::new(BIN)
        .args([
            "watch",
            plan,
            "--wait",
            "1s",
            "--lease-ttl",
            "2s",
            "--tick",
            "100ms",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn rollout_ids(plan: &str) -> Vec<String> {
    let o = cutover(&["history", plan, "--all", "--output", "json"]);
    let list: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_never_deploys_an_older_revision_after_a_newer_one_with_the_shipped_names() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 1, "192.0.2.10"),
        zone.plain("green", 0, 1, "192.0.2.20"),
    ])
    .await;
    let (_, sqs, queue) = common::fixtures::event_queue().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = shipped_ecs_events_plan(dir.path(), &zone, &queue, "1s");
    let child = spawn_watch(&plan);

    // Revision 4 is deployed to web-green and rolled out.
    let rev = |n| common::fixtures::task_def("web-app", n);
    common::fixtures::send(
        &sqs,
        &queue,
        &common::fixtures::event("web-green", &rev(4), "t4", 1, "RUNNING"),
    )
    .await;
    let p = plan.clone();
    tokio::task::spawn_blocking(move || wait_for_status(&p, |s| s["phase"] == "succeeded"))
        .await
        .unwrap();
    assert_eq!(zone.weights().await, (100, 0));

    // Then revisions 3 and 1 come back (a retried, reordered queue): both
    // are older, refused as superseded, never a rollout of their own.
    for (n, task) in [(3, "t3"), (1, "t1")] {
        common::fixtures::send(
            &sqs,
            &queue,
            &common::fixtures::event("web-green", &rev(n), task, 1, "RUNNING"),
        )
        .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::fixtures::queue_len(&sqs, &queue).await > 0 {
        assert!(std::time::Instant::now() < deadline, "events never handled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        log.matches("is superseded: the service has a rollout of revision 4")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(rollout_ids(&plan), ["web-web-app-4"]);
    assert_eq!(zone.weights().await, (100, 0), "still on revision 4");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_killed_mid_rollout_leaves_it_to_the_surviving_watcher() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 1, "192.0.2.10"),
        zone.plain("green", 0, 1, "192.0.2.20"),
    ])
    .await;
    let (_, sqs, queue) = common::fixtures::event_queue().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = shipped_ecs_events_plan(dir.path(), &zone, &queue, "4s");
    let first = spawn_watch(&plan);
    let second = spawn_watch(&plan);
    let def = common::fixtures::task_def("web-app", 5);
    common::fixtures::send(
        &sqs,
        &queue,
        &common::fixtures::event("web-green", &def, "t5", 1, "RUNNING"),
    )
    .await;

    // Whichever watcher drives it is killed with -9 during the first hold.
    let p = plan.clone();
    let s = tokio::task::spawn_blocking(move || {
        wait_for_status(&p, |s| s["phase"] == "holding" && s["driver"].is_string())
    })
    .await
    .unwrap();
    let driver = s["driver"].as_str().unwrap().to_string();
    let pid: u32 = driver.rsplit(':').next().unwrap().parse().unwrap();
    let (mut killed, survivor) = if pid == first.id() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(killed.id(), pid, "driven by one of the two: {driver}");
    killed.kill().unwrap();
    killed.wait().unwrap();

    // The survivor takes it over once the lease runs out and finishes it.
    let p = plan.clone();
    let s = tokio::task::spawn_blocking(move || wait_for_status(&p, |s| s["phase"] == "succeeded"))
        .await
        .unwrap();
    assert_eq!(zone.weights().await, (100, 0));
    assert!(
        s["written_by"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", survivor.id())),
        "{s}"
    );
    Command::new("kill")
        .args(["-INT", &survivor.id().to_string()])
        .status()
        .unwrap();
    let out = survivor.wait_with_output().unwrap();
    let log = text(&out);
    assert!(log.contains("web-web-app-5: taken over"), "{log}");
    assert_eq!(rollout_ids(&plan), ["web-web-app-5"]);
}

/// The shipped Route53 example on records whose TTL (300 s) outlasts its
/// 60 s holds: `cutover run` refuses with exit 2 before a rollout record
/// exists, naming the key and its table, and touches no weight. It once
/// exited 1, left a failed rollout behind, and did not say where
/// `allow_short_holds` goes.
#[tokio::test(flavor = "multi_thread")]
async fn holds_shorter_than_the_ttl_are_refused_with_exit_2_and_no_rollout_record() {
    let zone = Zone::new().await;
    zone.create(vec![
        zone.plain("blue", 100, 300, "192.0.2.10"),
        zone.plain("green", 0, 300, "192.0.2.20"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/route53.toml");
    let mut plan: toml::Table = std::fs::read_to_string(example).unwrap().parse().unwrap();
    let mut aws = plan["aws"].as_table().unwrap().clone();
    aws.insert("region".into(), "us-east-1".into());
    aws.insert("endpoint_url".into(), common::moto_url().into());
    plan.insert("aws".into(), aws.into());
    let mut router = plan["router"].as_table().unwrap().clone();
    router.insert("hosted_zone_id".into(), zone.id.clone().into());
    router.insert("record_name".into(), zone.record.clone().into());
    plan.insert("router".into(), router.into());
    // Its checks read CloudWatch, which moto cannot answer the SDK on.
    plan.remove("analysis");
    plan.insert(
        "store".into(),
        toml::Table::from_iter([
            ("kind".to_string(), toml::Value::from("sqlite")),
            (
                "path".to_string(),
                dir.path().join("store.db").display().to_string().into(),
            ),
        ])
        .into(),
    );
    let path = dir.path().join("route53.toml");
    std::fs::write(&path, toml::to_string(&plan).unwrap()).unwrap();
    let path = path.to_str().unwrap().to_string();

    let o = blocking(vec!["plan".into(), path.clone()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = blocking(vec!["run".into(), path.clone()]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("refused before any traffic moved: preflight: router:")
            && said.contains("(300 s)")
            && said.contains("Lengthen the holds to at least 300 s, lower the records' TTL")
            && said.contains("`allow_short_holds = true` under `[router]`"),
        "{said}"
    );
    // No record was made, and nothing moved.
    let o = blocking(vec!["status".into(), path.clone()]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no rollout") || text(&o).contains("no store"),
        "{}",
        text(&o)
    );
    assert_eq!(zone.weights().await, (0, 100));
}
