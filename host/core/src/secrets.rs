//! Tenants' secrets: their names, their values (which never print), where
//! the operator keeps them (an environment variable or a file, never the
//! configuration file itself), and the scrubbing of their values out of
//! text that leaves a plugin's sandbox.
//!
//! The operator gives a tenant its secrets in `plugbus.toml`; a plugin
//! reads those its manifest names under `[secrets] grant` through the WIT
//! interface `secrets`. A [`SecretValue`] has no `Display` and no
//! `Serialize`, and its `Debug` prints `SecretValue(<redacted>)`: reading
//! it takes a call of [`SecretValue::expose`], made only to hand it to the
//! plugin and to scrub it.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// The longest secret name accepted, in bytes.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// The largest secret value accepted, in bytes.
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;

/// The shortest value [`Redactor`] scrubs, in bytes: shorter ones would
/// match by chance all over ordinary text.
pub const MIN_SCRUBBED_BYTES: usize = 4;

/// The name of a secret: 1 to 64 of `a-z`, `0-9` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

/// Why a secret name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretNameError {
    /// The name is empty.
    #[error("a secret name is empty")]
    Empty,
    /// The name is longer than [`MAX_SECRET_NAME_LEN`] bytes.
    #[error("secret name {0:?} is too long; at most {MAX_SECRET_NAME_LEN} bytes are allowed")]
    TooLong(String),
    /// The name has a character other than `a-z`, `0-9` and `_`.
    #[error(
        "secret name {name:?} contains {found:?}; only lowercase letters, digits and '_' are allowed"
    )]
    InvalidChar {
        /// The name, cut to [`MAX_SECRET_NAME_LEN`] bytes.
        name: String,
        /// The first character refused.
        found: char,
    },
}

impl SecretName {
    /// Checks `name`: 1 to 64 of `a-z`, `0-9` and `_`.
    pub fn parse(name: &str) -> Result<Self, SecretNameError> {
        if name.is_empty() {
            return Err(SecretNameError::Empty);
        }
        let shown = || crate::text::truncate(name, MAX_SECRET_NAME_LEN).into_owned();
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(SecretNameError::InvalidChar {
                name: shown(),
                found,
            });
        }
        if name.len() > MAX_SECRET_NAME_LEN {
            return Err(SecretNameError::TooLong(shown()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for SecretName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// The value of a secret: 1 byte to 64 KiB of UTF-8. It prints as
/// `SecretValue(<redacted>)`, never serializes, and is cheap to clone.
#[derive(Clone)]
pub struct SecretValue(Arc<str>);

/// Why a secret value was refused. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretValueError {
    /// The value is empty.
    #[error("the value is empty")]
    Empty,
    /// The value is longer than [`MAX_SECRET_VALUE_BYTES`].
    #[error("the value is {0} bytes or more; at most {MAX_SECRET_VALUE_BYTES} are allowed")]
    TooLarge(usize),
    /// The value is not UTF-8 (a plugin reads secrets as strings).
    #[error("the value is not UTF-8 text")]
    NotUtf8,
}

impl SecretValue {
    /// Checks `value`: not empty, at most [`MAX_SECRET_VALUE_BYTES`].
    pub fn new(value: String) -> Result<Self, SecretValueError> {
        if value.is_empty() {
            return Err(SecretValueError::Empty);
        }
        if value.len() > MAX_SECRET_VALUE_BYTES {
            return Err(SecretValueError::TooLarge(value.len()));
        }
        Ok(Self(value.into()))
    }

    /// The value itself: for handing it to a plugin that was granted it,
    /// and for scrubbing it; never for writing it anywhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Where the operator keeps a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the host's process, read at start.
    Env(String),
    /// A file, read at start; its one trailing newline is dropped.
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Why a secret's value could not be read from its source. Never holds
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The value read is not a valid secret value.
    #[error("the {source_name}: {error}")]
    Value {
        /// Where it was read from ([`SecretSource`]'s `Display`).
        source_name: String,
        /// What is wrong with it.
        error: SecretValueError,
    },
}

impl SecretSource {
    /// Reads the value from the process's environment or the file.
    pub fn load(&self) -> Result<SecretValue, SecretSourceError> {
        self.load_with(&|var| std::env::var_os(var))
    }

    /// Reads the value, with `env` as the environment.
    pub fn load_with(
        &self,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<SecretValue, SecretSourceError> {
        let invalid = |error| SecretSourceError::Value {
            source_name: self.to_string(),
            error,
        };
        let text = match self {
            Self::Env(var) => env(var)
                .ok_or_else(|| SecretSourceError::EnvMissing(var.clone()))?
                .into_string()
                .map_err(|_| invalid(SecretValueError::NotUtf8))?,
            Self::File(path) => {
                let mut text = read_file(path).map_err(|source| SecretSourceError::Read {
                    path: path.clone(),
                    source,
                })?;
                if text.len() > MAX_SECRET_VALUE_BYTES + 2 {
                    return Err(invalid(SecretValueError::TooLarge(text.len())));
                }
                if text.ends_with(b"\r\n") {
                    text.truncate(text.len() - 2);
                } else if text.ends_with(b"\n") {
                    text.truncate(text.len() - 1);
                }
                String::from_utf8(text).map_err(|_| invalid(SecretValueError::NotUtf8))?
            }
        };
        SecretValue::new(text).map_err(invalid)
    }
}

/// The first bytes of a file, enough to tell that it is too large for a
/// secret (with its trailing newline) without reading all of it.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_VALUE_BYTES as u64 + 3)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// One tenant's secrets, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets(BTreeMap<SecretName, SecretValue>);

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a secret.
    pub fn insert(&mut self, name: SecretName, value: SecretValue) {
        self.0.insert(name, value);
    }

    /// The secret `name`, if the tenant has it.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.get(name)
    }

    /// Whether the tenant has no secrets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secrets, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&SecretName, &SecretValue)> {
        self.0.iter()
    }
}

impl FromIterator<(SecretName, SecretValue)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (SecretName, SecretValue)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Every tenant's secrets, by tenant name.
#[derive(Debug, Clone, Default)]
pub struct TenantSecrets(BTreeMap<String, Secrets>);

impl TenantSecrets {
    /// No tenant has secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `tenant`'s secrets.
    pub fn insert(&mut self, tenant: impl Into<String>, secrets: Secrets) {
        self.0.insert(tenant.into(), secrets);
    }

