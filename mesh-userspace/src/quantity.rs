//! Numbers an operator writes in agent flags and pod annotations: whole counts, and byte sizes
//! with Kubernetes quantity suffixes (`64Ki`, `16Mi`, `1G`), range-checked with checked
//! arithmetic so that a typo is refused with the value and the accepted range instead of
//! wrapping around or silently disabling a limit.
use thiserror::Error;

/// Why a count or size was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    /// Not a whole number (with a size suffix, for sizes).
    #[error("{0:?}: expected a whole number{1}")]
    NotANumber(String, &'static str),
    /// A size suffix that is not a Kubernetes quantity suffix.
    #[error("{0:?}: unknown suffix {1:?} (use Ki, Mi, Gi, Ti, k, M, G or T)")]
    UnknownSuffix(String, String),
    /// Zero, negative-looking, too large, or past the allowed range.
    #[error("{value:?}: must be between {min} and {max}")]
    OutOfRange {
        /// The value as written.
        value: String,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
}

/// A whole number in `min..=max` (no suffix: counts of connections or requests).
pub fn parse_count(s: &str, min: u64, max: u64) -> Result<u64, QuantityError> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::NotANumber(s.to_owned(), ""));
    }
    // All digits: the only parse failure left is overflow, which is out of range.
    let n = t.parse::<u64>().ok().filter(|n| (min..=max).contains(n));
    n.ok_or_else(|| QuantityError::OutOfRange { value: s.to_owned(), min, max })
}

/// A byte size in `min..=max`: a whole number with an optional Kubernetes quantity suffix,
/// binary (`Ki` `Mi` `Gi` `Ti`) or decimal (`k` `M` `G` `T`). Fractions (`1.5Mi`) and
/// exponents are refused: a buffer size is a whole number of bytes.
pub fn parse_bytes(s: &str, min: u64, max: u64) -> Result<u64, QuantityError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(QuantityError::NotANumber(s.to_owned(), " of bytes, e.g. 65536, 64Ki or 16Mi"));
    }
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other if other.starts_with('.') => {
            return Err(QuantityError::NotANumber(s.to_owned(), " of bytes, e.g. 65536, 64Ki or 16Mi"))
        }
        other => return Err(QuantityError::UnknownSuffix(s.to_owned(), other.to_owned())),
    };
    let n = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).filter(|n| (min..=max).contains(n));
    n.ok_or_else(|| QuantityError::OutOfRange { value: s.to_owned(), min, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_kubernetes_suffixes() {
        let p = |s| parse_bytes(s, 1, u64::MAX);
        assert_eq!(p("65536"), Ok(65536));
        assert_eq!(p("64Ki"), Ok(64 << 10));
        assert_eq!(p(" 16Mi "), Ok(16 << 20));
        assert_eq!(p("2Gi"), Ok(2 << 30));
        assert_eq!(p("1Ti"), Ok(1 << 40));
        assert_eq!(p("5k"), Ok(5000));
        assert_eq!(p("3M"), Ok(3_000_000));
        assert_eq!(p("1G"), Ok(1_000_000_000));
        assert_eq!(p("1T"), Ok(1_000_000_000_000));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        let p = |s| parse_bytes(s, 1, 1 << 32);
        assert!(matches!(p("0"), Err(QuantityError::OutOfRange { min: 1, .. })));
        assert!(matches!(p("0Mi"), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(p("5Gi"), Err(QuantityError::OutOfRange { .. })), "past the maximum");
        // u64 overflow in the multiplication is out of range, never a wrap to a small number.
        assert!(matches!(p("17179869184Gi"), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(p("99999999999999999999999"), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(p("1KB"), Err(QuantityError::UnknownSuffix(_, s)) if s == "KB"));
        assert!(matches!(p("1m"), Err(QuantityError::UnknownSuffix(..))), "milli-bytes");
        assert!(matches!(p("1.5Mi"), Err(QuantityError::NotANumber(..))));
        assert!(matches!(p("-1"), Err(QuantityError::NotANumber(..))));
        assert!(matches!(p(""), Err(QuantityError::NotANumber(..))));
        assert!(matches!(p("Mi"), Err(QuantityError::NotANumber(..))));
        let e = p("0").unwrap_err().to_string();
        assert!(e.contains("between 1 and 4294967296"), "{e}");
    }

    #[test]
    fn counts_are_plain_whole_numbers_in_range() {
        assert_eq!(parse_count("2", 1, 10), Ok(2));
        assert_eq!(parse_count(" 10 ", 1, 10), Ok(10));
        assert!(matches!(parse_count("0", 1, 10), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(parse_count("11", 1, 10), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(parse_count("99999999999999999999999", 1, 10), Err(QuantityError::OutOfRange { .. })));
        assert!(matches!(parse_count("1k", 1, 10_000), Err(QuantityError::NotANumber(..))));
        assert!(matches!(parse_count("-3", 1, 10), Err(QuantityError::NotANumber(..))));
        assert!(matches!(parse_count("", 1, 10), Err(QuantityError::NotANumber(..))));
    }
}
