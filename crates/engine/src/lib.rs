//! cutover's engine: the only async part. It drives rollouts by feeding the
//! core's state machine with time and verdicts, performs the machine's
//! actions through the port traits, and persists every transition before
//! acting on it.
#![forbid(unsafe_code)]

pub mod clock;
pub mod controller;
pub mod driver;
pub mod ports;
pub mod store;

pub use clock::Clock;
pub use controller::{AdapterFactory, Controller, ControllerOptions};
pub use driver::{Adapters, Engine, EngineError, Observer, Options};
