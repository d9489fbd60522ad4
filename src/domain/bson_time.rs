//! BSON dates as `chrono` times: the same helpers, under the same names, as bson's
//! `serde_helpers`, except for how a date is read. bson's deserializers show a date as the small
//! map `{"$date": {"$numberLong": "<ms>"}}`; bson's own `DateTime` reads that into a whole `Bson`
//! value, building two hashed documents on the way (half the time of a one-date document, about
//! 8% of a page of messages). These helpers read the map's two keys and the number instead, and
//! build no document.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads a date as the `{"$date": ...}` map every BSON deserializer shows one as, or a null as
/// `None`.
fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    deserializer.deserialize_any(DateVisitor)
}

struct DateVisitor;

impl<'de> Visitor<'de> for DateVisitor {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a BSON date")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let millis = match map.next_key::<Key>()? {
            Some(Key::Date) => map.next_value::<Millis>()?.0,
            _ => return Err(A::Error::custom("expected a BSON date")),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("expected a BSON date"));
        }
        Ok(Some(bson::DateTime::from_millis(millis).to_chrono()))
    }
}

/// The key of a date's map, compared without copying it.
enum Key {
    Date,
    NumberLong,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "$date" => Key::Date,
                    "$numberLong" => Key::NumberLong,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A date's milliseconds: a number, `{"$numberLong": "<digits>"}` or an RFC 3339 time.
struct Millis(i64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;
        impl<'de> Visitor<'de> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("milliseconds since the epoch")
            }
            fn visit_i64<E: serde::de::Error>(self, millis: i64) -> Result<Millis, E> {
                Ok(Millis(millis))
            }
            /// Digits, or (from a `Bson` document) an RFC 3339 time.
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Millis, E> {
                match text.parse() {
                    Ok(millis) => Ok(Millis(millis)),
                    Err(_) => DateTime::parse_from_rfc3339(text)
                        .map(|time| Millis(time.timestamp_millis()))
                        .map_err(|_| E::custom("expected milliseconds or an RFC 3339 time")),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Millis, A::Error> {
                let millis = match map.next_key::<Key>()? {
                    Some(Key::NumberLong) => map.next_value::<Millis>()?,
                    _ => return Err(A::Error::custom("expected {\"$numberLong\": ...}")),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom("expected {\"$numberLong\": ...}"));
                }
                Ok(millis)
            }
        }
        deserializer.deserialize_any(MillisVisitor)
    }
}

pub mod chrono_datetime_as_bson_datetime {
    use super::*;

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        bson::DateTime::from_chrono(*value).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        read(deserializer)?.ok_or_else(|| D::Error::custom("expected a date, found null"))
    }
}

pub mod chrono_datetime_as_bson_datetime_optional {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        value.map(bson::DateTime::from_chrono).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        read(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;
    use chrono::TimeZone;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Stamped {
        #[serde(with = "chrono_datetime_as_bson_datetime")]
        at: DateTime<Utc>,
        #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
        until: Option<DateTime<Utc>>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        Stamped { stamped: Stamped },
    }

    #[test]
    fn dates_round_trip_as_bson_dates_through_raw_bytes_and_documents() {
        let at = Utc.timestamp_millis_opt(1_764_000_000_123).unwrap();
        for until in [None, Some(at + chrono::Duration::days(3))] {
            let stamped = Stamped { at, until };
            let document = bson::to_document(&stamped).unwrap();
            assert_eq!(document.get_datetime("at").unwrap().to_chrono(), at, "stored as a BSON date");
            match until {
                Some(until) => assert_eq!(document.get_datetime("until").unwrap().to_chrono(), until),
                None => assert_eq!(document.get("until"), Some(&bson::Bson::Null)),
            }
            let bytes = bson::to_vec(&document).unwrap();
            assert_eq!(bson::from_slice::<Stamped>(&bytes).unwrap(), stamped, "from raw bytes");
            assert_eq!(bson::from_document::<Stamped>(document).unwrap(), stamped, "from a document");
        }
        let tagged = bson::to_vec(&Tagged::Stamped { stamped: Stamped { at, until: Some(at) } }).unwrap();
        let Tagged::Stamped { stamped } = bson::from_slice::<Tagged>(&tagged).unwrap();
        assert_eq!((stamped.at, stamped.until), (at, Some(at)), "inside an internally tagged enum (buffered)");
        let absent = bson::to_vec(&doc! { "at": bson::DateTime::from_millis(5) }).unwrap();
        assert_eq!(bson::from_slice::<Stamped>(&absent).unwrap().until, None, "a missing optional date is none");
    }

    #[test]
    fn a_value_that_is_not_a_date_is_refused() {
        for bad in [doc! { "at": "2026-01-01" }, doc! { "at": 5_i64 }, doc! { "at": bson::Bson::Null }] {
            let bytes = bson::to_vec(&bad).unwrap();
            assert!(bson::from_slice::<Stamped>(&bytes).is_err(), "{bad}");
            assert!(bson::from_document::<Stamped>(bad).is_err());
        }
    }
}
