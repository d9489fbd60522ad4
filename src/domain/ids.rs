//! Identifiers that arrive from outside and are validated once.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub &'static str);

/// The conversions every validated string type shares: serde goes through `parse`, so a value
/// read from JSON, TOML or BSON is as valid as one built in code.
macro_rules! validated_string {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::domain::InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use validated_string;

/// A UUIDv7 identifier in its lowercase hyphenated text form (time-ordered), made by confab.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $rule:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }

            /// Only the lowercase hyphenated form: at 36 characters that is the one form
            /// `Uuid::parse_str` reads, so no uppercase letter means it is already canonical.
            pub fn parse(raw: &str) -> Result<Self, $crate::domain::InvalidId> {
                let canonical = raw.len() == 36 && !raw.bytes().any(|b| b.is_ascii_uppercase());
                if canonical && uuid::Uuid::parse_str(raw).is_ok() {
                    Ok(Self(raw.to_string()))
                } else {
                    Err($crate::domain::InvalidId($rule))
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        $crate::domain::ids::validated_string!($name);
    };
}
pub(crate) use uuid_id;

/// A tenant slug: `[a-z][a-z0-9-]{2,31}`. Safe to embed in database names and Redis keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub const RULE: &'static str =
        "tenant ids are 3-32 characters: a lowercase letter, then lowercase letters, digits or '-'";

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && (3..=32).contains(&raw.len()) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidId(Self::RULE))
        }
    }
}

validated_string!(TenantId);

/// The public id of an API key: 16 characters of `[a-z0-9]`, also embedded in the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiKeyId(String);

impl ApiKeyId {
    pub const LEN: usize = 16;

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if raw.len() == Self::LEN && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidId("API key ids are 16 characters of [a-z0-9]"))
        }
    }
}

validated_string!(ApiKeyId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_slug_rule() {
        for good in ["acme", "a-1", "abc", "a23456789012345678901234567890bc"] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(33);
        for bad in ["../x", "A", "a.b", "$cmd", "ab", "1abc", "-abc", "ac me", "acmé", &too_long, ""] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuid_ids_take_only_the_lowercase_hyphenated_form() {
        use crate::domain::ConversationId;
        let id = uuid::Uuid::now_v7();
        let canonical = id.hyphenated().to_string();
        assert_eq!(ConversationId::parse(&canonical).unwrap().as_str(), canonical);
        assert!(ConversationId::parse(&ConversationId::new().to_string()).is_ok());
        let other_forms = [
            canonical.to_uppercase(),
            id.simple().to_string(),
            id.braced().to_string(),
            id.urn().to_string(),
            canonical.replacen('-', "x", 1),
            canonical.replace('-', ""),
            format!("{}-", &canonical[..35]),
            canonical[..35].to_string(),
            "g".repeat(36),
            String::new(),
        ];
        for bad in other_forms {
            assert!(ConversationId::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_key_ids_are_sixteen_lowercase_alphanumerics() {
        assert!(ApiKeyId::parse("abcdefgh01234567").is_ok());
        assert!(ApiKeyId::parse("ABCDEFGH01234567").is_err());
        assert!(ApiKeyId::parse("abc").is_err());
    }
}
