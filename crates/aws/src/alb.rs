//! The `alb` router: an Application Load Balancer listener's default
//! action, or one of its rules, whose `forward` action holds blue's and
//! green's target groups with weights (0..=999 each).
//!
//! Applying a split changes ONLY those two weights: stickiness, other
//! target groups, other actions, the rule's conditions and the listener's
//! port, protocol and certificates are sent back (or left) as found. The
//! result is read back and verified before the realized split is returned.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum};
use cutover_core::Split;
use cutover_engine::ports::{AdapterError, Router};

use crate::config::single_attempt;
use crate::route53::{retrying, split_of, weights_for, Backoff, Notes};

/// An ALB target group's largest weight.
pub const MAX_WEIGHT: u16 = 999;

/// The weight AWS assumes for a target group listed without one.
const DEFAULT_WEIGHT: i32 = 1;

#[derive(Clone, Debug)]
enum Target {
    Listener(String),
    Rule(String),
}

/// Applies splits to the weights of a listener's or rule's forward action.
pub struct AlbRouter {
    client: aws_sdk_elasticloadbalancingv2::Client,
    target: Target,
    blue: String,
    green: String,
    backoff: Backoff,
    notes: Notes,
    /// Blue's and green's weights summed when this router first read them:
    /// the scale every later write keeps (see [`preferred_total`]).
    scale: std::sync::OnceLock<u64>,
}

impl AlbRouter {
    /// `config` names exactly one of a listener and a rule (the plan
    /// checks this); given both, the rule is used.
    pub fn new(config: &cutover_core::plan::AlbRouter, sdk: &aws_config::SdkConfig) -> Self {
        let target = match (&config.rule_arn, &config.listener_arn) {
            (Some(rule), _) => Target::Rule(rule.clone()),
            (None, Some(listener)) => Target::Listener(listener.clone()),
            (None, None) => Target::Listener(String::new()),
        };
        AlbRouter {
            client: aws_sdk_elasticloadbalancingv2::Client::new(&single_attempt(sdk)),
            notes: Notes::default(),
            target,
            blue: config.blue_target_group_arn.clone(),
            green: config.green_target_group_arn.clone(),
            backoff: Backoff::default(),
            scale: std::sync::OnceLock::new(),
        }
    }

    /// How a call is named in messages.
    fn call(&self, op: &str) -> String {
        format!("alb {op} for {}", self.what())
    }

    fn what(&self) -> String {
        match &self.target {
            Target::Listener(arn) => format!("listener {arn} (default action)"),
            Target::Rule(arn) => format!("rule {arn}"),
        }
    }

    /// The actions of the listener's default rule or of the rule, and
    /// where to write them: a listener's default rule is changed through
    /// ModifyListener (ModifyRule refuses it).
    async fn actions(&self) -> Result<(Vec<Action>, Target), AdapterError> {
        match &self.target {
            Target::Listener(arn) if arn.is_empty() => Err(AdapterError::permanent(
                "alb: the router names neither a listener nor a rule",
            )),
            Target::Listener(arn) => {
                let out = retrying(
                    &self.backoff,
                    &self.notes,
                    &self.call("DescribeListeners"),
                    || self.client.describe_listeners().listener_arns(arn).send(),
                )
                .await
                .map_err(|e| e.into_adapter_error(&self.call("DescribeListeners")))?;
                let listener = out
                    .listeners()
                    .iter()
                    .find(|l| l.listener_arn() == Some(arn.as_str()))
                    .ok_or_else(|| AdapterError::permanent(format!("alb: no {}", self.what())))?;
                Ok((listener.default_actions().to_vec(), self.target.clone()))
            }
            Target::Rule(arn) => {
                let out = retrying(
                    &self.backoff,
                    &self.notes,
                    &self.call("DescribeRules"),
                    || self.client.describe_rules().rule_arns(arn).send(),
                )
                .await
                .map_err(|e| e.into_adapter_error(&self.call("DescribeRules")))?;
                let rule = out
                    .rules()
                    .iter()
                    .find(|r| r.rule_arn() == Some(arn.as_str()))
                    .ok_or_else(|| AdapterError::permanent(format!("alb: no {}", self.what())))?;
                let write_to = match listener_of_rule(arn) {
                    Some(listener) if rule.is_default() == Some(true) => Target::Listener(listener),
                    _ => self.target.clone(),
                };
                Ok((rule.actions().to_vec(), write_to))
            }
        }
    }

