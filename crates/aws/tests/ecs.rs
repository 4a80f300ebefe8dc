//! The ECS platform against moto: a new revision on the idle colour, scaled
//! like the live one and ready once steady with healthy load-balancer
//! targets; the old colour scaled to 0 afterwards.
//!
//! moto registers no ECS task with a target group: tests register EC2
//! instances as the idle service's targets, and stop one to make it
//! `unused` (moto reports every other registered target `healthy`).

mod common;

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::fixtures::{register, run_instance, set_instance_running, Ecs as Fixture};
use cutover_aws::ecs::{live_colour, Colour, EcsPlatform, NewVersion};
use cutover_core::Split;
use cutover_engine::ports::Platform;
use tokio::sync::Notify;

/// Blue runs 3 tasks of `registry/app:v1`; green is idle.
async fn fixture(scale_down_after: Option<Duration>) -> Fixture {
    Fixture::new(3, scale_down_after).await
}

#[tokio::test]
async fn prepare_puts_a_new_image_on_the_idle_colour_and_finalize_retires_the_old() {
    let f = fixture(Some(Duration::from_millis(10))).await;
    let platform = EcsPlatform::new(
        &f.config,
        &f.sdk,
        NewVersion::Image("registry/app:v2".into()),
    )
    .with_live(live_colour(Split::ZERO))
    .with_poll_interval(Duration::from_millis(50));
    assert!(
        platform.describe().contains("green service"),
        "{}",
        platform.describe()
    );

    platform.prepare(Duration::from_secs(10)).await.unwrap();

    let green = f.service(&f.config.green_service).await;
    assert_eq!(green.desired_count, 3, "mirrors the live service's count");
    let new_arn = green.task_definition.clone().unwrap();
    assert_ne!(new_arn, f.green_def);
    assert!(
        new_arn.ends_with(&format!("{}:2", f.config.green_service)),
        "{new_arn}"
    );

    // Only the image changed.
    let old = f.task_definition(&f.green_def).await;
    let new = f.task_definition(&new_arn).await;
    let old_containers = old.container_definitions.clone().unwrap();
    let new_containers = new.container_definitions.clone().unwrap();
    assert_eq!(new_containers.len(), 2);
    assert_eq!(new_containers[0].name.as_deref(), Some("app"));
    assert_eq!(new_containers[0].image.as_deref(), Some("registry/app:v2"));
    let mut expected = old_containers[0].clone();
    expected.image = Some("registry/app:v2".into());
    assert_eq!(new_containers[0], expected);
    assert_eq!(new_containers[1], old_containers[1]);
    assert_eq!((new.cpu, new.memory), (old.cpu, old.memory));
    assert_eq!(new.family, old.family);

    // Blue untouched until finalize.
    let blue = f.service(&f.config.blue_service).await;
    assert_eq!(
        (blue.desired_count, blue.task_definition.as_deref()),
        (3, Some(f.blue_def.as_str()))
    );

    platform.finalize().await.unwrap();
    assert_eq!(f.service(&f.config.blue_service).await.desired_count, 0);
    assert_eq!(f.service(&f.config.green_service).await.desired_count, 3);
}

#[tokio::test]
async fn the_next_deploy_goes_to_blue_with_a_given_task_definition() {
    let f = fixture(None).await;
    // Green took all traffic last time: it is live with 3 tasks.
    f.ecs
        .update_service()
        .cluster(&f.config.cluster)
        .service(&f.config.green_service)
        .desired_count(3)
        .send()
        .await
        .unwrap();
    let given = register(&f.ecs, &f.config.blue_service, "registry/app:v3").await;
    let platform = EcsPlatform::new(&f.config, &f.sdk, NewVersion::TaskDefinition(given.clone()))
        .with_live(live_colour(Split::FULL))
        .with_poll_interval(Duration::from_millis(50));
    assert_eq!(platform.live(), Colour::Green);
    platform.prepare(Duration::from_secs(10)).await.unwrap();
    let blue = f.service(&f.config.blue_service).await;
    assert_eq!(blue.task_definition.as_deref(), Some(given.as_str()));
    assert_eq!(blue.desired_count, 3);

    // No scale_down_after: finalize keeps the old colour.
    platform.finalize().await.unwrap();
    assert_eq!(f.service(&f.config.green_service).await.desired_count, 3);
}

