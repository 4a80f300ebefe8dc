//! What a check says about green.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The outcome of one check run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Green is within bounds.
    Pass,
    /// Green is out of bounds.
    Fail,
    /// Not enough data to judge (e.g. fewer requests than `min_requests`).
    Inconclusive,
    /// The check could not measure (the adapter failed). Never a pass.
    Error,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Error => "error",
        })
    }
}

/// One check's verdict with the numbers behind it, in words a person
/// understands: "green error rate 7.1 % > 1 % over 312 requests".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// An inconclusive verdict that only asks for more data: a check that
    /// has seen too few requests to let a step pass, and nothing against
    /// green. The hold goes on (up to `analysis.wait_for_data` past its
    /// end, then `analysis.on_wait_expired`) without counting it towards
    /// `inconclusive_limit`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
    /// The numbers behind the verdict, by name (`green.requests`,
    /// `evidence`, `threshold`, ...), for scripts and reports; finite only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numbers: BTreeMap<String, f64>,
}

impl Observation {
    pub fn new(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Self {
        Observation {
            check: check.into(),
            verdict,
            detail: detail.into(),
            waiting: false,
            numbers: BTreeMap::new(),
        }
    }

    /// The same with these numbers added (non-finite ones are left out:
    /// JSON has no NaN or infinity).
    pub fn with_numbers<'a>(mut self, numbers: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        for (name, value) in numbers {
            if value.is_finite() {
                self.numbers.insert(name.to_string(), value);
            }
        }
        self
    }

    /// The verdict as shown: `waiting` for a waiting inconclusive one.
    pub fn shown_verdict(&self) -> &'static str {
        match self.verdict {
            Verdict::Inconclusive if self.waiting => "waiting",
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Error => "error",
        }
    }

    /// Inconclusive for want of data only; see [`Observation::waiting`].
    pub fn waiting(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Observation {
            waiting: true,
            ..Observation::new(check, Verdict::Inconclusive, detail)
        }
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.check,
            self.shown_verdict(),
            self.detail
        )
    }
}

/// The combined verdict of one analysis run: any fail fails; otherwise any
/// error or inconclusive makes it inconclusive; all pass passes. An empty
/// set of checks passes (a plan without checks only waits out its holds).
pub fn combine(observations: &[Observation]) -> Verdict {
    if observations.iter().any(|o| o.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if observations
        .iter()
        .any(|o| matches!(o.verdict, Verdict::Error | Verdict::Inconclusive))
    {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    }
}
