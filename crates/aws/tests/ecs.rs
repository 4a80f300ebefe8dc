//! The ECS platform against moto: a new revision on the idle colour, scaled
//! like the live one; the old colour scaled to 0 afterwards.

mod common;

use std::time::Duration;

use common::fixtures::{register, Ecs as Fixture};
use cutover_aws::ecs::{live_colour, Colour, EcsPlatform, NewVersion};
use cutover_core::Split;
use cutover_engine::ports::Platform;

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
