//! Parsing and resolving `attach` options.
use std::{fmt, str::FromStr};

/// `--port-range LO-HI`, inclusive, 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a port range; expected LO-HI, e.g. 32768-60999"))?;
        let parse = |p: &str| -> Result<u16, String> {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&v| v != 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
        };
        let (min, max) = (parse(lo)?, parse(hi)?);
        if min > max {
            return Err(format!("port range `{s}` is empty: {min} > {max}"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert_eq!("32768-60999".parse(), Ok(PortRange { min: 32768, max: 60999 }));
        assert_eq!("5-5".parse(), Ok(PortRange { min: 5, max: 5 }));
        for bad in ["", "1", "0-10", "10-1", "a-b", "1-70000", "1--2"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
