//! Decode stage: RFC 3339 timestamps as the runtimes write them (Go's `time.RFC3339Nano`), to
//! Unix nanoseconds. Spec: <https://www.rfc-editor.org/rfc/rfc3339#section-5.6>.
//!
//! A full RFC 3339 `date-time`, not a fixed-width pattern: the fraction has any number of digits
//! or none (Go trims its trailing zeros, and drops it when the nanoseconds are 0), the zone is `Z`
//! or a `±hh:mm` offset (CRI-O writes local offsets). Digits past the ninth are ignored (RFC 3339
//! allows them, nanoseconds cannot hold them). Dates are validated: month 13, February 30 or hour
//! 24 are rejected. A time outside the range of `i64` nanoseconds (years 1677 to 2262) is
//! rejected as well.

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Parses an RFC 3339 date-time (`2016-10-06T00:17:09.669794202Z`, `2024-04-13T07:59:37-05:00`)
/// into Unix nanoseconds (UTC). `None` when it is not one, or not representable.
pub fn parse_rfc3339_nanos(s: &[u8]) -> Option<i64> {
    // full-date "T" partial-time: exactly 19 bytes, `YYYY-MM-DDTHH:MM:SS`.
    let head: &[u8; 19] = s.get(..19)?.try_into().ok()?;
    if head[4] != b'-'
        || head[7] != b'-'
        || !matches!(head[10], b'T' | b't')
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits2(head[0], head[1])?) * 100 + i64::from(digits2(head[2], head[3])?);
    let month = digits2(head[5], head[6])?;
    let day = digits2(head[8], head[9])?;
    let hour = digits2(head[11], head[12])?;
    let minute = digits2(head[14], head[15])?;
    // 60 is a leap second in RFC 3339; it counts as the first second of the next minute.
    let second = digits2(head[17], head[18])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let [b'.', tail @ ..] = rest {
        let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, &d) in tail[..digits].iter().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(d - b'0');
            }
        }
        for _ in digits..9 {
            nanos *= 10;
        }
        rest = &tail[digits..];
    }

    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits2(*h1, *h2)?;
            let om = digits2(*m1, *m2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i64::from(oh) * 3600 + i64::from(om) * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };

    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_secs;
    // i128 so that the first nanosecond of i64's range (which has a negative second part one
    // beyond i64::MIN / 10^9) still parses.
    i64::try_from(i128::from(secs) * i128::from(NANOS_PER_SEC) + i128::from(nanos)).ok()
}

/// Two ASCII digits as a number.
#[inline]
fn digits2(a: u8, b: u8) -> Option<u8> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    if a < 10 && b < 10 {
        Some(a * 10 + b)
    } else {
        None
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2016-10-06T00:17:09Z in Unix seconds.
    const T0: i64 = 1_475_713_029;

    #[test]
    fn every_fraction_width_and_zone_form_parses_to_utc_nanos() {
        let cases: &[(&str, i64)] = &[
            ("2016-10-06T00:17:09Z", T0 * NANOS_PER_SEC),
            ("2016-10-06T00:17:09.6Z", T0 * NANOS_PER_SEC + 600_000_000),
            ("2016-10-06T00:17:09.66Z", T0 * NANOS_PER_SEC + 660_000_000),
            ("2016-10-06T00:17:09.669Z", T0 * NANOS_PER_SEC + 669_000_000),
            (
                "2016-10-06T00:17:09.6697Z",
                T0 * NANOS_PER_SEC + 669_700_000,
            ),
            (
                "2016-10-06T00:17:09.66979Z",
                T0 * NANOS_PER_SEC + 669_790_000,
            ),
            (
                "2016-10-06T00:17:09.669794Z",
                T0 * NANOS_PER_SEC + 669_794_000,
            ),
            (
                "2016-10-06T00:17:09.6697942Z",
                T0 * NANOS_PER_SEC + 669_794_200,
            ),
            (
                "2016-10-06T00:17:09.66979420Z",
                T0 * NANOS_PER_SEC + 669_794_200,
            ),
            (
                "2016-10-06T00:17:09.669794202Z",
                T0 * NANOS_PER_SEC + 669_794_202,
            ),
            // Digits past nanoseconds are allowed by RFC 3339 and ignored.
            (
                "2016-10-06T00:17:09.6697942029999Z",
                T0 * NANOS_PER_SEC + 669_794_202,
            ),
            ("2016-10-06T00:17:09.000000001Z", T0 * NANOS_PER_SEC + 1),
            // Local offsets (CRI-O/conmon) are converted to UTC.
            ("2016-10-06T05:47:09+05:30", T0 * NANOS_PER_SEC),
            (
                "2016-10-05T19:17:09.5-05:00",
                T0 * NANOS_PER_SEC + 500_000_000,
            ),
            ("2016-10-06T00:17:09+00:00", T0 * NANOS_PER_SEC),
            ("2016-10-06T00:17:09-00:00", T0 * NANOS_PER_SEC),
            ("2016-10-06t00:17:09z", T0 * NANOS_PER_SEC),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999999999Z", -1),
            ("2000-02-29T00:00:00Z", 951_782_400 * NANOS_PER_SEC),
            ("2024-02-29T12:00:00Z", 1_709_208_000 * NANOS_PER_SEC),
            ("2016-12-31T23:59:60Z", 1_483_228_800 * NANOS_PER_SEC),
            ("2262-04-11T23:47:16.854775807Z", i64::MAX),
            ("1677-09-21T00:12:43.145224192Z", i64::MIN),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_rfc3339_nanos(input.as_bytes()),
                Some(*want),
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_dates_and_malformed_timestamps_are_rejected() {
        let cases: &[&str] = &[
            "",
            "2016-10-06",
            "2016-10-06T00:17:09",
            "2016-13-06T00:17:09Z",
            "2016-00-06T00:17:09Z",
            "2016-10-32T00:17:09Z",
            "2016-10-00T00:17:09Z",
            "2016-04-31T00:17:09Z",
            "2023-02-29T00:17:09Z",
            "1900-02-29T00:17:09Z",
            "2016-10-06T25:17:09Z",
            "2016-10-06T24:00:00Z",
            "2016-10-06T00:60:09Z",
            "2016-10-06T00:17:61Z",
            "2016-10-06 00:17:09Z",
            "2016/10/06T00:17:09Z",
            "2016-10-06T00:17:09.Z",
            "2016-10-06T00:17:09.123",
            "2016-10-06T00:17:09.12a3Z",
            "2016-10-06T00:17:09ZZ",
            "2016-10-06T00:17:09Z ",
            "2016-10-06T00:17:09+0530",
            "2016-10-06T00:17:09+05",
            "2016-10-06T00:17:09+24:00",
            "2016-10-06T00:17:09+05:60",
            "2016-10-06T00:17:09 +05:30",
            "+016-10-06T00:17:09Z",
            "20161006T001709Z",
            "2016-1O-06T00:17:09Z",
            // Outside i64 nanoseconds.
            "2262-04-11T23:47:16.854775808Z",
            "1677-09-21T00:12:43.145224191Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ];
        for input in cases {
            assert_eq!(parse_rfc3339_nanos(input.as_bytes()), None, "{input:?}");
        }
    }

    #[test]
    fn days_from_civil_agrees_with_a_day_by_day_count() {
        let mut days = 0i64;
        for year in 1970..2101 {
            for month in 1..=12u8 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        days,
                        "{year}-{month}-{day}"
                    );
                    days += 1;
                }
            }
        }
    }
}
