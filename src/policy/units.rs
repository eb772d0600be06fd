//! Durations (`500ms`, `1m30s`) and byte sizes (`64KiB`, `1MB`) as written in a policy.

use std::time::Duration;

/// Duration units from the largest to the smallest, with their length in milliseconds.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Size units and their length in bytes: binary (IEC 80000-13) and decimal (SI) multiples.
const SIZE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// The reason a duration or size was rejected.
///
/// The messages never repeat the input, because the input may come from a substituted
/// environment variable that contains a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum UnitError {
    /// The text is empty.
    #[error("the value is empty")]
    Empty,
    /// A number without a unit.
    #[error("a bare number has no unit")]
    MissingUnit,
    /// A unit that is not in the list.
    #[error("the unit is unknown")]
    UnknownUnit,
    /// Anything else that is not `<whole number><unit>`.
    #[error("write a whole number followed by a unit, without spaces")]
    Malformed,
    /// The same duration unit twice, or a larger unit after a smaller one.
    #[error("write the parts from the largest unit to the smallest, each unit once")]
    UnitOrder,
    /// The value does not fit in 64 bits.
    #[error("the value is too large")]
    TooLarge,
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `2h`, `1d` or the compound `1m30s`.
///
/// Each part is a whole number and one of the units `d`, `h`, `m`, `s`, `ms`, from the largest
/// to the smallest. `0s` is zero.
pub(super) fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let parts = split_parts(text)?;
    let mut total_ms: u64 = 0;
    let mut previous_rank = None;
    for (number, unit) in parts {
        let rank = DURATION_UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or(UnitError::UnknownUnit)?;
        if previous_rank.is_some_and(|previous| rank <= previous) {
            return Err(UnitError::UnitOrder);
        }
        previous_rank = Some(rank);
        let part_ms = number
            .checked_mul(DURATION_UNITS[rank].1)
            .ok_or(UnitError::TooLarge)?;
        total_ms = total_ms.checked_add(part_ms).ok_or(UnitError::TooLarge)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size in bytes such as `512B`, `64KiB`, `1MiB`, `1GiB`, `10kB` or `1MB`.
///
/// `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024. `kB` (or `KB`), `MB`, `GB`, `TB` are powers
/// of 1000.
pub(super) fn parse_size(text: &str) -> Result<u64, UnitError> {
    let parts = split_parts(text)?;
    let [(number, unit)] = parts.as_slice() else {
        return Err(UnitError::Malformed);
    };
    let (_, factor) = SIZE_UNITS
        .iter()
        .find(|(name, _)| name == unit)
        .ok_or(UnitError::UnknownUnit)?;
    number.checked_mul(*factor).ok_or(UnitError::TooLarge)
}

/// Lists the duration units for error messages.
pub(super) fn duration_units() -> String {
    let names: Vec<&str> = DURATION_UNITS.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

/// Lists the size units for error messages.
pub(super) fn size_units() -> String {
    let names: Vec<&str> = SIZE_UNITS.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

/// Splits `1m30s` into `[(1, "m"), (30, "s")]`.
fn split_parts(text: &str) -> Result<Vec<(u64, &str)>, UnitError> {
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 {
            return Err(UnitError::Malformed);
        }
        if letters == 0 {
            let bare = digits == rest.len() && parts.is_empty();
            return Err(if bare {
                UnitError::MissingUnit
            } else {
                UnitError::Malformed
            });
        }
        let number = rest[..digits].parse().map_err(|_| UnitError::TooLarge)?;
        parts.push((number, &rest[digits..digits + letters]));
        rest = &rest[digits + letters..];
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound_durations_add_up() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h1s250ms"),
            Ok(Duration::from_millis(3_601_250))
        );
    }

    #[test]
    fn duration_without_unit_is_rejected() {
        assert_eq!(parse_duration("30"), Err(UnitError::MissingUnit));
        assert_eq!(parse_duration(""), Err(UnitError::Empty));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        assert_eq!(parse_duration("30 s"), Err(UnitError::Malformed));
        assert_eq!(parse_duration("1.5s"), Err(UnitError::Malformed));
        assert_eq!(parse_duration("-1s"), Err(UnitError::Malformed));
        assert_eq!(parse_duration("s"), Err(UnitError::Malformed));
        assert_eq!(parse_duration("1m30"), Err(UnitError::Malformed));
        assert_eq!(parse_duration("5M"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_duration("5sec"), Err(UnitError::UnknownUnit));
    }

    #[test]
    fn duration_units_must_descend() {
        assert_eq!(parse_duration("30s1m"), Err(UnitError::UnitOrder));
        assert_eq!(parse_duration("1s1s"), Err(UnitError::UnitOrder));
    }

    #[test]
    fn huge_duration_is_rejected() {
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err(UnitError::TooLarge)
        );
        assert_eq!(parse_duration("999999999999999d"), Err(UnitError::TooLarge));
    }

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("1GiB"), Ok(1_073_741_824));
        assert_eq!(parse_size("2KB"), Ok(2_000));
        assert_eq!(parse_size("2kB"), Ok(2_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        assert_eq!(parse_size("1048576"), Err(UnitError::MissingUnit));
        assert_eq!(parse_size("1mib"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_size("1MiB1KiB"), Err(UnitError::Malformed));
        assert_eq!(parse_size("1.5MiB"), Err(UnitError::Malformed));
        assert_eq!(parse_size("99999999TiB"), Err(UnitError::TooLarge));
    }
}