    /// `tenant`'s secrets, if it has any.
    pub fn of(&self, tenant: &str) -> Option<&Secrets> {
        self.0.get(tenant)
    }
}

/// Replaces the values of a plugin's secrets in text by
/// `[secret:<name>]`: every exact occurrence of each value of at least
/// [`MIN_SCRUBBED_BYTES`] bytes and, for a value of several lines, of each
/// such line (text written line by line splits it).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// What to look for and its replacement, longest first, so that a
    /// value that holds another is replaced whole.
    patterns: Vec<(SecretValue, String)>,
}

impl Redactor {
    /// A redactor of `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a SecretName, &'a SecretValue)>) -> Self {
        let mut patterns = Vec::new();
        for (name, value) in secrets {
            let replacement = format!("[secret:{name}]");
            let text = value.expose();
            if text.len() >= MIN_SCRUBBED_BYTES {
                patterns.push((value.clone(), replacement.clone()));
            }
            if text.contains('\n') {
                for line in text.lines() {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if line.len() >= MIN_SCRUBBED_BYTES {
                        // A line is checked like a value: never empty, not
                        // too long (it is part of one).
                        if let Ok(line) = SecretValue::new(line.to_owned()) {
                            patterns.push((line, replacement.clone()));
                        }
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.expose().len()));
        patterns.dedup_by(|a, b| a.0.expose() == b.0.expose());
        Self { patterns }
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every value replaced.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut text = Cow::Borrowed(text);
        for (value, replacement) in &self.patterns {
            if text.contains(value.expose()) {
                text = Cow::Owned(text.replace(value.expose(), replacement));
            }
        }
        text
    }

    /// [`Redactor::scrub`] of a text that was cut at a limit, and so may
    /// end with the start of a value: that start (of at least
    /// [`MIN_SCRUBBED_BYTES`]) is replaced too.
    pub fn scrub_cut<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let scrubbed = self.scrub(text);
        for (value, replacement) in &self.patterns {
            let value = value.expose().as_bytes();
            let longest = value.len().saturating_sub(1).min(scrubbed.len());
            for len in (MIN_SCRUBBED_BYTES..=longest).rev() {
                let start = scrubbed.len() - len;
                if scrubbed.is_char_boundary(start)
                    && value.starts_with(&scrubbed.as_bytes()[start..])
                {
                    let mut cut = scrubbed.into_owned();
                    cut.truncate(start);
                    cut.push_str(replacement);
                    return Cow::Owned(cut);
                }
            }
        }
        scrubbed
    }

