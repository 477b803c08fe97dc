//! Order statistics for samples: medians, spread, quantiles.

use serde::Serialize;

/// Linear-interpolated quantile `q` (0..=1) of sorted `values`.
pub fn quantile_sorted(values: &[f64], q: f64) -> f64 {
    match values.len() {
        0 => f64::NAN,
        1 => values[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
        }
    }
}

/// [`quantile_sorted`] for integer samples (nanoseconds).
pub fn quantile_sorted_u64(values: &[u64], q: f64) -> f64 {
    match values.len() {
        0 => f64::NAN,
        n => {
            // Nearest rank: what latency tools report.
            let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
            values[rank - 1] as f64
        }
    }
}

/// Median and range of one cell's repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no (finite) values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            n: sorted.len(),
            median: quantile_sorted(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// (max - min) / median: the noise of this cell, as a fraction.
    pub fn spread(&self) -> f64 {
        if self.median.abs() > f64::EPSILON {
            (self.max - self.min) / self.median.abs()
        } else {
            0.0
        }
    }

    /// Whether the two ranges overlap: then a ratio of medians is within noise.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        let s = Summary::of(&[5.0, 1.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        assert_eq!(Summary::of(&[1.0, 2.0]).unwrap().median, 1.5);
        assert!(Summary::of(&[]).is_none());
        assert!((s.spread() - 4.0 / 3.0).abs() < 1e-12);
        let other = Summary::of(&[6.0, 7.0]).unwrap();
        assert!(!s.overlaps(&other));
        assert!(s.overlaps(&Summary::of(&[4.0, 9.0]).unwrap()));
    }

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile_sorted_u64(&v, 0.5), 50.0);
        assert_eq!(quantile_sorted_u64(&v, 0.99), 99.0);
        assert_eq!(quantile_sorted_u64(&[7], 0.99), 7.0);
        assert_eq!(quantile_sorted(&[1.0, 3.0], 0.5), 2.0);
    }
}
