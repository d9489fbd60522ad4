//! Times in JSON answers, written as chrono writes them (RFC 3339 in UTC, `Z`, as many fraction
//! digits as the time needs: none, 3, 6 or 9), without chrono's way there: it formats through
//! `Display`, and serde_json escapes that text a character at a time. That was a third of a
//! history page's JSON cost. Years outside 0..=9999 and leap seconds are left to chrono.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// `serialize_with` for a `DateTime<Utc>` field.
pub fn write<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let (year, nanos) = (at.year(), at.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return at.serialize(serializer);
    }
    let mut text = [0_u8; 30];
    let mut len = 0;
    let mut put = |value: u32, digits: u32, after: Option<u8>| {
        for place in (0..digits).rev() {
            text[len] = b'0' + (value / 10_u32.pow(place) % 10) as u8;
            len += 1;
        }
        if let Some(separator) = after {
            text[len] = separator;
            len += 1;
        }
    };
    put(year as u32, 4, Some(b'-'));
    put(at.month(), 2, Some(b'-'));
    put(at.day(), 2, Some(b'T'));
    put(at.hour(), 2, Some(b':'));
    put(at.minute(), 2, Some(b':'));
    match nanos {
        0 => put(at.second(), 2, Some(b'Z')),
        n if n % 1_000_000 == 0 => {
            put(at.second(), 2, Some(b'.'));
            put(n / 1_000_000, 3, Some(b'Z'));
        }
        n if n % 1_000 == 0 => {
            put(at.second(), 2, Some(b'.'));
            put(n / 1_000, 6, Some(b'Z'));
        }
        n => {
            put(at.second(), 2, Some(b'.'));
            put(n, 9, Some(b'Z'));
        }
    }
    serializer.serialize_str(std::str::from_utf8(&text[..len]).expect("digits and separators are ASCII"))
}

/// `serialize_with` for an `Option<DateTime<Utc>>` field.
pub fn write_optional<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    struct Time<'a>(&'a DateTime<Utc>);
    impl Serialize for Time<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            write(self.0, serializer)
        }
    }
    match at {
        Some(at) => serializer.serialize_some(&Time(at)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;

    #[derive(Serialize)]
    struct Times {
        #[serde(serialize_with = "write")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "write_optional")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct ByChrono {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn writes_what_chrono_writes() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut times: Vec<DateTime<Utc>> = vec![Utc::now(), Utc.timestamp_millis_opt(0).unwrap()];
        for (date, nanos) in [
            (day(2026, 12, 1), 0),
            (day(2026, 1, 9), 7_000_000),
            (day(1999, 12, 31), 123_456_000),
            (day(2000, 2, 29), 1),
            (day(0, 1, 1), 999_999_999),
            (day(9999, 12, 31), 500_000_000),
            (day(10_000, 1, 1), 0),
            (day(-1, 6, 15), 10_000),
        ] {
            times.push(Utc.from_utc_datetime(&date.and_hms_nano_opt(23, 59, 58, nanos).unwrap()));
        }
        // A leap second.
        times.push(Utc.from_utc_datetime(&day(2016, 12, 31).and_hms_nano_opt(23, 59, 59, 1_250_000_000).unwrap()));
        for millis in (0..2_000_000_000_000_i64).step_by(98_765_432_101) {
            times.push(Utc.timestamp_millis_opt(millis).unwrap());
        }
        for at in times {
            for maybe in [None, Some(at)] {
                let ours = serde_json::to_string(&Times { at, maybe }).unwrap();
                assert_eq!(ours, serde_json::to_string(&ByChrono { at, maybe }).unwrap());
            }
        }
    }
}
