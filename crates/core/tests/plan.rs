//! Plan files: what is accepted, what it resolves to, and how bad input is
//! reported. Data-driven through `ok` and `err`.

use std::time::Duration;

use cutover_core::plan::{self, CheckConfig, Judge, OnInconclusive, Plan};
use cutover_core::Split;

const HEAD: &str = r#"
[service]
name = "checkout"

[router]
kind = "local"
admin_url = "http://127.0.0.1:9901"
"#;

fn ok(body: &str) -> Plan {
    let text = format!("{HEAD}{body}");
    plan::parse(&text, "plan.toml")
        .unwrap_or_else(|e| panic!("expected a valid plan, got: {e}\n{text}"))
}

/// Expects an error whose text contains `want` and that points at `line`
/// (counted in `body`, 1-based; 0 = no position expected).
fn err(body: &str, line: usize, want: &str) {
    let text = format!("{HEAD}{body}");
    let e = plan::parse(&text, "plan.toml").expect_err("expected an error");
    let shown = e.to_string();
    assert!(
        shown.contains(want),
        "error `{shown}` does not contain `{want}`"
    );
    assert!(shown.starts_with("plan.toml:"), "{shown}");
    if line > 0 {
        let head_lines = HEAD.matches('\n').count();
        assert_eq!(e.line, head_lines + line, "wrong line in `{shown}`");
        assert!(e.column >= 1);
    }
}

fn splits(plan: &Plan) -> Vec<f64> {
    plan.strategy
        .steps
        .iter()
        .map(|s| s.split.percent())
        .collect()
}

#[test]
fn seed_is_the_reference_schedule() {
    let p = ok("[strategy]\npreset = \"seed\"\n");
    assert_eq!(splits(&p), [10.0, 50.0, 100.0]);
    assert!(p
        .strategy
        .steps
        .iter()
        .all(|s| s.hold == Duration::from_secs(60)));
    assert_eq!(p.analysis.judge, Judge::EndOfHold);
    assert_eq!(p.strategy.bake, Duration::ZERO);
    assert_eq!(p.timeline().total, Duration::from_secs(180));
}

#[test]
fn presets() {
    let p = ok("[strategy]\npreset = \"canary\"\nsplit = 5\nhold = \"2m\"\nbake = \"5m\"\n");
    assert_eq!(splits(&p), [5.0, 100.0]);
    assert_eq!(p.strategy.steps[0].hold, Duration::from_secs(120));
    assert_eq!(p.strategy.bake, Duration::from_secs(300));
    assert_eq!(p.analysis.judge, Judge::Continuous);

    let p = ok("[strategy]\npreset = \"linear\"\nincrement = 30\nhold = \"30s\"\n");
    assert_eq!(splits(&p), [30.0, 60.0, 90.0, 100.0]);

    let p = ok("[strategy]\npreset = \"exponential\"\n");
    assert_eq!(splits(&p), [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0]);

    let p = ok("[strategy]\npreset = \"all-at-once\"\nhold = \"20s\"\n");
    assert_eq!(splits(&p), [100.0]);
}

