//! DICOM date arithmetic for the per-patient date shift (retain-long-modified-dates).

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Shifts a calendar date by `days`; `None` if the input is not a valid date or the result
/// leaves the years 0..=9999 that DICOM (and every human format here) can write.
pub fn shift_ymd(y: i64, m: u32, d: u32, days: i64) -> Option<(i64, u32, u32)> {
    if !is_valid_date(y, m, d) {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(y, m, d) + days);
    (0..=9999).contains(&y).then_some((y, m, d))
}

/// Whether y-m-d names a day of the proleptic Gregorian calendar.
pub fn is_valid_date(y: i64, m: u32, d: u32) -> bool {
    (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Shifts the date part of a DA or DT value by `days`. Partial dates (YYYY, YYYYMM) are
/// shifted from their first day and keep their precision. Returns `None` for anything that
/// is not a valid date, so the caller can replace it rather than pass it through.
pub fn shift_date_prefix(value: &str, days: i64) -> Option<String> {
    let v = value.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let precision = match digits {
        d if d >= 8 => 8,
        6 | 7 => 6,
        4 | 5 => 4,
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<u32>().ok();
    let year = i64::from(num(0..4)?);
    let month = if precision >= 6 { num(4..6)? } else { 1 };
    let day = if precision >= 8 { num(6..8)? } else { 1 };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // What follows the date: a DT's time and offset, or nothing. Anything else means the
    // value is not a date at all.
    let rest = &v[precision..];
    let rest_ok = if precision == 8 {
        rest.len() <= 18
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.".contains(&b))
    } else {
        rest.is_empty()
            || (rest.len() == 5
                && (rest.starts_with('+') || rest.starts_with('-'))
                && rest[1..].bytes().all(|b| b.is_ascii_digit()))
    };
    if !rest_ok {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(year, month, day) + days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let head = match precision {
        8 => format!("{y:04}{m:02}{d:02}"),
        6 => format!("{y:04}{m:02}"),
        _ => format!("{y:04}"),
    };
    Some(format!("{head}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_civil_days() {
        for z in [-800_000, -1, 0, 1, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn shifts_full_partial_and_datetime_values() {
        assert_eq!(shift_date_prefix("20240301", -1).unwrap(), "20240229");
        assert_eq!(shift_date_prefix("20230301", -1).unwrap(), "20230228");
        assert_eq!(
            shift_date_prefix("20240115123000.5+0100", -20).unwrap(),
            "20231226123000.5+0100"
        );
        assert_eq!(shift_date_prefix("202401", -40).unwrap(), "202311");
        assert_eq!(shift_date_prefix("1999", 366).unwrap(), "2000");
        assert_eq!(shift_date_prefix("20240230", 1), None);
        assert_eq!(shift_date_prefix("2024-01-01", 1), None);
        assert_eq!(shift_date_prefix("", 1), None);
    }

    #[test]
    fn shifts_calendar_dates_and_refuses_invalid_ones() {
        assert_eq!(shift_ymd(2026, 12, 3, -365), Some((2025, 12, 3)));
        assert_eq!(shift_ymd(2024, 3, 1, -1), Some((2024, 2, 29)));
        assert_eq!(shift_ymd(2026, 2, 29, 0), None);
        assert_eq!(shift_ymd(0, 1, 1, -1), None);
        assert!(is_valid_date(2000, 2, 29) && !is_valid_date(1900, 2, 29));
    }
}