/// The reference's own set-up names the containers after their colours
/// (`blue-app`, `green-app`). With one name per colour in the plan, a
/// deploy to green and the next one, to blue, each replace the image of
/// their own service's container (one name for both failed the second).
#[tokio::test]
async fn each_colour_s_container_may_have_its_own_name() {
    use common::fixtures::ecs_container;
    let f = fixture(None).await;
    let own = |family: &str, name: &str, image: &str| {
        let (ecs, family, name, image) = (
            f.ecs.clone(),
            family.to_string(),
            name.to_string(),
            image.to_string(),
        );
        async move {
            ecs.register_task_definition()
                .family(&family)
                .cpu("256")
                .memory("512")
                .container_definitions(ecs_container(&name, &image))
                .send()
                .await
                .unwrap()
                .task_definition
                .unwrap()
                .task_definition_arn
                .unwrap()
        }
    };
    let blue_def = own(&f.config.blue_service, "blue-app", "registry/app:v1").await;
    let green_def = own(&f.config.green_service, "green-app", "registry/app:v0").await;
    for (service, def) in [
        (&f.config.blue_service, &blue_def),
        (&f.config.green_service, &green_def),
    ] {
        f.ecs
            .update_service()
            .cluster(&f.config.cluster)
            .service(service)
            .task_definition(def)
            .send()
            .await
            .unwrap();
    }
    let text = format!(
        "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n\
         [strategy]\npreset = \"all-at-once\"\nhold = \"1m\"\n\
         [platform]\nkind = \"ecs\"\ncluster = \"{}\"\nblue_service = \"{}\"\ngreen_service = \"{}\"\n\
         container = {{ blue = \"blue-app\", green = \"green-app\" }}\nready_deadline = \"10s\"\n",
        f.config.cluster, f.config.blue_service, f.config.green_service
    );
    let plan = cutover_core::plan::parse(&text, "web.toml").unwrap();
    let Some(cutover_core::plan::PlatformConfig::Ecs(config)) = plan.platform else {
        panic!("an ecs platform")
    };
    let image_of = |def: String, name: &'static str| {
        let f = &f;
        async move {
            let d = f.task_definition(&def).await;
            d.container_definitions
                .unwrap()
                .into_iter()
                .find(|c| c.name.as_deref() == Some(name))
                .and_then(|c| c.image)
        }
    };

    // Blue is live: v2 goes on green, into `green-app`.
    EcsPlatform::new(&config, &f.sdk, NewVersion::Image("registry/app:v2".into()))
        .with_live(live_colour(Split::ZERO))
        .with_poll_interval(Duration::from_millis(50))
        .prepare(Duration::from_secs(10))
        .await
        .unwrap();
    let green = f
        .service(&config.green_service)
        .await
        .task_definition
        .unwrap();
    assert_eq!(
        image_of(green, "green-app").await.as_deref(),
        Some("registry/app:v2")
    );

    // Green is live now: v3 goes on blue, into `blue-app`.
    f.ecs
        .update_service()
        .cluster(&config.cluster)
        .service(&config.green_service)
        .desired_count(3)
        .send()
        .await
        .unwrap();
    EcsPlatform::new(&config, &f.sdk, NewVersion::Image("registry/app:v3".into()))
        .with_live(live_colour(Split::FULL))
        .with_poll_interval(Duration::from_millis(50))
        .prepare(Duration::from_secs(10))
        .await
        .unwrap();
    let blue = f
        .service(&config.blue_service)
        .await
        .task_definition
        .unwrap();
    assert_eq!(
        image_of(blue, "blue-app").await.as_deref(),
        Some("registry/app:v3")
    );

    // One name for both: the deploy to blue cannot find `green-app` there.
    let mut one = config.clone();
    one.green_container = None;
    one.container = "green-app".into();
    let err = EcsPlatform::new(&one, &f.sdk, NewVersion::Image("registry/app:v4".into()))
        .with_live(live_colour(Split::FULL))
        .prepare(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.message.contains("no container `green-app`"), "{err}");
    assert!(err.message.contains("one name per colour"), "{err}");
}

