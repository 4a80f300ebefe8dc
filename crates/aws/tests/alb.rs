//! The alb router against a real moto server, through the real SDK.
//!
//! The VPC, subnets, ALB, target groups, listener and rule come from
//! [`common::fixtures::Alb`].

mod common;

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum};
use common::fixtures::{stickiness, sticky, weight, Alb};
use cutover_aws::alb::AlbRouter;
use cutover_core::Split;
use cutover_engine::ports::Router;

fn bp(bp: u16) -> Split {
    Split::from_basis_points(bp).unwrap()
}

#[tokio::test]
async fn the_listener_default_action_follows_every_split() {
    let alb = Alb::new().await;
    let router = alb.router(true);
    router.preflight(Duration::from_secs(1)).await.unwrap();
    assert_eq!(router.current().await.unwrap(), Split::ZERO);
    let rule_before = alb.rule().await;

    // In the listener's own scale (blue 100 / green 0), finer only where
    // a split needs it (0.1 %), and back.
    for (split, green, blue) in [
        (1_000, 10, 90),
        (5_000, 50, 50),
        (10_000, 100, 0),
        (0, 0, 100),
        (10, 1, 999),
        (0, 0, 100),
    ] {
        let realized = router.apply(bp(split)).await.unwrap();
        assert_eq!(realized, bp(split));
        let actions = alb.listener_actions().await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].r#type(), Some(&ActionTypeEnum::Forward));
        assert_eq!(
            (weight(&actions, &alb.green), weight(&actions, &alb.blue)),
            (green, blue)
        );
        assert_eq!(
            actions[0].forward_config().unwrap().target_groups().len(),
            2
        );
        assert_eq!(stickiness(&actions), sticky());
        assert_eq!(router.current().await.unwrap(), bp(split));
    }
    // The rule was not touched.
    assert_eq!(alb.rule().await, rule_before);
}

#[tokio::test]
async fn a_rule_follows_splits_and_keeps_conditions_and_other_groups() {
    let alb = Alb::new().await;
    let router = alb.router(false);
    router.preflight(Duration::from_secs(1)).await.unwrap();
    let before = alb.rule().await;
    let listener_before = alb.listener_actions().await;

    // Another group holds weight 5: blue + green keep their sum (100) so
    // its share stays the same.
    for (split, green, blue) in [
        (1_000, 10, 90),
        (5_000, 50, 50),
        (10_000, 100, 0),
        (0, 0, 100),
    ] {
        assert_eq!(router.apply(bp(split)).await.unwrap(), bp(split));
        let rule = alb.rule().await;
        let actions = rule.actions();
        assert_eq!(
            (weight(actions, &alb.green), weight(actions, &alb.blue)),
            (green, blue)
        );
        assert_eq!(weight(actions, &alb.other), 5);
        assert_eq!(stickiness(actions), sticky());
        assert_eq!(rule.conditions(), before.conditions());
        assert_eq!(rule.priority(), before.priority());
        assert_eq!(router.current().await.unwrap(), bp(split));
    }
    // 33.33 %: the closest weights with sum near 100; realized is their ratio.
    let realized = router.apply(bp(3_333)).await.unwrap();
    let actions = alb.rule().await.actions().to_vec();
    let (g, b) = (
        weight(&actions, &alb.green) as u64,
        weight(&actions, &alb.blue) as u64,
    );
    assert_eq!(
        u64::from(realized.basis_points()),
        (g * 10_000 + (g + b) / 2) / (g + b)
    );
    assert!(realized.basis_points().abs_diff(3_333) <= 1, "{realized}");
    // The listener's default action was not touched.
    assert_eq!(alb.listener_actions().await, listener_before);
}

#[tokio::test]
async fn describe_names_listener_or_rule() {
    let alb = Alb::new().await;
    assert!(alb.router(true).describe().contains(&alb.listener));
    assert!(alb.router(false).describe().contains(&alb.rule));
}

#[tokio::test]
async fn preflight_refuses_a_missing_listener_or_rule() {
    let alb = Alb::new().await;
    let mut config = alb.config(true);
    config.listener_arn = Some(format!("{}0", alb.listener));
    let e = AlbRouter::new(&config, &alb.sdk)
        .preflight(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(!e.transient, "{e}");

    let mut config = alb.config(false);
    config.rule_arn = Some(format!("{}0", alb.rule));
    let router = AlbRouter::new(&config, &alb.sdk);
    let e = router.preflight(Duration::from_secs(60)).await.unwrap_err();
    assert!(!e.transient, "{e}");
    let e = router.apply(bp(1_000)).await.unwrap_err();
    assert!(!e.transient, "{e}");
}

#[tokio::test]
async fn preflight_refuses_a_forward_action_without_both_groups() {
    let alb = Alb::new().await;
    // The listener forwards to blue and green, not to `other`.
    let mut config = alb.config(true);
    config.green_target_group_arn = alb.other.clone();
    let router = AlbRouter::new(&config, &alb.sdk);
    let e = router.preflight(Duration::from_secs(60)).await.unwrap_err();
    assert!(!e.transient);
    assert!(
        e.message
            .contains("no forward action with both target groups"),
        "{e}"
    );
    let before = alb.listener_actions().await;
    assert!(router.apply(bp(5_000)).await.is_err());
    assert_eq!(alb.listener_actions().await, before);

    // A listener forwarding to blue alone (the simple form).
    alb.client
        .modify_listener()
        .listener_arn(&alb.listener)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(&alb.blue)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let e = alb
        .router(true)
        .preflight(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(e.message.contains("no forward action"), "{e}");
}

#[tokio::test]
async fn the_default_rule_is_changed_through_its_listener() {
    let alb = Alb::new().await;
    let rules = alb
        .client
        .describe_rules()
        .listener_arn(&alb.listener)
        .send()
        .await
        .unwrap();
    let default = rules
        .rules()
        .iter()
        .find(|r| r.is_default() == Some(true))
        .and_then(|r| r.rule_arn())
        .expect("a default rule")
        .to_string();
    let mut config = alb.config(false);
    config.rule_arn = Some(default);
    let router = AlbRouter::new(&config, &alb.sdk);
    router.preflight(Duration::from_secs(60)).await.unwrap();
    assert_eq!(router.apply(bp(2_500)).await.unwrap(), bp(2_500));
    let actions = alb.listener_actions().await;
    assert_eq!(
        (weight(&actions, &alb.green), weight(&actions, &alb.blue)),
        (25, 75)
    );
    assert_eq!(stickiness(&actions), sticky());
    assert_eq!(router.current().await.unwrap(), bp(2_500));
}
