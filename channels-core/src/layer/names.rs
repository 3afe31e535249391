//! Django Channels' rules for channel and group names.

use std::fmt;

/// Names must be strictly shorter than this many characters (Django's `MAX_NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 100;

/// A channel or group name that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// `"channel"` or `"group"`.
    pub kind: &'static str,
    /// The rejected name (cut to 120 characters so that hostile input cannot flood a log).
    pub name: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} name {:?}: it must be shorter than {MAX_NAME_LENGTH} characters and contain only \
             ASCII letters, digits, hyphens, underscores or periods",
            self.kind, self.name
        )?;
        if self.kind == "channel" {
            f.write_str(" (optionally followed by one '!' and a local part of word characters)")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidName {}

fn is_base_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Python's `\w` on `str` (Unicode word characters) plus `-` and `.`.
fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn invalid(kind: &'static str, name: &str) -> InvalidName {
    InvalidName { kind, name: name.chars().take(120).collect() }
}

/// Checks a channel name: `^[a-zA-Z\d\-_.]+(![\w\-_.]*)?$`, fewer than 100 characters.
///
/// ```
/// use channels_core::layer::validate_channel_name;
/// assert!(validate_channel_name("specific.abc!def").is_ok());
/// assert!(validate_channel_name("bad name").is_err());
/// ```
pub fn validate_channel_name(name: &str) -> Result<(), InvalidName> {
    let (base, local) = match name.split_once('!') {
        Some((base, local)) => (base, Some(local)),
        None => (name, None),
    };
    let ok = name.chars().count() < MAX_NAME_LENGTH
        && !base.is_empty()
        && base.chars().all(is_base_char)
        && local.is_none_or(|l| l.chars().all(is_local_char));
    if ok { Ok(()) } else { Err(invalid("channel", name)) }
}

/// Checks a group name: `^[a-zA-Z\d\-_.]+$`, fewer than 100 characters.
pub fn validate_group_name(name: &str) -> Result<(), InvalidName> {
    // Byte by byte: every allowed character is ASCII, and no byte of a longer one passes.
    let base_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !name.is_empty() && name.len() < MAX_NAME_LENGTH && name.as_bytes().iter().all(base_byte) {
        Ok(())
    } else {
        Err(invalid("group", name))
    }
}

/// The part of a process-specific channel name up to and including `!`, or the whole name.
pub fn non_local_name(name: &str) -> &str {
    match name.find('!') {
        Some(i) => &name[..=i],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_django() {
        for ok in ["a", "abc.def-ghi_1", "abc!", "abc!é", "specific.x!y.z-1_2", "A!b"] {
            assert!(validate_channel_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "!abc", "a b", "a!b!c", "é", "a/b", "a!b c", "a\n"] {
            assert!(validate_channel_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_names_follow_django() {
        assert!(validate_group_name("chat_lobby.1-x").is_ok());
        for bad in ["", "a!b", "a b", "é", "a:b"] {
            assert!(validate_group_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_must_be_shorter_than_100() {
        assert!(validate_channel_name(&"a".repeat(99)).is_ok());
        assert!(validate_channel_name(&"a".repeat(100)).is_err());
        assert!(validate_group_name(&"a".repeat(99)).is_ok());
        assert!(validate_group_name(&"a".repeat(100)).is_err());
    }

    #[test]
    fn error_names_are_truncated() {
        let err = validate_group_name(&"é".repeat(10_000)).unwrap_err();
        assert_eq!(err.name.chars().count(), 120);
    }

    #[test]
    fn non_local_part() {
        assert_eq!(non_local_name("specific.x!abc"), "specific.x!");
        assert_eq!(non_local_name("worker"), "worker");
    }
}
