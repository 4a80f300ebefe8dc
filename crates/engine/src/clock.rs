//! The engine's clock: wall-clock time anchored once, advanced by tokio's
//! monotonic clock. Under `tokio::time::pause()` it advances only when the
//! test runtime does, so the engine can be tested in simulated time.

use std::time::{SystemTime, UNIX_EPOCH};

use cutover_core::Timestamp;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: Timestamp,
    mono: Instant,
}

impl Clock {
    /// Anchors to the system's wall clock now.
    pub fn system() -> Clock {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock::anchored(Timestamp::from_millis(ms))
    }

    /// Anchors to a given time (tests).
    pub fn anchored(wall: Timestamp) -> Clock {
        Clock {
            wall,
            mono: Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.wall.after(self.mono.elapsed())
    }

    /// The tokio instant at which `at` arrives.
    pub fn instant_of(&self, at: Timestamp) -> Instant {
        self.mono + at.since(self.wall)
    }
}