    /// Replaces the actions (and nothing else) of the listener or rule.
    async fn write(&self, to: &Target, actions: Vec<Action>) -> Result<(), AdapterError> {
        match to {
            Target::Listener(arn) => {
                retrying(
                    &self.backoff,
                    &self.notes,
                    &self.call("ModifyListener"),
                    || {
                        self.client
                            .modify_listener()
                            .listener_arn(arn)
                            .set_default_actions(Some(actions.clone()))
                            .send()
                    },
                )
                .await
                .map_err(|e| e.into_adapter_error(&self.call("ModifyListener")))?;
            }
            Target::Rule(arn) => {
                retrying(&self.backoff, &self.notes, &self.call("ModifyRule"), || {
                    self.client
                        .modify_rule()
                        .rule_arn(arn)
                        .set_actions(Some(actions.clone()))
                        .send()
                })
                .await
                .map_err(|e| e.into_adapter_error(&self.call("ModifyRule")))?;
            }
        }
        Ok(())
    }

    /// The index of the forward action with both groups, and its
    /// (green, blue) weights.
    fn forward(&self, actions: &[Action]) -> Result<(usize, (u64, u64)), AdapterError> {
        let index = find_forward(actions, &self.blue, &self.green).ok_or_else(|| {
            AdapterError::permanent(format!(
                "alb: {} has no forward action with both target groups (blue {}, green {}); \
                 give it a forward action to both, e.g. weights 1 and 0",
                self.what(),
                self.blue,
                self.green
            ))
        })?;
        let w = |arn: &str| weight_of(&actions[index], arn).unwrap_or(0).max(0) as u64;
        Ok((index, (w(&self.green), w(&self.blue))))
    }
}

/// The listener of a rule, from the rule's ARN
/// (`...:listener-rule/app/NAME/LB/LISTENER/RULE`).
fn listener_of_rule(rule_arn: &str) -> Option<String> {
    let (prefix, rest) = rule_arn.split_once(":listener-rule/")?;
    let (listener, _rule) = rest.rsplit_once('/')?;
    Some(format!("{prefix}:listener/{listener}"))
}

/// The first forward action whose ForwardConfig holds both groups.
fn find_forward(actions: &[Action], blue: &str, green: &str) -> Option<usize> {
    actions.iter().position(|a| {
        a.r#type() == Some(&ActionTypeEnum::Forward)
            && weight_of(a, blue).is_some()
            && weight_of(a, green).is_some()
    })
}

/// A target group's weight in a forward action, if it is listed there.
fn weight_of(action: &Action, arn: &str) -> Option<i32> {
    action
        .forward_config()?
        .target_groups()
        .iter()
        .find(|t| t.target_group_arn() == Some(arn))
        .map(|t| t.weight().unwrap_or(DEFAULT_WEIGHT))
}

/// The actions with the two weights set, everything else as found.
fn with_weights(
    actions: &[Action],
    index: usize,
    blue: &str,
    green: &str,
    (w_g, w_b): (u16, u16),
) -> Vec<Action> {
    let mut actions = actions.to_vec();
    for (i, action) in actions.iter_mut().enumerate() {
        if i == index {
            if let Some(config) = action.forward_config.as_mut() {
                for tuple in config.target_groups.iter_mut().flatten() {
                    match tuple.target_group_arn.as_deref() {
                        Some(arn) if arn == green => tuple.weight = Some(i32::from(w_g)),
                        Some(arn) if arn == blue => tuple.weight = Some(i32::from(w_b)),
                        _ => {}
                    }
                }
            }
            // With several groups, a TargetGroupArn next to the
            // ForwardConfig is refused; the ForwardConfig says it all.
            action.target_group_arn = None;
        }
        // Describe never returns an OIDC client secret: keep the existing one.
        if let Some(oidc) = action.authenticate_oidc_config.as_mut() {
            if oidc.client_secret.is_none() {
                oidc.use_existing_client_secret = Some(true);
            }
        }
    }
    actions
}

/// The sum of weights to write: the one blue and green had when the router
/// first read them, so the user's scale is kept (100 / 0 stays 100 / 0 after a rollback, and other
/// groups of the same action keep their share), unless a split cannot be
/// written exactly in it, when [`weights_for`] goes finer. Weights summing
/// to 0 (nothing to keep) use the finest scale, 1000.
fn preferred_total(found: u64) -> u32 {
    if found == 0 {
        1000
    } else {
        found.min(u64::from(MAX_WEIGHT)) as u32
    }
}

