//! The share of traffic on green, in basis points (1 bp = 0.01 %).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Green's share of traffic. Stored in basis points so that 0.1 % (and
/// 0.01 %) steps are exact; blue gets the rest.
/// The default is [`Split::ZERO`]: all traffic on blue.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Split(u16);

impl Split {
    /// All traffic on blue.
    pub const ZERO: Split = Split(0);
    /// All traffic on green.
    pub const FULL: Split = Split(10_000);

    /// A split from basis points; `None` above 10 000.
    pub fn from_basis_points(bp: u16) -> Option<Split> {
        (bp <= 10_000).then_some(Split(bp))
    }

    /// A split from a percentage, rounded to the nearest basis point.
    /// `None` when not finite or outside 0..=100.
    pub fn from_percent(percent: f64) -> Option<Split> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return None;
        }
        Some(Split((percent * 100.0).round() as u16))
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// Blue's share, in basis points.
    pub fn blue_basis_points(self) -> u16 {
        10_000 - self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Split {
    /// Prints the shortest exact percentage: `10 %`, `0.5 %`, `12.25 %`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole} %"),
            x if x % 10 == 0 => write!(f, "{whole}.{} %", x / 10),
            x => write!(f, "{whole}.{x:02} %"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trips_with_sub_percent_precision() {
        for (p, shown) in [
            (0.0, "0 %"),
            (0.1, "0.1 %"),
            (12.25, "12.25 %"),
            (100.0, "100 %"),
        ] {
            let s = Split::from_percent(p).unwrap();
            assert_eq!(s.to_string(), shown);
            assert!((s.percent() - p).abs() < 1e-9);
        }
        assert_eq!(Split::from_percent(100.01), None);
        assert_eq!(Split::from_percent(-1.0), None);
        assert_eq!(Split::from_percent(f64::NAN), None);
        assert_eq!(Split::from_basis_points(10_001), None);
        assert_eq!(
            Split::from_percent(30.0).unwrap().blue_basis_points(),
            7_000
        );
    }
}
