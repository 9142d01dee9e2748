//! A string that must never be printed: provider tokens, passwords, device tokens.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (API token, password, device token).
///
/// `Debug` and `Display` print `"***"`; the value is reachable only through
/// [`Secret::expose`], so it cannot slip into a log line by accident.
///
/// Deserialising accepts a string, and also an integer (written back in decimal),
/// because configuration loaded from environment variables turns `GOTIFY_TOKEN=12345`
/// into a number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call this only where the value is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (an empty token is treated as "not configured").
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("AbCdEf123");
        assert!(!format!("{s:?}").contains("AbCdEf123"));
        assert!(!format!("{s}").contains("AbCdEf123"));
        assert_eq!(s.expose(), "AbCdEf123");
    }

    #[test]
    fn numeric_tokens_deserialize_as_strings() {
        let s: Secret = serde_json::from_str("12345").unwrap();
        assert_eq!(s.expose(), "12345");
        let s: Secret = serde_json::from_str("\"A-x.1\"").unwrap();
        assert_eq!(s.expose(), "A-x.1");
    }
}
