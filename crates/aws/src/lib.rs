//! cutover on AWS. Kept in its own crate: the AWS SDK takes minutes to
//! build, and the core and its tests must never wait for it.
//!
//! - [`route53`], [`alb`]: routers (`cutover_engine::ports::Router`).
//! - [`checks`]: target health, CloudWatch metrics and alarms, ECS service.
//! - [`dynamodb`]: the `Store` on DynamoDB.
//! - [`ecs`]: the ECS platform (new revision on the idle colour).
//! - [`trigger`]: ECS task events through SQS (`cutover watch`).
//! - [`iam`]: the least-privilege policy a plan needs.
#![forbid(unsafe_code)]

pub mod alb;
pub mod checks;
pub mod config;
pub mod dynamodb;
pub mod ecs;
pub mod iam;
pub mod route53;
pub mod trigger;
