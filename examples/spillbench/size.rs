//! Human-friendly byte sizes: parsing (`64MiB`, `4KiB`, `1.5GB`, `4096`) and
//! formatting.

/// Units accepted by [`parse_size`], matched case-insensitively, with their
/// multiplier in bytes.
///
/// `K`/`M`/`G`/`T` on their own are binary (as in `dd`); `KB`/`MB`/… are
/// decimal and `KiB`/`MiB`/… binary, as in SI/IEC.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1_000),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1_000_000),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1_000_000_000),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tb", 1_000_000_000_000),
    ("tib", 1 << 40),
];

/// Parses a byte size such as `64MiB`, `4 KiB`, `1GB`, `1.5GiB` or `65536`.
///
/// The number is a plain decimal (digits with at most one `.`; no sign, no
/// exponent), optionally followed by whitespace and a unit from [`UNITS`].
/// Fractional sizes must come out as a whole number of bytes. The error is a
/// sentence meant for the user (clap prints it after the flag name).
pub(crate) fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty size (expected e.g. 64MiB, 4KiB, 1GB or 4096)".to_owned());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let multiplier = UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, m)| m)
        .ok_or_else(|| {
            format!(
                "unknown unit {unit:?} in {input:?} (expected B, KB, MB, GB, TB, \
                 KiB, MiB, GiB, TiB or K, M, G, T)"
            )
        })?;
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(format!(
            "{input:?} is not a size (expected a number followed by an optional unit, \
             e.g. 64MiB, 4KiB, 1GB or 4096)"
        ));
    }
    let too_large = || format!("{input:?} is too large (max {} bytes)", u64::MAX);
    let int: u64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| too_large())?
    };
    let mut bytes = int.checked_mul(multiplier).ok_or_else(too_large)?;
    if !frac_part.is_empty() {
        // Exact arithmetic: fraction * multiplier must be a whole number of
        // bytes. 19 digits keep 10^digits within u64 (and the product within u128).
        let digits = frac_part.trim_end_matches('0');
        if digits.len() > 19 {
            return Err(format!("{input:?} has too many decimal places"));
        }
        let numerator: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| too_large())?
        };
        let denominator = 10u128.pow(digits.len() as u32);
        let scaled = numerator * u128::from(multiplier);
        if !scaled.is_multiple_of(denominator) {
            return Err(format!("{input:?} is not a whole number of bytes"));
        }
        let extra = u64::try_from(scaled / denominator).map_err(|_| too_large())?;
        bytes = bytes.checked_add(extra).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Formats a byte count with a binary unit, e.g. `64.0 MiB` or `512 B`.
pub(crate) fn format_size(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < NAMES.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", NAMES[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4 kib"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1gb"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert_eq!(parse_size("2.KB"), Ok(2000));
        assert_eq!(parse_size(" 3TiB "), Ok(3 << 40));
        assert_eq!(parse_size("1.000KB"), Ok(1000));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", " ", "abc", "MiB", "-1", "+1", "1e3", "1..2", "1.2.3", ".", "64XB", "64 MiB x",
            "1.5B", "0.1KB0", "nan", "inf",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("16EiB").is_err());
        assert!(parse_size("16777216TiB").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
    }
}
