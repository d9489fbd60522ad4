//! What an API key may do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    KeysRead,
    KeysWrite,
    AuditRead,
    UsersRead,
    UsersWrite,
    ChatRead,
    ChatWrite,
    FilesRead,
    FilesWrite,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown scope '{0}'")]
pub struct UnknownScope(pub String);

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::AuditRead,
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::ChatRead,
        Scope::ChatWrite,
        Scope::FilesRead,
        Scope::FilesWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::AuditRead => "audit:read",
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::ChatRead => "chat:read",
            Scope::ChatWrite => "chat:write",
            Scope::FilesRead => "files:read",
            Scope::FilesWrite => "files:write",
        }
    }
}

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| UnknownScope(s.to_string()))
    }
}

impl TryFrom<String> for Scope {
    type Error = UnknownScope;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> Self {
        scope.as_str().to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_names() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("keys:admin".parse::<Scope>().is_err());
    }
}
