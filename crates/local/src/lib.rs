//! cutover without a cloud: the embedded weighted proxy (data plane and
//! admin API), the engine adapters that drive it ([`LocalRouter`] and the
//! local checks), and a demo app.
//!
//! - [`proxy`]: `cutover proxy CONFIG` in library form: [`proxy::start`]
//!   returns a [`proxy::ProxyHandle`].
//! - [`AdminClient`]: a small client of the proxy's admin API, shared by
//!   [`LocalRouter`] (implements `cutover_engine::ports::Router`) and the
//!   checks made by [`build_check`] (implement `cutover_engine::ports::Check`).
//! - [`demo_app`]: a tiny HTTP service with a colour, a settable failure
//!   ratio and latency, for `cutover demo` and tests.
#![forbid(unsafe_code)]

pub mod api;
pub mod checks;
mod client;
pub mod demo_app;
pub mod prometheus;
pub mod proxy;
mod router;
mod server;
mod util;

pub use api::Colour;
pub use checks::build_check;
pub use client::AdminClient;
pub use demo_app::{start_demo_app, DemoAppConfig, DemoAppHandle};
pub use proxy::{start, ProxyConfig, ProxyHandle};
pub use router::LocalRouter;
