//! The HTTP side of `cutover serve`: the rollout API with its event
//! streams ([`api`]), Prometheus metrics ([`metrics`]), and the JSON shapes
//! the API and the CLI share ([`json`]).
//!
//! It knows rollouts only through the store and the engine; what is
//! specific to the program that serves it (which plans exist, how a
//! rollout is started) comes through [`api::Backend`].
#![forbid(unsafe_code)]

pub mod api;
pub mod json;
pub mod metrics;

pub use api::{Api, ApiError, Backend, CreateRequest, Created, PlanInfo};
pub use metrics::Metrics;
