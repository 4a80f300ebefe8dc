//! The rollout state machine. (Being written.)

use serde::{Deserialize, Serialize};

/// What an operator can ask of a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Roll back now.
    Abort,
    /// Skip the remaining steps: straight to 100 %, then bake.
    Promote,
    /// Stop advancing; keep the current split (analysis keeps running).
    Pause,
    /// Continue after a pause.
    Resume,
    /// Start a rolled-back rollout again from its first step.
    Retry,
}