#[tokio::test]
async fn clear_errors_for_a_missing_container_or_service() {
    let f = fixture(None).await;
    let mut config = f.config.clone();
    config.container = "web".into();
    let err = EcsPlatform::new(&config, &f.sdk, NewVersion::Image("x:1".into()))
        .prepare(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.transient);
    assert!(err.message.contains("no container `web`"), "{err}");
    assert!(err.message.contains("\"app\""), "{err}");

    let mut config = f.config.clone();
    config.green_service = "no-such-service".into();
    let err = EcsPlatform::new(&config, &f.sdk, NewVersion::Image("x:1".into()))
        .prepare(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.message.contains("`no-such-service` not found"), "{err}");
}

#[tokio::test]
async fn prepare_gives_up_at_the_deadline_when_the_idle_service_never_settles() {
    // moto settles services at once; a service under an external deployment
    // controller reports no ECS deployment, which never looks steady.
    let f = fixture(None).await;
    let idle = common::unique("idle");
    f.ecs
        .create_service()
        .cluster(&f.config.cluster)
        .service_name(&idle)
        .task_definition(&f.green_def)
        .desired_count(0)
        .deployment_controller(
            aws_sdk_ecs::types::DeploymentController::builder()
                .r#type(aws_sdk_ecs::types::DeploymentControllerType::External)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut config = f.config.clone();
    config.green_service = idle.clone();
    let started = std::time::Instant::now();
    let err = EcsPlatform::new(&config, &f.sdk, NewVersion::Image("registry/app:v2".into()))
        .with_poll_interval(Duration::from_millis(50))
        .prepare(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!err.transient);
    assert!(
        err.message.contains(&format!("`{idle}` not steady"))
            && err.message.contains("0 deployment(s)"),
        "{err}"
    );
}

/// Blue runs 3 tasks; each colour's service is behind its own target group,
/// with no targets yet; the idle colour has at most `ready_deadline`.
async fn balanced(ready_deadline: Duration) -> Fixture {
    let mut f = Fixture::behind_target_groups(3, None).await;
    f.config.ready_deadline = ready_deadline;
    f
}

fn green_platform(f: &Fixture) -> EcsPlatform {
    EcsPlatform::new(
        &f.config,
        &f.sdk,
        NewVersion::Image("registry/app:v2".into()),
    )
    .with_live(Colour::Blue)
    .with_poll_interval(Duration::from_millis(50))
}

#[tokio::test]
async fn prepare_is_ready_once_the_idle_services_targets_are_healthy() {
    let f = balanced(Duration::from_secs(10)).await;
    let groups = f.target_groups.as_ref().unwrap();
    let instances: Vec<String> = (0..3).map(|_| run_instance()).collect();
    groups.register(&groups.green, &instances).await;
    // Blue's target group is not green's business.
    groups.register(&groups.blue, &[run_instance()]).await;

    green_platform(&f)
        .prepare(Duration::from_secs(10))
        .await
        .unwrap();
    let green = f.service(&f.config.green_service).await;
    assert_eq!(green.desired_count, 3);
    assert_eq!(
        green.load_balancers()[0].target_group_arn(),
        Some(groups.green.as_str())
    );
}

#[tokio::test]
async fn prepare_fails_at_the_deadline_naming_the_targets_not_healthy() {
    let f = balanced(Duration::from_secs(1)).await;
    let groups = f.target_groups.as_ref().unwrap();
    let platform = green_platform(&f);

    // Two targets for three tasks: too few.
    let instances: Vec<String> = (0..3).map(|_| run_instance()).collect();
    groups.register(&groups.green, &instances[..2]).await;
    let started = std::time::Instant::now();
    let err = platform.prepare(Duration::from_secs(10)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(!err.transient);
    assert!(
        err.message.contains(&format!(
            "ECS service `{}` steady on ",
            f.config.green_service
        )) && err.message.contains(&format!(
            "but its targets not healthy within 1s: target group `{}`: 2 healthy, 3 required",
            groups.green
        )),
        "{err}"
    );

    // Three targets, one of them on a stopped instance: named, with why.
    groups.register(&groups.green, &instances[2..]).await;
    set_instance_running(&instances[0], false);
    let started = std::time::Instant::now();
    let err = platform.prepare(Duration::from_secs(10)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(!err.transient);
    assert!(
        err.message.contains(&format!(
            "target group `{}`: 1 of 3 target(s) not healthy: target {}:8080 unused \
             (Target.InvalidState: Target is in the stopped state); 2 healthy, 3 required",
            groups.green, instances[0]
        )),
        "{err}"
    );
    assert!(
        !err.message.contains(&instances[1]) && !err.message.contains(&groups.blue),
        "{err}"
    );
}

#[tokio::test]
async fn prepare_fails_at_once_on_a_target_group_that_does_not_exist() {
    let mut f = Fixture::new(3, None).await;
    f.config.ready_deadline = Duration::from_secs(10);
    let missing =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/nope/943f017f100becff";
    let idle = common::unique("idle");
    f.ecs
        .create_service()
        .cluster(&f.config.cluster)
        .service_name(&idle)
        .task_definition(&f.green_def)
        .desired_count(0)
        .load_balancers(
            aws_sdk_ecs::types::LoadBalancer::builder()
                .target_group_arn(missing)
                .container_name("app")
                .container_port(8080)
                .build(),
        )
        .send()
        .await
        .unwrap();
    f.config.green_service = idle;
    let started = std::time::Instant::now();
    let err = green_platform(&f)
        .prepare(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(!err.transient);
    assert!(
        err.message.contains(&format!(
            "describing the health of target group `{missing}`"
        )) && err.message.contains("TargetGroupNotFound"),
        "{err}"
    );
}

const TARGET_WAIT: &str = "waiting for the idle service's targets to be healthy";

/// Services whose platform's waits for healthy targets are watched, each
/// with what to wake.
static TARGET_WATCHERS: Mutex<Vec<(String, Arc<Notify>)>> = Mutex::new(Vec::new());

/// Wakes the watcher of a service whenever the ECS platform logs that it
/// waits for that service's targets: what the tests synchronise on. It is
/// the process's global subscriber, so a callsite's interest is the same on
/// every test thread.
struct TargetWaits;

impl tracing::Subscriber for TargetWaits {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "cutover_aws::ecs"
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            service: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "service" {
                    self.service = value.to_owned();
                }
            }

            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message != TARGET_WAIT {
            return;
        }
        let watchers = TARGET_WATCHERS.lock().unwrap_or_else(|e| e.into_inner());
        for (service, waiting) in watchers.iter() {
            if *service == fields.service {
                waiting.notify_one();
            }
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Notified each time the ECS platform waits for `service`'s targets.
fn watch_target_waits(service: &str) -> Arc<Notify> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(TargetWaits)
            .expect("no other global subscriber in this test binary");
    });
    let waiting = Arc::new(Notify::new());
    TARGET_WATCHERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((service.to_owned(), Arc::clone(&waiting)));
    waiting
}

#[tokio::test]
async fn prepare_waits_for_a_target_to_become_healthy() {
    let f = balanced(Duration::from_secs(20)).await;
    let groups = f.target_groups.as_ref().unwrap();
    let instances: Vec<String> = (0..3).map(|_| run_instance()).collect();
    groups.register(&groups.green, &instances).await;
    set_instance_running(&instances[1], false);

    let waiting = watch_target_waits(&f.config.green_service);
    let platform = green_platform(&f);
    let prepare = platform.prepare(Duration::from_secs(20));
    tokio::pin!(prepare);
    tokio::select! {
        ended = &mut prepare => panic!("prepare ended without waiting for its targets: {ended:?}"),
        () = waiting.notified() => {}
    }
    // prepare has seen the stopped target and is waiting: start it.
    set_instance_running(&instances[1], true);
    prepare.await.unwrap();
}
