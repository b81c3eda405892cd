//! Values as Istio writes them: Go-style durations with Istio's bounds, and user values cut
//! short for messages.
use std::time::Duration;

/// The longest duration anything accepts: Go's `time.Duration` (what Istio's CRD rules and
/// `istioctl` parse into) holds at most 2^63 - 1 ns, about 292 years. Bounding here is what keeps
/// every later `Instant + duration` and `duration * n` in range.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Istio durations, Go style: `7s`, `0.5s`, `100ms`, `1m30s`, `1h` (units ns, us/µs, ms, s, m, h).
/// Parsed in integer nanoseconds with checked arithmetic: a value longer than [`MAX_DURATION`] is
/// an error, never a panic or a silently wrapped number.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let shown = cut(s.trim(), 40);
    let expected = || {
        format!("invalid duration {shown:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"7s\", \"0.5s\", \"100ms\"")
    };
    let too_long = || format!("duration {shown:?} is out of range (at most 2562047h, about 292 years)");
    let t = s.trim();
    if t.is_empty() {
        return Err(expected());
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_end);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let end = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(end)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(expected());
        }
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let unit_ns: u128 = match &after[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(expected()),
        };
        rest = &after[unit_end..];
        // Leading zeros are harmless; more digits than fit in a u128 are not a duration anyone means.
        let int_digits = int_part.trim_start_matches('0');
        if int_digits.len() > 30 {
            return Err(too_long());
        }
        let whole: u128 = if int_digits.is_empty() { 0 } else { int_digits.parse().map_err(|_| expected())? };
        let mut ns = whole.checked_mul(unit_ns).ok_or_else(too_long)?;
        // Fractions below a nanosecond are dropped, as Go does; 20 digits are more than enough.
        let mut scale = unit_ns;
        for d in frac_part.bytes().take(20) {
            scale /= 10;
            ns = ns.checked_add(u128::from(d - b'0') * scale).ok_or_else(too_long)?;
        }
        total = total.checked_add(ns).ok_or_else(too_long)?;
        if total > MAX_DURATION.as_nanos() {
            return Err(too_long());
        }
    }
    let nanos = u64::try_from(total).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Istio's rule for most duration fields (`agent.ValidateDuration`): at least 1 ms, in whole ms.
pub fn check_istio_duration(d: Duration) -> Result<(), String> {
    if d < Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// A user's value shown in a message: at most `max` characters, so a 10 MB value does not make a
/// 10 MB log line.
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}…({} bytes)", &s[..i], s.len())),
    }
}
