//! Secrets in the configuration: values that are masked whenever the
//! config is printed, logged or put in an error, and the `key` / `key_env`
//! / `key_file` indirection that reads them.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::path::Path;

fn error_at(key: &str, message: impl fmt::Display) -> String {
    format!("{key}: {message}")
}

/// A secret value: masked whenever the config is printed or logged.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("****")
    }
}

/// A URL that may carry credentials (`https://user:pass@host/`): the
/// password is masked whenever it is printed, logged or put in an error.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct MaskedUrl(String);

impl MaskedUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `****`.
    pub fn masked(&self) -> String {
        mask_url(&self.0)
    }
}

/// `text` with the password of a URL's userinfo replaced by `****`.
pub fn mask_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = text[authority_start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| authority_start + i);
    let Some(at) = text[authority_start..authority_end].rfind('@') else {
        return text.to_string();
    };
    let userinfo = &text[authority_start..authority_start + at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!(
        "{}{user}:****{}",
        &text[..authority_start],
        &text[authority_start + at..]
    )
}

impl fmt::Debug for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for MaskedUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

/// Resolves a secret given directly (`key`), by environment variable
/// (`key_env`) or by file (`key_file`); at most one may be set. Errors
/// name the key they are about.
pub fn resolve_secret(
    key: &str,
    direct: Option<&Secret>,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, String> {
    let given = [direct.is_some(), env.is_some(), file.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(error_at(
            key,
            format!("set only one of {key}, {key}_env, {key}_file"),
        ));
    }
    if let Some(secret) = direct {
        return non_empty_secret(key, secret.expose().to_string()).map(Some);
    }
    if let Some(var) = env {
        let value = std::env::var(var).map_err(|_| {
            error_at(
                &format!("{key}_env"),
                format!("environment variable `{var}` is not set"),
            )
        })?;
        return non_empty_secret(&format!("{key}_env"), value).map(Some);
    }
    if let Some(path) = file {
        let value = std::fs::read_to_string(path).map_err(|e| {
            error_at(
                &format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return non_empty_secret(
            &format!("{key}_file"),
            value.trim_end_matches(['\n', '\r']).to_string(),
        )
        .map(Some);
    }
    Ok(None)
}

fn non_empty_secret(key: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        return Err(error_at(key, "the secret is empty"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_their_password() {
        let cases = [
            ("https://user:pass@host/x", "https://user:****@host/x"),
            ("http://token@host:8080", "http://token:****@host:8080"),
            ("http://u:p:q@host?a=b@c", "http://u:****@host?a=b@c"),
            ("http://host/path@x", "http://host/path@x"),
            ("not a url", "not a url"),
        ];
        for (given, masked) in cases {
            assert_eq!(mask_url(given), masked);
        }
    }
}