#[async_trait]
impl Router for AlbRouter {
    fn describe(&self) -> String {
        format!("alb {}", self.what())
    }

    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        let (actions, write_to) = self.actions().await?;
        let (index, (old_g, old_b)) = self.forward(&actions)?;
        let found = *self.scale.get_or_init(|| old_g + old_b);
        let weights = weights_for(split, MAX_WEIGHT, preferred_total(found));
        let updated = with_weights(&actions, index, &self.blue, &self.green, weights);
        self.write(&write_to, updated).await?;
        tracing::info!(
            router = %self.describe(),
            green = weights.0,
            blue = weights.1,
            "alb weights set"
        );

        let (read, _) = self.actions().await?;
        let (_, (g, b)) = self.forward(&read)?;
        if (g, b) != (u64::from(weights.0), u64::from(weights.1)) {
            return Err(AdapterError::transient(format!(
                "alb: {} reads back weights green {g} / blue {b} after setting {} / {} \
                 (changed concurrently?)",
                self.what(),
                weights.0,
                weights.1
            )));
        }
        Ok(split_of(g, b))
    }

    fn take_notes(&self) -> Vec<String> {
        self.notes.take()
    }

    async fn current(&self) -> Result<Split, AdapterError> {
        let (actions, _) = self.actions().await?;
        let (_, (g, b)) = self.forward(&actions)?;
        self.scale.get_or_init(|| g + b);
        Ok(split_of(g, b))
    }

    async fn preflight(&self, shortest_hold: Duration) -> Result<(), AdapterError> {
        // Weights take effect at once on an ALB: no TTL to respect.
        let _ = shortest_hold;
        let (actions, _) = self.actions().await?;
        self.forward(&actions).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_elasticloadbalancingv2::types::{
        AuthenticateOidcActionConfig, ForwardActionConfig, TargetGroupStickinessConfig,
        TargetGroupTuple,
    };

    fn tuple(arn: &str, weight: Option<i32>) -> TargetGroupTuple {
        TargetGroupTuple::builder()
            .target_group_arn(arn)
            .set_weight(weight)
            .build()
    }

    fn actions() -> Vec<Action> {
        let oidc = Action::builder()
            .r#type(ActionTypeEnum::AuthenticateOidc)
            .order(1)
            .authenticate_oidc_config(
                AuthenticateOidcActionConfig::builder()
                    .issuer("https://idp")
                    .client_id("id")
                    .build(),
            )
            .build();
        let forward = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .order(2)
            .target_group_arn("blue")
            .forward_config(
                ForwardActionConfig::builder()
                    .target_groups(tuple("blue", Some(100)))
                    .target_groups(tuple("green", None))
                    .target_groups(tuple("other", Some(7)))
                    .target_group_stickiness_config(
                        TargetGroupStickinessConfig::builder()
                            .enabled(true)
                            .duration_seconds(300)
                            .build(),
                    )
                    .build(),
            )
            .build();
        vec![oidc, forward]
    }

    #[test]
    fn a_rule_arn_names_its_listener() {
        assert_eq!(
            listener_of_rule(
                "arn:aws:elasticloadbalancing:us-east-1:1:listener-rule/app/web/50dc6c/f2f7dc/9683b2"
            )
            .as_deref(),
            Some("arn:aws:elasticloadbalancing:us-east-1:1:listener/app/web/50dc6c/f2f7dc")
        );
        assert_eq!(listener_of_rule("arn:aws:x:listener/app/web/1/2"), None);
    }

    #[test]
    fn only_the_two_weights_change() {
        let before = actions();
        assert_eq!(find_forward(&before, "blue", "green"), Some(1));
        assert_eq!(find_forward(&before, "blue", "nope"), None);
        assert_eq!(weight_of(&before[1], "green"), Some(1));
        let after = with_weights(&before, 1, "blue", "green", (250, 750));
        assert_eq!(weight_of(&after[1], "green"), Some(250));
        assert_eq!(weight_of(&after[1], "blue"), Some(750));
        assert_eq!(weight_of(&after[1], "other"), Some(7));
        assert_eq!(after[1].target_group_arn(), None);
        assert_eq!(after[1].order(), Some(2));
        assert_eq!(
            after[1]
                .forward_config()
                .unwrap()
                .target_group_stickiness_config(),
            before[1]
                .forward_config()
                .unwrap()
                .target_group_stickiness_config()
        );
        let oidc = after[0].authenticate_oidc_config().unwrap();
        assert_eq!(oidc.use_existing_client_secret(), Some(true));
        assert_eq!(oidc.issuer(), Some("https://idp"));
    }
}