#[test]
fn explicit_steps_with_sub_percent_precision() {
    let p = ok(r#"
[strategy]
steps = [{ split = 0.1, hold = "30s" }, { split = 12.5, hold = "1m" }, { split = 100, hold = "500ms" }]
[analysis]
interval = "500ms"
"#);
    assert_eq!(
        p.strategy.steps[0].split,
        Split::from_basis_points(10).unwrap()
    );
    assert_eq!(
        p.strategy.steps[1].split,
        Split::from_basis_points(1250).unwrap()
    );
    assert_eq!(p.strategy.steps[2].hold, Duration::from_millis(500));
    assert_eq!(p.timeline().total, Duration::from_millis(90_500));
}

#[test]
fn analysis_and_checks() {
    let p = ok(r#"
[strategy]
preset = "canary"
[analysis]
interval = "5s"
failure_limit = 1
inconclusive_limit = 2
on_inconclusive = "pause"
[[analysis.checks]]
kind = "error-rate"
max_percent = 1
min_requests = 50
[[analysis.checks]]
kind = "latency"
name = "p99"
max = "250ms"
max_ratio_to_blue = 1.5
ratio_floor = "20ms"
[[analysis.checks]]
kind = "http"
url = "http://127.0.0.1:8080/healthz"
body_contains = "ok"
"#);
    let a = &p.analysis;
    assert_eq!(
        (a.interval, a.failure_limit, a.inconclusive_limit),
        (Duration::from_secs(5), 1, 2)
    );
    assert_eq!(a.on_inconclusive, OnInconclusive::Pause);
    let names: Vec<_> = a.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["error-rate", "p99", "http"]);
    assert_eq!(
        a.checks[0].config,
        CheckConfig::ErrorRate {
            max_percent: 1.0,
            min_requests: 50,
            window: Duration::from_secs(5)
        }
    );
    assert_eq!(
        a.checks[1].config,
        CheckConfig::Latency {
            percentile: 99.0,
            max: Some(Duration::from_millis(250)),
            max_ratio_to_blue: Some(1.5),
            ratio_floor: Some(Duration::from_millis(20)),
            min_requests: 10,
            window: Duration::from_secs(5)
        }
    );
    assert_eq!(
        p.timeline().worst_case,
        None,
        "a pause waits for an operator"
    );
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    err(
        "[strategy]\npreset = \"seed\"\ncolour = 3\n",
        3,
        "unknown field `colour`",
    );
    err(
        "[strategy]\npreset = \"seed\"\n[analysis]\ninterval = 10\n",
        4,
        "invalid type",
    );
    err("[strategy\n", 1, "expected");
    err(
        "[strategy]\npreset = \"seed\"\n[frobnicate]\nx = 1\n",
        3,
        "unknown field `frobnicate`",
    );
}

#[test]
fn semantic_errors_are_caught_before_anything_moves() {
    err(
        "[strategy]\npreset = \"fast\"\n",
        2,
        "unknown preset `fast`; expected one of: seed, canary",
    );
    err(
        "[strategy]\nsteps = [{ split = 50, hold = \"1m\" }, { split = 20, hold = \"1m\" }, { split = 100, hold = \"1m\" }]\n",
        2,
        "splits must strictly increase",
    );
    err(
        "[strategy]\nsteps = [{ split = 50, hold = \"1m\" }]\n",
        2,
        "last step must send 100 %",
    );
    err(
        "[strategy]\nsteps = [{ split = 100, hold = \"5s\" }]\n[analysis]\ninterval = \"10s\"\n",
        2,
        "shorter than the analysis interval",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[analysis]\ninterval = \"0s\"\n",
        4,
        "longer than zero",
    );
    err(
        "[strategy]\npreset = \"canary\"\nsplit = 101\n",
        3,
        "from 0 to 100",
    );
    err(
        "[strategy]\npreset = \"canary\"\nsplit = 0.001\n",
        3,
        "precision of 0.01 %",
    );
    err(
        "[strategy]\npreset = \"canary\"\nincrement = 5\n",
        3,
        "does not apply to preset `canary`",
    );
    err(
        "[strategy]\npreset = \"canary\"\nhold = \"5 minutes\"\n",
        3,
        "unknown unit",
    );
    err("[strategy]\n", 1, "needs a `preset`");
    err("[strategy]\npreset = \"canary\"\nsteps = []\n", 3, "either");
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"vibes\"\n",
        3,
        "unknown check #1 kind `vibes`",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"latency\"\n",
        3,
        "give `max`",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"latency\"\nmax = \"1s\"\nratio_floor = \"5ms\"\n",
        3,
        "`ratio_floor` bounds `max_ratio_to_blue`'s limit",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"latency\"\nmax_ratio_to_blue = 2\nratio_floor = \"5\"\n",
        3,
        "`ratio_floor`: ",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"health\"\n[[analysis.checks]]\nkind = \"health\"\n",
        5,
        "two checks are named `health`",
    );
    err("[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"error-rate\"\nmax_percnt = 1\n", 3, "unknown field `max_percnt`");
    err(
        "[strategy]\npreset = \"canary\"\n[aws]\nconnect_timeout = \"0s\"\n",
        4,
        "`aws.connect_timeout` must be above 0 and at most 10m",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[aws]\nread_timeout = \"40s\"\n",
        4,
        "`aws.attempt_timeout` (30s) must be at least `aws.read_timeout` (40s)",
    );
    for (url, why) in [
        (
            "http://127.0.0.1:99999",
            "port `99999` is not a port (1 to 65535)",
        ),
        ("http://127.0.0.1:0", "port `0` is not a port"),
        ("http://[::1", "missing its closing `]`"),
        ("https://127.0.0.1:9090", "speaks plain HTTP; use http://"),
        ("http://127.0.0.1:9090/?x=1", "takes no query or fragment"),
        ("http://", "has no usable host"),
        ("127.0.0.1:9090", "expected an http:// URL"),
    ] {
        let e = plan::parse(
            &format!("[service]\nname = \"a\"\n[router]\nkind = \"local\"\nadmin_url = \"{url}\"\n[strategy]\npreset = \"canary\"\n"),
            "p.toml",
        )
        .unwrap_err();
        assert!(e.message.contains(why), "{url}: {e}");
        assert_eq!(e.line, 3, "{url}: {e}");
    }
    for url in [
        "http://[::1]:9090",
        "http://localhost:9090/admin",
        "http://127.0.0.1",
    ] {
        let text = format!("[service]\nname = \"a\"\n[router]\nkind = \"local\"\nadmin_url = \"{url}\"\n[strategy]\npreset = \"canary\"\n");
        plan::parse(&text, "p.toml").unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    // 0 is not silently read as 1.
    for kind in ["error-rate\"\nmax_percent = 1", "latency\"\nmax = \"1s\""] {
        err(
            &format!("[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"{kind}\nmin_requests = 0\n"),
            3,
            "`min_requests` = 0 would judge a rate over no requests; give 1 or more (default 10)",
        );
    }
    err(
        "[strategy]\npreset = \"canary\"\nbake = \"1s\"\n",
        3,
        "shorter than the analysis interval",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[store]\nkind = \"etcd\"\n",
        3,
        "unknown store kind `etcd`",
    );
}

#[test]
fn router_errors() {
    let text =
        "[service]\nname = \"a\"\n[router]\nkind = \"haproxy\"\n[strategy]\npreset = \"seed\"\n";
    let e = plan::parse(text, "p.toml").unwrap_err();
    assert_eq!((e.line, e.column), (3, 1), "{e}");
    assert!(
        e.message
            .contains("unknown router kind `haproxy`; expected one of: local"),
        "{e}"
    );

    let text = "[service]\nname = \"a b\"\n[router]\nkind = \"local\"\nadmin_url = \"x\"\n[strategy]\npreset = \"seed\"\n";
    let e = plan::parse(text, "p.toml").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
}

const ALB: &str = r#"
[service]
name = "web"
[aws]
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:5000"
[router]
kind = "alb"
listener_arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2"
blue_target_group_arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/blue/73e2d6bc24d8a067"
green_target_group_arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/green/943f017f100becff"
[strategy]
preset = "canary"
"#;

#[test]
fn aws_checks_default_to_the_alb_routers_target_groups() {
    let text = format!(
        "{ALB}[[analysis.checks]]\nkind = \"target-health\"\n[[analysis.checks]]\nkind = \"alb-error-rate\"\nmax_percent = 1\ncompare = \"blue\"\n\
         [[analysis.checks]]\nkind = \"alb-latency\"\nmax = \"300ms\"\n[[analysis.checks]]\nkind = \"alarm\"\nalarm_names = [\"web-5xx\"]\n"
    );
    let p = plan::parse(&text, "alb.toml").unwrap();
    assert_eq!(p.aws.region.as_deref(), Some("eu-west-1"));
    match &p.analysis.checks[0].config {
        CheckConfig::TargetHealth {
            target_group_arn,
            min_healthy,
        } => {
            assert!(target_group_arn.ends_with("targetgroup/green/943f017f100becff"));
            assert_eq!(*min_healthy, 1);
        }
        other => panic!("{other:?}"),
    }
    match &p.analysis.checks[1].config {
        CheckConfig::AlbErrorRate {
            load_balancer,
            target_group,
            compare,
            window,
            ..
        } => {
            assert_eq!(load_balancer, "app/web/50dc6c495c0c9188");
            assert_eq!(target_group, "targetgroup/green/943f017f100becff");
            let c = compare.as_ref().unwrap();
            assert_eq!(
                c.blue_dimensions["TargetGroup"],
                "targetgroup/blue/73e2d6bc24d8a067"
            );
            assert_eq!(*window, Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn aws_mistakes_are_located() {
    let route53 = "[service]\nname = \"a\"\n[router]\nkind = \"route53\"\nhosted_zone_id = \"Z1\"\nrecord_name = \"a.example.com\"\nrecord_type = \"MX\"\n[strategy]\npreset = \"seed\"\n";
    let e = plan::parse(route53, "r.toml").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("must be A, AAAA or CNAME"), "{e}");

    let e = plan::parse(
        &format!("{ALB}[[analysis.checks]]\nkind = \"alb-error-rate\"\nmax = \"1s\"\n"),
        "a.toml",
    )
    .unwrap_err();
    assert!(e.message.contains("belong to `alb-latency`"), "{e}");
    assert_eq!(e.line, 14, "{e}");
    let e = plan::parse(
        &format!("{ALB}[[analysis.checks]]\nkind = \"alb-error-rate\"\nmax_percent = 1\nmin_requests = 0\n"),
        "a.toml",
    )
    .unwrap_err();
    assert!(
        e.message.contains("`min_requests` = 0") && e.message.contains("(default 50)"),
        "{e}"
    );
    assert_eq!(e.line, 14, "{e}");

    let e = plan::parse(&format!("{ALB}[[analysis.checks]]\nkind = \"cloudwatch\"\nnamespace = \"X\"\nmetric_name = \"Y\"\n"), "a.toml").unwrap_err();
    assert!(e.message.contains("give a threshold"), "{e}");

    let local_target_health = "[service]\nname = \"a\"\n[router]\nkind = \"local\"\nadmin_url = \"http://x\"\n[strategy]\npreset = \"seed\"\n[[analysis.checks]]\nkind = \"target-health\"\n";
    let e = plan::parse(local_target_health, "l.toml").unwrap_err();
    assert!(e.message.contains("give `target_group_arn`"), "{e}");

    let e = plan::parse(
        &format!("{ALB}[store]\nkind = \"dynamodb\"\ntable = \"a b\"\n"),
        "a.toml",
    )
    .unwrap_err();
    assert!(e.message.contains("not a valid DynamoDB table name"), "{e}");
}

#[test]
fn nonsense_is_refused_where_it_is_written() {
    // Durations past 30 days, however written.
    err(
        "[strategy]\nsteps = [{ split = 100, hold = \"168000h\" }]\n",
        2,
        "`168000h` is longer than 30d",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"error-rate\"\nmax_percent = 1\nwindow = \"18446744073709551615ms\"\n",
        0,
        "longer than 30d",
    );
    err(
        "[strategy]\npreset = \"canary\"\nbake = \"31d\"\n",
        3,
        "`31d` is longer than 30d",
    );
    let p = ok("[strategy]\npreset = \"canary\"\nbake = \"30d\"\n");
    assert_eq!(p.strategy.bake, Duration::from_secs(30 * 86_400));

    // A service name is part of ids, lease names and metric labels.
    let long = format!(
        "[service]\nname = \"{}\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:9901\"\n[strategy]\npreset = \"canary\"\n",
        "a".repeat(1_000_000)
    );
    let e = plan::parse(&long, "p.toml").unwrap_err();
    assert!(
        e.message.contains("1 to 128 letters"),
        "{}",
        e.message.len()
    );
    assert_eq!(e.line, 2);

    // A store path that cannot be a file.
    err(
        "[strategy]\npreset = \"canary\"\n[store]\nkind = \"sqlite\"\npath = \"\"\n",
        3,
        "`path` is empty",
    );

    // AWS identifiers that cannot be what they claim.
    let route53 = |zone: &str| {
        format!("[service]\nname = \"a\"\n[router]\nkind = \"route53\"\nhosted_zone_id = \"{zone}\"\nrecord_name = \"a.example.com\"\n[strategy]\npreset = \"seed\"\n")
    };
    for zone in ["green", "Z12 3", ""] {
        let e = plan::parse(&route53(zone), "r.toml").unwrap_err();
        assert!(e.message.contains("is not a hosted zone id"), "{zone}: {e}");
        assert_eq!(e.line, 3, "{e}");
    }
    assert!(plan::parse(&route53("/hostedzone/Z0123456789ABCDEFGHIJ"), "r.toml").is_ok());
    let newline = ALB.replace("targetgroup/green/", "targetgroup/gr\\neen/");
    assert_ne!(newline, ALB);
    let e = plan::parse(&newline, "a.toml").unwrap_err();
    assert!(
        e.message.contains("whitespace or a control character"),
        "{e}"
    );
    let not_arn = ALB.replace(
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/green",
        "green",
    );
    assert_ne!(not_arn, ALB);
    let e = plan::parse(&not_arn, "a.toml").unwrap_err();
    assert!(e.message.contains("is not an ARN of a targetgroup"), "{e}");
    let e = plan::parse(
        &format!("{ALB}[[analysis.checks]]\nkind = \"alb-error-rate\"\nmax_percent = 1\nload_balancer = \"app/a\\nb/1\"\n"),
        "a.toml",
    )
    .unwrap_err();
    assert!(
        e.message.contains("is not a CloudWatch dimension value"),
        "{e}"
    );
}

#[test]
fn swapping_colours_exchanges_every_side() {
    let text = format!(
        "{ALB}[[analysis.checks]]\nkind = \"target-health\"\n[[analysis.checks]]\nkind = \"alb-error-rate\"\nmax_percent = 1\ncompare = \"blue\"\n\
         [platform]\nkind = \"ecs\"\ncluster = \"c\"\nblue_service = \"web-blue\"\ngreen_service = \"web-green\"\ncontainer = \"app\"\n\
         [[analysis.checks]]\nkind = \"ecs-service\"\n"
    );
    let p = plan::parse(&text, "alb.toml").unwrap();
    let s = p.with_colours_swapped();
    let cutover_core::plan::RouterConfig::Alb(a) = &s.router else {
        panic!()
    };
    assert!(a
        .green_target_group_arn
        .ends_with("targetgroup/blue/73e2d6bc24d8a067"));
    match (
        &s.analysis.checks[0].config,
        &s.analysis.checks[1].config,
        &s.analysis.checks[2].config,
    ) {
        (
            CheckConfig::TargetHealth {
                target_group_arn, ..
            },
            CheckConfig::AlbErrorRate {
                target_group,
                compare,
                ..
            },
            CheckConfig::EcsService { service, .. },
        ) => {
            assert!(target_group_arn.ends_with("targetgroup/blue/73e2d6bc24d8a067"));
            assert_eq!(target_group, "targetgroup/blue/73e2d6bc24d8a067");
            assert_eq!(
                compare.as_ref().unwrap().blue_dimensions["TargetGroup"],
                "targetgroup/green/943f017f100becff"
            );
            assert_eq!(service, "web-blue");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.with_colours_swapped(),
        p,
        "swapping twice is the identity"
    );
}

#[test]
fn the_sequential_error_rate_check_takes_the_judges_settings_and_refuses_bad_ones() {
    let p = ok(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"sequential-error-rate\"\n",
    );
    let c = &p.analysis.checks[0];
    assert_eq!(c.name, "sequential-error-rate");
    assert_eq!(
        c.config.judge_settings(),
        Some(cutover_core::judge::Settings::default())
    );
    assert!(!c.config.reads_aws());
    assert_eq!(p.analysis.wait_for_data, Duration::from_secs(600));

    let p = ok("[strategy]\npreset = \"canary\"\n[analysis]\nwait_for_data = \"2m\"\n\
                [[analysis.checks]]\nkind = \"sequential-error-rate\"\nname = \"errors\"\n\
                alpha = 0.05\nmargin = 1.5\ndetect_ratio = 3\ndetect_points = 0.5\nmin_rate = 0.01\n");
    let s = p.analysis.checks[0].config.judge_settings().unwrap();
    assert_eq!(
        (
            s.alpha,
            s.margin,
            s.detect_ratio,
            s.detect_points,
            s.min_rate
        ),
        (0.05, 1.5, 3.0, 0.5, 0.01)
    );
    assert_eq!(p.analysis.wait_for_data, Duration::from_secs(120));

    let check =
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"sequential-error-rate\"\n";
    for (key, want) in [
        ("alpha = 0", "`alpha` must be in (0, 0.5], got 0"),
        ("alpha = 0.7", "`alpha` must be in (0, 0.5]"),
        ("margin = 0.5", "`margin` must be at least 1"),
        ("detect_ratio = 1.1", "`detect_ratio` must be between 1.25"),
        (
            "detect_points = 101",
            "`detect_points` must be from 0 (off) to 100",
        ),
        ("min_rate = 0", "`min_rate` must be in (0, 1]"),
        ("max_percent = 1", "unknown field `max_percent`"),
    ] {
        err(&format!("{check}{key}\n"), 0, want);
    }
    err(
        "[strategy]\npreset = \"canary\"\n[analysis]\njudge = \"end-of-hold\"\n[[analysis.checks]]\nkind = \"sequential-error-rate\"\n",
        5,
        "needs `analysis.judge = \"continuous\"`",
    );
    err(
        "[strategy]\npreset = \"all-at-once\"\n[[analysis.checks]]\nkind = \"sequential-error-rate\"\n",
        3,
        "needs a first step below 100 %",
    );
    err(
        "[strategy]\npreset = \"canary\"\n[analysis]\non_wait_expired = \"maybe\"\n",
        4,
        "unknown `analysis.on_wait_expired` `maybe`; expected `pass`, `pause` or `inconclusive`",
    );
    let p = ok(
        "[strategy]\npreset = \"canary\"\n[analysis]\non_wait_expired = \"pause\"\n\
                [[analysis.checks]]\nkind = \"sequential-error-rate\"\n",
    );
    assert_eq!(p.analysis.on_wait_expired, plan::OnWaitExpired::Pause);
    assert_eq!(p.timeline().worst_case, None, "may wait for an operator");
    err(
        "[strategy]\npreset = \"canary\"\n[analysis]\nwait_for_data = \"31d\"\n",
        4,
        "longer than 30d",
    );
}

/// `[platform] container` takes one name for both colours or one per
/// colour (the reference names them `blue-app` and `green-app`); swapping
/// the colours swaps them too.
#[test]
fn an_ecs_container_may_be_named_per_colour() {
    let with = |container: &str| {
        format!(
            "{ALB}[platform]\nkind = \"ecs\"\ncluster = \"c\"\nblue_service = \"web-blue\"\ngreen_service = \"web-green\"\n{container}\n"
        )
    };
    let ecs = |p: &plan::Plan| match &p.platform {
        Some(cutover_core::plan::PlatformConfig::Ecs(e)) => (
            e.container_of(false).to_string(),
            e.container_of(true).to_string(),
        ),
        other => panic!("{other:?}"),
    };
    let p = plan::parse(&with("container = \"app\""), "p.toml").unwrap();
    assert_eq!(ecs(&p), ("app".into(), "app".into()));
    let p = plan::parse(
        &with("container = { blue = \"blue-app\", green = \"green-app\" }"),
        "p.toml",
    )
    .unwrap();
    assert_eq!(ecs(&p), ("blue-app".into(), "green-app".into()));
    assert_eq!(
        ecs(&p.with_colours_swapped()),
        ("green-app".into(), "blue-app".into())
    );
    for bad in [
        "container = { blue = \"blue-app\" }",
        "container = { blue = \"a\", green = \"b\", red = \"c\" }",
        "container = \"\"",
    ] {
        let e = plan::parse(&with(bad), "p.toml").unwrap_err();
        assert!(e.line > 0, "{bad}: {e}");
        assert!(e.message.contains("platform `ecs`"), "{bad}: {e}");
    }
}

/// `prometheus`: counters for the sequential test or a value against
/// thresholds; each query names its colour, and a mistake is refused where
/// it is written.
#[test]
fn a_prometheus_check_is_sequential_on_counters_or_a_threshold_on_a_value() {
    use cutover_core::plan::PrometheusJudge;
    let head = "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"prometheus\"\n\
                url = \"http://prom:9090/\"\n";
    let p = ok(&format!(
        "{head}requests = 'sum(http_requests_total{{version=\"${{colour}}\"}})'\n\
         failures = 'sum(http_requests_total{{version=\"${{colour}}\",code=~\"5..\"}})'\n\
         colours = {{ blue = \"v1\", green = \"v2\" }}\nalpha = 0.05\n"
    ));
    let c = &p.analysis.checks[0];
    assert_eq!(c.name, "prometheus");
    assert!(!c.config.reads_aws());
    assert_eq!(c.config.judge_settings().unwrap().alpha, 0.05);
    let CheckConfig::Prometheus(prom) = &c.config else {
        panic!("{c:?}")
    };
    assert_eq!(prom.url, "http://prom:9090");
    assert_eq!(
        (prom.blue_value.as_str(), prom.green_value.as_str()),
        ("v1", "v2")
    );
    assert_eq!(prom.timeout, Duration::from_secs(5));
    assert!(matches!(
        prom.judge,
        PrometheusJudge::SequentialErrorRate { scrape_interval, .. } if scrape_interval == Duration::from_secs(15)
    ));
    // The candidate is blue's side once the colours are swapped.
    let swapped = p.with_colours_swapped();
    let CheckConfig::Prometheus(s) = &swapped.analysis.checks[0].config else {
        panic!()
    };
    assert_eq!(
        (s.blue_value.as_str(), s.green_value.as_str()),
        ("v2", "v1")
    );

    let p = ok(&format!(
        "{head}query = 'sum by (pool) (rate(errors_total[1m]))'\ncolour_label = \"pool\"\n\
         max = 0.5\nmax_ratio_to_blue = 2\n"
    ));
    let CheckConfig::Prometheus(prom) = &p.analysis.checks[0].config else {
        panic!()
    };
    assert_eq!(
        prom.judge,
        PrometheusJudge::Threshold {
            query: "sum by (pool) (rate(errors_total[1m]))".into(),
            max: Some(0.5),
            min: None,
            max_ratio_to_blue: Some(2.0),
        }
    );
    assert_eq!(p.analysis.checks[0].config.judge_settings(), None);

    for (body, want) in [
        ("query = 'up'\nmax = 1\n", "`query` does not say which colour it is about: put `${colour}`"),
        ("query = 'x{c=\"${colour}\"}'\n", "give a threshold for `query`"),
        ("query = 'x{c=\"${colour}\"}'\nmax = 1\nalpha = 0.1\n", "`alpha` belongs to the sequential test"),
        ("requests = 'a{c=\"${colour}\"}'\nfailures = 'b{c=\"${colour}\"}'\nmax = 1\n", "`max` belongs to a threshold"),
        ("requests = 'a{c=\"${colour}\"}'\n", "`requests` needs `failures` too"),
        ("requests = 'a'\nfailures = 'b'\nquery = 'c'\n", "not both"),
        ("", "give `requests` and `failures`"),
        ("query = 'x{c=\"${colour}\"}'\nmin = 2\nmax = 1\n", "`min` = 2 is above `max` = 1"),
        ("query = 'x{c=\"${colour}\"}'\nmax_ratio_to_blue = 0\n", "`max_ratio_to_blue` must be above 0"),
        ("query = 'x'\ncolour_label = \"1pool\"\nmax = 1\n", "`colour_label` `1pool` is not a Prometheus label name"),
        ("query = 'x{c=\"${colour}\"}'\nmax = 1\ncolours = { blue = \"a\", green = \"a\" }\n", "blue and green are both `a`"),
        ("query = 'x{c=\"${colour}\"}'\nmax = 1\ncolours = { blue = \"a\\\"\", green = \"b\" }\n", "without quotes"),
        ("requests = 'a{c=\"${colour}\"}'\nfailures = 'b{c=\"${colour}\"}'\nscrape_interval = \"0s\"\n", "`scrape_interval` must be above zero"),
        ("requests = 'a{c=\"${colour}\"}'\nfailures = 'b{c=\"${colour}\"}'\nmargin = 0.5\n", "`margin` must be at least 1"),
        ("query = 'x{c=\"${colour}\"}'\nmax = 1\nwindow = \"1m\"\n", "unknown field `window`"),
    ] {
        err(&format!("{head}{body}"), 3, want);
    }
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"prometheus\"\nurl = \"https://prom\"\nquery = 'x{c=\"${colour}\"}'\nmax = 1\n",
        3,
        "`url` must be an http:// URL",
    );
    err(
        "[strategy]\npreset = \"all-at-once\"\n[[analysis.checks]]\nkind = \"prometheus\"\nurl = \"http://prom\"\n\
         requests = 'a{c=\"${colour}\"}'\nfailures = 'b{c=\"${colour}\"}'\n",
        3,
        "needs a first step below 100 %",
    );
}

/// `alb-sequential-error-rate` takes its target groups from router `alb`
/// (green's against blue's), swaps them with the colours, and is refused
/// without them elsewhere or when both are the same.
#[test]
fn the_alb_sequential_check_compares_the_routers_target_groups() {
    let p = plan::parse(
        &format!("{ALB}[[analysis.checks]]\nkind = \"alb-sequential-error-rate\"\nalpha = 0.02\n"),
        "alb.toml",
    )
    .unwrap();
    let c = &p.analysis.checks[0].config;
    assert!(c.reads_aws());
    assert_eq!(c.judge_settings().unwrap().alpha, 0.02);
    let CheckConfig::AlbSequentialErrorRate {
        load_balancer,
        target_group,
        blue_target_group,
        settle,
        ..
    } = c
    else {
        panic!("{c:?}")
    };
    assert_eq!(load_balancer, "app/web/50dc6c495c0c9188");
    assert_eq!(target_group, "targetgroup/green/943f017f100becff");
    assert_eq!(blue_target_group, "targetgroup/blue/73e2d6bc24d8a067");
    assert_eq!(*settle, Duration::from_secs(60));
    let CheckConfig::AlbSequentialErrorRate {
        blue_load_balancer, ..
    } = c
    else {
        panic!()
    };
    assert_eq!(blue_load_balancer, "app/web/50dc6c495c0c9188", "one ALB");
    let swapped = p.with_colours_swapped();
    let CheckConfig::AlbSequentialErrorRate {
        target_group,
        blue_target_group,
        ..
    } = &swapped.analysis.checks[0].config
    else {
        panic!()
    };
    assert_eq!(target_group, "targetgroup/blue/73e2d6bc24d8a067");
    assert_eq!(blue_target_group, "targetgroup/green/943f017f100becff");

    for (body, want) in [
        ("settle = \"20m\"\n", "`settle` must be at most 15m"),
        (
            "blue_target_group = \"targetgroup/green/943f017f100becff\"\n",
            "are both",
        ),
        (
            "target_group = \"green\"\n",
            "not a CloudWatch dimension value",
        ),
        ("max_percent = 1\n", "unknown field `max_percent`"),
    ] {
        let e = plan::parse(
            &format!("{ALB}[[analysis.checks]]\nkind = \"alb-sequential-error-rate\"\n{body}"),
            "alb.toml",
        )
        .unwrap_err();
        assert!(e.message.contains(want), "{e}");
        assert_eq!(e.line, 14, "{e}");
    }
    err(
        "[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"alb-sequential-error-rate\"\nload_balancer = \"app/a/1\"\ntarget_group = \"targetgroup/g/1\"\n",
        3,
        "give `blue_target_group`",
    );
    // Route53 between two load balancers: each colour its own, swapped too.
    let p = ok("[strategy]\npreset = \"canary\"\n[[analysis.checks]]\nkind = \"alb-sequential-error-rate\"\n\
                load_balancer = \"app/green/1\"\ntarget_group = \"targetgroup/web/1\"\n\
                blue_load_balancer = \"app/blue/2\"\nblue_target_group = \"targetgroup/web/1\"\n");
    let s = p.with_colours_swapped();
    let CheckConfig::AlbSequentialErrorRate {
        load_balancer,
        blue_load_balancer,
        ..
    } = &s.analysis.checks[0].config
    else {
        panic!()
    };
    assert_eq!(
        (load_balancer.as_str(), blue_load_balancer.as_str()),
        ("app/blue/2", "app/green/1")
    );
}
