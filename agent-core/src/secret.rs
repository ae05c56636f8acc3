//! [`SecretString`]: an API key or token that never shows up in `Debug`, `Display` or logs.

use std::fmt;

/// A secret (an API key, an API token) whose `Debug` and `Display` print `[REDACTED]`.
///
/// The value is only reachable through [`SecretString::expose`], which the providers call when they
/// set the request header — nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Use it only to build a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the secret in `text` with `[REDACTED]` (servers sometimes echo
    /// the key back in their error messages).
    pub fn scrub(&self, text: &str) -> String {
        // A very short "key" would redact ordinary words; real keys are long.
        if self.0.len() < 6 || !text.contains(&self.0) {
            return text.to_owned();
        }
        text.replace(&self.0, "[REDACTED]")
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Parses any text (so a secret can be a `clap` argument); never fails.
impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s))
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretString::new("sk-very-secret-123");
        assert_eq!(format!("{s:?}"), "SecretString([REDACTED])");
        assert_eq!(s.to_string(), "[REDACTED]");
        assert_eq!(s.expose(), "sk-very-secret-123");
    }

    #[test]
    fn scrub_replaces_the_secret() {
        let s = SecretString::new("sk-very-secret-123");
        assert_eq!(
            s.scrub("Incorrect API key provided: sk-very-secret-123."),
            "Incorrect API key provided: [REDACTED]."
        );
        assert_eq!(s.scrub("nothing here"), "nothing here");
    }
}
