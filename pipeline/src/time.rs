//! Calendar arithmetic for log timestamps.
//!
//! Hand-written rather than a date crate because syslog prefixes are parsed on
//! the hot path of `scan` (millions of lines) and need only the proleptic
//! Gregorian day count, in both directions (Howard Hinnant's algorithms).
//! Dates read from text are checked against the calendar (days per month,
//! leap years) before they are counted: `2019-02-31` is refused, not read as
//! March 3rd.

/// Why a text is not an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("expected YYYY-MM-DDTHH:MM:SS[.fraction][Z|+HH:MM|-HH:MM] with hours 00-23, minutes and seconds 00-59")]
    Format,
    #[error("{year:04}-{month:02}-{day:02} is not a calendar date")]
    Date { year: i64, month: u32, day: u32 },
}

/// Gregorian leap years: every fourth, except centuries not divisible by 400.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1-12) of `year`; 0 for a month outside 1-12.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a date read from text, or why it is no date.
pub fn checked_days_from_civil(year: i64, month: u32, day: u32) -> Result<i64, TimeError> {
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimeError::Date { year, month, day });
    }
    Ok(days_from_civil(year, month, day))
}

/// Days since 1970-01-01 of a civil date, which the caller has checked
/// ([`checked_days_from_civil`] for dates read from text).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(epoch_ms: i64) -> String {
    let days = epoch_ms.div_euclid(86_400_000);
    let ms_of_day = epoch_ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let (h, mi, s, ms) = (secs / 3600, (secs / 60) % 60, secs % 60, ms_of_day % 1000);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z");
    }
    // Every command carries three of these: digits by hand cost about a
    // sixth of `format!`'s instructions.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            // 0 <= v % 10 < 10: every field here is non-negative.
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, i64::from(mo));
    put(8, 2, i64::from(d));
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 3, ms);
    String::from_utf8_lossy(&b).into_owned()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac][Z|±HH:MM|±HHMM]` (also with a space
/// instead of `T`); no offset means UTC. Returns epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return Err(TimeError::Format);
    }
    // Fixed positions, two digits at a time: every ISO-stamped line pays
    // for this, so it avoids the general digit loop.
    let (Some(century), Some(yy), Some(month), Some(day)) = (
        two_digits(b, 0),
        two_digits(b, 2),
        two_digits(b, 5),
        two_digits(b, 8),
    ) else {
        return Err(TimeError::Format);
    };
    let year = i64::from(century * 100 + yy);
    let (secs, mut rest) = parse_hms(&b[11..]).ok_or(TimeError::Format)?;
    let days = checked_days_from_civil(year, month, day)?;
    let mut ms = 0i64;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(TimeError::Format);
        }
        let digit = |k: usize| {
            tail.get(k)
                .filter(|_| k < n)
                .map_or(0, |&c| i64::from(c - b'0'))
        };
        ms = digit(0) * 100 + digit(1) * 10 + digit(2);
        rest = &tail[n..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (h, m) = match tail {
                [_, _, b':', _, _] => (two_digits(tail, 0), two_digits(tail, 3)),
                [_, _, _, _] => (two_digits(tail, 0), two_digits(tail, 2)),
                [_, _] => (two_digits(tail, 0), Some(0)),
                _ => return Err(TimeError::Format),
            };
            let (Some(h), Some(m)) = (h, m) else {
                return Err(TimeError::Format);
            };
            let off = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(TimeError::Format),
    };
    Ok((days * 86_400 + secs - offset_secs) * 1000 + ms)
}

/// `HH:MM:SS` at the start of `b`: seconds of the day and the rest.
pub(crate) fn parse_hms(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let h = two_digits(b, 0)?;
    let m = two_digits(b, 3)?;
    let s = two_digits(b, 6)?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some((i64::from(h * 3600 + m * 60 + s.min(59)), &b[8..]))
}

/// The two decimal digits at `b[i..i + 2]`, which the caller has bounds-checked.
fn two_digits(b: &[u8], i: usize) -> Option<u32> {
    let (t, u) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
    (t < 10 && u < 10).then(|| u32::from(t) * 10 + u32::from(u))
}

pub(crate) fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            parse_rfc3339_ms("2019-07-08T17:40:16.954167-04:00"),
            Ok(1_562_622_016_954)
        );
        assert_eq!(
            parse_rfc3339_ms("2015-04-16T18:02:50+0000"),
            Ok(1_429_207_370_000)
        );
        assert_eq!(
            format_rfc3339_ms(1_562_622_016_954),
            "2019-07-08T21:40:16.954Z"
        );
        assert_eq!(
            parse_rfc3339_ms("2019-13-08T17:40:16Z"),
            Err(TimeError::Date {
                year: 2019,
                month: 13,
                day: 8
            })
        );
        assert_eq!(parse_rfc3339_ms("2019-07-08T17:40"), Err(TimeError::Format));
        // Fractions of one to nine digits, milliseconds truncated.
        for (frac, ms) in [(".9", 900), (".95", 950), (".954", 954), (".954167", 954)] {
            let t = format!("2019-07-08T21:40:16{frac}Z");
            assert_eq!(parse_rfc3339_ms(&t), Ok(1_562_622_016_000 + ms), "{t}");
        }
        for bad in [
            "2019-07-08T21:40:16.Z",
            "2019-07-08T21:40:16+0a:00",
            "2019-0x-08T21:40:16Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), Err(TimeError::Format), "{bad}");
        }
    }

    #[test]
    fn days_per_month_and_leap_years() {
        // (year, month, days): the Gregorian calendar, written out.
        let table = [
            (2019, 1, 31),
            (2019, 2, 28),
            (2019, 3, 31),
            (2019, 4, 30),
            (2019, 5, 31),
            (2019, 6, 30),
            (2019, 7, 31),
            (2019, 8, 31),
            (2019, 9, 30),
            (2019, 10, 31),
            (2019, 11, 30),
            (2019, 12, 31),
            (2020, 2, 29), // divisible by 4
            (1900, 2, 28), // a century not divisible by 400
            (2000, 2, 29), // a century divisible by 400
            (2100, 2, 28),
            (2024, 2, 29),
            (2019, 0, 0),
            (2019, 13, 0),
        ];
        for (year, month, days) in table {
            assert_eq!(days_in_month(year, month), days, "{year}-{month:02}");
        }
    }

    #[test]
    fn dates_that_are_not_in_the_calendar_are_refused() {
        for text in [
            "2019-02-31T00:00:00Z",
            "2019-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2019-04-31T00:00:00Z",
            "2019-06-31T12:00:00+02:00",
            "2019-09-31 00:00:00",
            "2019-11-31T00:00:00Z",
            "2019-01-32T00:00:00Z",
            "2019-01-00T00:00:00Z",
            "2019-00-10T00:00:00Z",
        ] {
            let got = parse_rfc3339_ms(text);
            assert!(
                matches!(got, Err(TimeError::Date { .. })),
                "{text}: {got:?}"
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2019-02-31T00:00:00Z")
                .unwrap_err()
                .to_string(),
            "2019-02-31 is not a calendar date"
        );
        // The last day of each month, and leap days, are dates.
        assert_eq!(
            parse_rfc3339_ms("2020-02-29T00:00:00Z"),
            Ok(1_582_934_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Ok(951_782_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2019-04-30T00:00:00Z"),
            Ok(1_556_582_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2019-12-31T23:59:59Z"),
            Ok(1_577_836_799_000)
        );
    }

    #[test]
    fn times_of_day_out_of_range_are_refused() {
        for text in [
            "2019-07-08T24:00:00Z",
            "2019-07-08T23:60:00Z",
            "2019-07-08T23:59:61Z",
            "2019-07-08T23:59:59.Z",
            "2019-07-08T23:59:59+1",
            "2019-07-08T23:59:59Zjunk",
            "2019-7-08T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_ms(text), Err(TimeError::Format), "{text}");
        }
    }

    proptest! {
        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn format_parse_round_trip(ms in 0i64..8_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }

        #[test]
        fn format_writes_what_format_macro_writes(ms in -100_000_000_000_000i64..400_000_000_000_000) {
            let days = ms.div_euclid(86_400_000);
            let of_day = ms.rem_euclid(86_400_000);
            let (y, mo, d) = civil_from_days(days);
            let secs = of_day / 1000;
            let expected = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60,
                of_day % 1000
            );
            prop_assert_eq!(format_rfc3339_ms(ms), expected);
        }
    }
}