    /// Scrubs `text` in place; true when it changed.
    pub fn scrub_in_place(&self, text: &mut String) -> bool {
        match self.scrub(text) {
            Cow::Borrowed(_) => false,
            Cow::Owned(scrubbed) => {
                *text = scrubbed;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> SecretName {
        SecretName::parse(n).expect("valid")
    }

    fn value(v: &str) -> SecretValue {
        SecretValue::new(v.to_owned()).expect("valid")
    }

    #[test]
    fn names() {
        assert_eq!(name("webhook_token_2").as_str(), "webhook_token_2");
        assert_eq!(SecretName::parse(""), Err(SecretNameError::Empty));
        assert!(matches!(
            SecretName::parse("Token"),
            Err(SecretNameError::InvalidChar { found: 'T', .. })
        ));
        assert!(matches!(
            SecretName::parse("web-hook"),
            Err(SecretNameError::InvalidChar { found: '-', .. })
        ));
        assert!(SecretName::parse(&"a".repeat(64)).is_ok());
        assert!(matches!(
            SecretName::parse(&"a".repeat(65)),
            Err(SecretNameError::TooLong(_))
        ));
    }

    #[test]
    fn values_never_print() {
        let v = value("hunter2-the-password");
        assert_eq!(format!("{v:?}"), "SecretValue(<redacted>)");
        let mut secrets = Secrets::new();
        secrets.insert(name("pw"), v.clone());
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(v.expose(), "hunter2-the-password");
        assert_eq!(
            SecretValue::new(String::new()).unwrap_err(),
            SecretValueError::Empty
        );
        assert!(matches!(
            SecretValue::new("x".repeat(MAX_SECRET_VALUE_BYTES + 1)),
            Err(SecretValueError::TooLarge(_))
        ));
    }

    #[test]
    fn sources() {
        let env = |var: &str| (var == "SET").then(|| OsString::from("from-env\n"));
        let got = SecretSource::Env("SET".into())
            .load_with(&env)
            .expect("set");
        // An environment variable's value is taken as it is.
        assert_eq!(got.expose(), "from-env\n");
        let err = SecretSource::Env("UNSET".into())
            .load_with(&env)
            .unwrap_err();
        assert!(matches!(err, SecretSourceError::EnvMissing(ref v) if v == "UNSET"));
        assert_eq!(err.to_string(), "environment variable UNSET is not set");

        let dir = std::env::temp_dir().join(format!("plugbus-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("write");
            SecretSource::File(path)
        };
        let load = |source: SecretSource| source.load_with(&env);
        assert_eq!(load(file("a", b"s3cr3t\n")).expect("ok").expose(), "s3cr3t");
        assert_eq!(
            load(file("b", b"s3cr3t\r\n")).expect("ok").expose(),
            "s3cr3t"
        );
        // Only one trailing newline is dropped.
        assert_eq!(load(file("c", b"two\n\n")).expect("ok").expose(), "two\n");
        for (bytes, expected) in [
            (&b""[..], SecretValueError::Empty),
            (&b"\n"[..], SecretValueError::Empty),
            (&b"\xff\xfe"[..], SecretValueError::NotUtf8),
        ] {
            match load(file("bad", bytes)) {
                Err(SecretSourceError::Value { error, .. }) => assert_eq!(error, expected),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let big = vec![b'x'; MAX_SECRET_VALUE_BYTES + 10];
        assert!(matches!(
            load(file("big", &big)),
            Err(SecretSourceError::Value {
                error: SecretValueError::TooLarge(_),
                ..
            })
        ));
        let max = vec![b'x'; MAX_SECRET_VALUE_BYTES];
        let mut max_nl = max.clone();
        max_nl.push(b'\n');
        assert!(load(file("max", &max_nl)).is_ok());
        let err = load(SecretSource::File(dir.join("missing"))).unwrap_err();
        assert!(matches!(err, SecretSourceError::Read { .. }), "{err:?}");
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    #[test]
    fn scrubbing() {
        let secrets: Secrets = [
            (name("token"), value("tok-123456")),
            (name("long"), value("tok-123456-and-more")),
            (name("short"), value("abc")),
            (
                name("pem"),
                value("-----BEGIN-----\nAAAABBBB\nCC\n-----END-----"),
            ),
        ]
        .into_iter()
        .collect();
        let r = Redactor::new(secrets.iter());
        assert!(!r.is_empty());
        assert!(matches!(r.scrub("nothing here"), Cow::Borrowed(_)));
        assert_eq!(
            r.scrub("a tok-123456 b tok-123456-and-more c tok-123456"),
            "a [secret:token] b [secret:long] c [secret:token]"
        );
        // Values under 4 bytes are left: they would match ordinary text.
        assert_eq!(r.scrub("abc abcd"), "abc abcd");
        // A value of several lines, whole or line by line.
        assert_eq!(
            r.scrub("key=-----BEGIN-----\nAAAABBBB\nCC\n-----END-----;"),
            "key=[secret:pem];"
        );
        assert_eq!(r.scrub("AAAABBBB"), "[secret:pem]");
        assert_eq!(r.scrub("CC"), "CC");
        let mut s = String::from("x tok-123456");
        assert!(r.scrub_in_place(&mut s));
        assert_eq!(s, "x [secret:token]");
        assert!(!r.scrub_in_place(&mut s));
        assert!(Redactor::default().is_empty());
        // A text cut in the middle of a value loses the value's start too.
        assert_eq!(r.scrub_cut("cut at tok-12"), "cut at [secret:long]");
        assert_eq!(r.scrub_cut("whole tok-123456"), "whole [secret:token]");
        assert_eq!(r.scrub_cut("ends in tok"), "ends in tok");
        assert!(matches!(r.scrub_cut("nothing"), Cow::Borrowed(_)));
    }
}
