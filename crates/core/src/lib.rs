//! cutover's core: plans, the rollout state machine and verdict logic.
//!
//! Sans-IO: nothing here reads a clock, touches the network or the disk, or
//! draws random numbers. Time and observations come in as inputs; the state
//! machine answers with actions for the engine to perform. That makes every
//! behaviour reproducible in simulated time.
#![forbid(unsafe_code)]

pub mod judge;
pub mod machine;
pub mod plan;
pub mod split;
pub mod time;
pub mod verdict;

pub use machine::{Action, Command, Event, Input, Phase, Rollout, SnapshotError};
pub use plan::{Plan, Targets};
pub use split::Split;
pub use time::Timestamp;
pub use verdict::{Observation, Verdict};
