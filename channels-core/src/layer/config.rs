//! Layer settings shared by every backend, and the URL form they are written in.

use std::fmt;
use std::time::Duration;

/// A layer URL or setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid channel layer configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The settings every layer understands.
///
/// The defaults are Django's (`expiry` 60 s, `group_expiry` 86,400 s) except `capacity`:
/// Django's 100 drops messages silently as soon as a burst outruns a consumer (twenty chat users
/// sending ten messages at once is enough), so ours is 1,000. A queued message costs a pointer,
/// not a copy, so the larger default costs memory only while a consumer is behind.
///
/// ```
/// use channels_core::layer::LayerConfig;
/// let config = LayerConfig::default().capacity(500).channel_capacity("http.response*", 1000);
/// assert_eq!(config.capacity_for("http.response!x"), 1000);
/// assert_eq!(config.capacity_for("specific.a!b"), 500);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LayerConfig {
    /// Messages a channel holds before `send` fails with `ChannelFull` (default 1,000).
    pub capacity: usize,
    /// Per-channel capacities as `(glob, capacity)`; the first matching glob wins.
    pub channel_capacity: Vec<(String, usize)>,
    /// How long an undelivered message lives (default 60 s).
    pub expiry: Duration,
    /// How long a group membership lives after its last `group_add` (default 86,400 s).
    pub group_expiry: Duration,
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            channel_capacity: Vec::new(),
            expiry: Duration::from_secs(60),
            group_expiry: Duration::from_secs(86_400),
        }
    }
}

impl LayerConfig {
    /// Sets the default per-channel capacity.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Adds a capacity for channels whose name matches `glob` (`*`, `?`, `[abc]`, `[!abc]`).
    pub fn channel_capacity(mut self, glob: impl Into<String>, capacity: usize) -> Self {
        self.channel_capacity.push((glob.into(), capacity));
        self
    }

    /// Sets the message expiry.
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// Sets the group membership expiry.
    pub fn group_expiry(mut self, group_expiry: Duration) -> Self {
        self.group_expiry = group_expiry;
        self
    }

    /// The capacity that applies to `channel` (its full name, local part included).
    ///
    /// Layers ask once per member on every group send: inlined, and without patterns a field
    /// read.
    #[inline]
    pub fn capacity_for(&self, channel: &str) -> usize {
        if self.channel_capacity.is_empty() {
            return self.capacity;
        }
        self.channel_capacity
            .iter()
            .find(|(glob, _)| glob_matches(glob.as_bytes(), channel.as_bytes()))
            .map_or(self.capacity, |&(_, capacity)| capacity)
    }

    /// Reads `capacity`, `expiry`, `group_expiry` (seconds) and `channel_capacity`
    /// (`glob:n`, repeatable) from a URL's parameters, removing the ones it uses.
    pub fn take_from(url: &mut LayerUrl) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let mut rest = Vec::new();
        for (key, value) in url.params.drain(..) {
            match key.as_str() {
                "capacity" => config.capacity = parse_number(&key, &value)?,
                "expiry" => config.expiry = Duration::from_secs(parse_number(&key, &value)?),
                "group_expiry" => config.group_expiry = Duration::from_secs(parse_number(&key, &value)?),
                "channel_capacity" => {
                    let (glob, n) = value
                        .rsplit_once(':')
                        .ok_or_else(|| ConfigError(format!("channel_capacity {value:?} is not GLOB:N")))?;
                    config.channel_capacity.push((glob.to_owned(), parse_number(&key, n)?));
                }
                _ => rest.push((key, value)),
            }
        }
        url.params = rest;
        if config.capacity == 0 {
            return Err(ConfigError("capacity must be at least 1".into()));
        }
        if config.expiry.is_zero() || config.group_expiry.is_zero() {
            return Err(ConfigError("expiry and group_expiry must be at least 1 second".into()));
        }
        Ok(config)
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError(format!("{key}={value:?} is not a whole number")))
}

/// Shell-style glob match (Python's `fnmatch` without case folding).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|i| glob_matches(&pattern[1..], &text[i..])),
        Some(b'?') => !text.is_empty() && glob_matches(&pattern[1..], &text[1..]),
        Some(b'[') => match (pattern.iter().position(|&b| b == b']'), text.first()) {
            (Some(end), Some(&c)) if end > 1 => {
                let (negate, set) = match pattern[1] {
                    b'!' => (true, &pattern[2..end]),
                    _ => (false, &pattern[1..end]),
                };
                set.contains(&c) != negate && glob_matches(&pattern[end + 1..], &text[1..])
            }
            (Some(_), _) => false,
            (None, _) => text.first() == Some(&b'[') && glob_matches(&pattern[1..], &text[1..]),
        },
        Some(&p) => text.first() == Some(&p) && glob_matches(&pattern[1..], &text[1..]),
    }
}

/// What a secret shows as in [`redact_url`]'s output.
const HIDDEN: &str = "***";

/// `url` fit for logs, errors and `Debug` output: the password of every host's
/// `user:password@` part shows as `***` (a `secret@` with no colon, a password to some clients,
/// is hidden whole), and so do the values of query parameters that hold secrets (any name
/// ending in `password`, and `symmetric_encryption_key`). Several URLs separated by `;` are
/// each redacted. A string that is not a URL comes back as it is, less anything before an `@`.
///
/// ```
/// use channels_core::layer::redact_url;
/// assert_eq!(redact_url("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(
///     redact_url("redis+sentinel://s1,s2/0?master_name=m&sentinel_password=pw"),
///     "redis+sentinel://s1,s2/0?master_name=m&sentinel_password=***",
/// );
/// assert_eq!(redact_url("memory://"), "memory://");
/// ```
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    if url.contains(';') {
        let parts: Vec<_> = split_urls(url).into_iter().map(redact_one_url).collect();
        if parts.iter().all(|p| matches!(p, std::borrow::Cow::Borrowed(_))) {
            return std::borrow::Cow::Borrowed(url);
        }
        return std::borrow::Cow::Owned(parts.join(";"));
    }
    redact_one_url(url)
}

fn redact_one_url(url: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL, but perhaps one mistyped: whatever stands before an `@` may be a password.
        return match url.rsplit_once('@') {
            Some((_, host)) => Cow::Owned(format!("{HIDDEN}@{host}")),
            None => Cow::Borrowed(url),
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let (before_query, query) = match after.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (after, None),
    };
    let hosts: Vec<String> = authority
        .split(',')
        .map(|host| match host.rsplit_once('@') {
            Some((user_info, host)) => match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
                None => format!("{HIDDEN}@{host}"),
            },
            None => host.to_owned(),
        })
        .collect();
    let query = query.map(|query| {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_param(&crate::scope::percent_decode(key, true)) => {
                    format!("{key}={HIDDEN}")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let redacted = match query {
        Some(query) => format!("{scheme}://{}{before_query}?{query}", hosts.join(",")),
        None => format!("{scheme}://{}{before_query}", hosts.join(",")),
    };
    if redacted == url { Cow::Borrowed(url) } else { Cow::Owned(redacted) }
}

/// `url` cut at each `;` that starts another URL (`;scheme://`); a `;` elsewhere, say in a
/// password, stays where it is.
fn split_urls(url: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in url.match_indices(';') {
        let next = url[i + 1..].trim_start();
        let scheme_len = next.find("://").unwrap_or(0);
        let is_scheme = scheme_len > 0
            && next.as_bytes()[0].is_ascii_alphabetic()
            && next[..scheme_len].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if is_scheme {
            parts.push(url[start..i].trim());
            start = i + 1;
        }
    }
    parts.push(url[start..].trim());
    parts
}

/// Query parameters whose values are secrets.
fn is_secret_param(key: &str) -> bool {
    key.ends_with("password") || key == "symmetric_encryption_key"
}

/// A parsed layer URL: `scheme://host1,host2/path?key=value&...`.
///
/// ```
/// use channels_core::layer::LayerUrl;
/// let url = LayerUrl::parse("redis://a:6379,b:6380/0?prefix=asgi&capacity=100").unwrap();
/// assert_eq!(url.scheme, "redis");
/// assert_eq!(url.hosts, ["a:6379", "b:6380"]);
/// assert_eq!(url.path, "/0");
/// assert_eq!(url.params[0], ("prefix".to_string(), "asgi".to_string()));
/// ```
///
/// Its `Debug` output hides passwords and secret parameters, as [`redact_url`] does.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerUrl {
    /// `memory`, `redis`, `redis+pubsub`, ...
    pub scheme: String,
    /// The comma-separated hosts of the authority part, in order.
    pub hosts: Vec<String>,
    /// Everything between the authority and `?` (empty or starting with `/`).
    pub path: String,
    /// The query parameters, percent-decoded, in order.
    pub params: Vec<(String, String)>,
    /// Further URLs of the same scheme written after this one, separated by `;`
    /// (`redis+sentinel://s1,s2/0?master_name=a;redis+sentinel://t1,t2/0?master_name=b`): the
    /// shards of a layer whose shards differ in more than their host. A backend that does not
    /// take them refuses them in [`reject_unknown_params`](Self::reject_unknown_params).
    pub also: Vec<LayerUrl>,
}

impl LayerUrl {
    /// Parses a layer URL, or several of one scheme separated by `;` (see [`also`](Self::also)).
    ///
    /// ```
    /// use channels_core::layer::LayerUrl;
    /// let url = LayerUrl::parse("redis+sentinel://s1/0?master_name=a;redis+sentinel://t1/0?master_name=b").unwrap();
    /// assert_eq!(url.hosts, ["s1"]);
    /// assert_eq!(url.also[0].hosts, ["t1"]);
    /// assert!(LayerUrl::parse("redis://a;memory://").is_err(), "one scheme");
    /// ```
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let mut parts = split_urls(url).into_iter();
        let mut first = Self::parse_one(parts.next().unwrap_or(url))?;
        for part in parts {
            let next = Self::parse_one(part)?;
            if next.scheme != first.scheme {
                return Err(ConfigError(format!(
                    "the `;`-separated URLs must have one scheme, got {}:// and {}://",
                    first.scheme, next.scheme
                )));
            }
            first.also.push(next);
        }
        Ok(first)
    }

    fn parse_one(url: &str) -> Result<Self, ConfigError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            ConfigError(format!("{:?} is not a URL like memory:// or redis://host:6379", redact_url(url)))
        })?;
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
            return Err(ConfigError(format!("{:?} has an invalid scheme", redact_url(url))));
        }
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let hosts = authority.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        let params = crate::scope::parse_query(query);
        Ok(Self { scheme: scheme.to_ascii_lowercase(), hosts, path: path.to_owned(), params, also: Vec::new() })
    }

    /// The URL again, in its written form, with secrets hidden as [`redact_url`] does.
    pub fn redacted(&self) -> String {
        let mut url = format!("{}://{}{}", self.scheme, self.hosts.join(","), self.path);
        for (i, (key, value)) in self.params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            url.push_str(if is_secret_param(key) { HIDDEN } else { value });
        }
        let mut shown = redact_one_url(&url).into_owned();
        for next in &self.also {
            shown.push(';');
            shown.push_str(&next.redacted());
        }
        shown
    }

    /// Fails when parameters are left that no part of the layer understood, or when further
    /// `;`-separated URLs are left that the backend did not take.
    pub fn reject_unknown_params(&self) -> Result<(), ConfigError> {
        if let Some((key, _)) = self.params.first() {
            return Err(ConfigError(format!("unknown parameter {key:?} for {}://", self.scheme)));
        }
        if self.also.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(format!("{}:// takes one URL, not several separated by `;`", self.scheme)))
        }
    }
}

impl fmt::Debug for LayerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LayerUrl").field(&self.redacted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_show_no_password_or_secret_parameter() {
        for (url, shown) in [
            ("redis://u:p@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:p@h", "redis://:***@h"),
            ("redis://p@h/0", "redis://***@h/0"),
            ("rediss://u:p%40x@h?ssl_cert_reqs=none", "rediss://u:***@h?ssl_cert_reqs=none"),
            ("redis://:a@h1,:b@h2/0", "redis://:***@h1,:***@h2/0"),
            ("redis://h:1/0", "redis://h:1/0"),
            ("redis://h/0?next=a@b", "redis://h/0?next=a@b"),
            (
                "redis+sentinel://s1/0?sentinel_password=x&master_name=m",
                "redis+sentinel://s1/0?sentinel_password=***&master_name=m",
            ),
            ("redis://h?symmetric_encryption_key=k", "redis://h?symmetric_encryption_key=***"),
            ("redis://:a@h1;redis://:b@h2", "redis://:***@h1;redis://:***@h2"),
            ("redis://:a;b@h1;redis://h2", "redis://:***@h1;redis://h2"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_parsed_url_debugs_without_its_secrets() {
        let url = LayerUrl::parse("redis://alice:hunter2@h/0?sentinel_password=s3cret&prefix=x").expect("url");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice") && shown.contains("prefix=x"), "{shown}");
        let err = LayerUrl::parse(":hunter2@h").expect_err("no scheme").to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_matches(b"http.response*", b"http.response!abc"));
        assert!(glob_matches(b"a?c", b"abc"));
        assert!(!glob_matches(b"a?c", b"ac"));
        assert!(glob_matches(b"[ab]x", b"bx"));
        assert!(!glob_matches(b"[!ab]x", b"bx"));
        assert!(glob_matches(b"*", b""));
        assert!(!glob_matches(b"abc", b"abcd"));
        assert!(glob_matches(b"[", b"["));
    }

    #[test]
    fn first_matching_capacity_wins() {
        let c = LayerConfig::default().channel_capacity("a*", 1).channel_capacity("ab*", 2);
        assert_eq!(c.capacity_for("abc"), 1);
        assert_eq!(c.capacity_for("zzz"), 1000);
    }

    #[test]
    fn url_parameters_fill_the_config() {
        let mut url =
            LayerUrl::parse("memory://?capacity=5&expiry=2&group_expiry=3&channel_capacity=x*:9&other=1").unwrap();
        let c = LayerConfig::take_from(&mut url).unwrap();
        assert_eq!(c.capacity, 5);
        assert_eq!(c.expiry, Duration::from_secs(2));
        assert_eq!(c.group_expiry, Duration::from_secs(3));
        assert_eq!(c.capacity_for("xy"), 9);
        assert_eq!(url.params, vec![("other".to_string(), "1".to_string())]);
        assert!(url.reject_unknown_params().is_err());
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for bad in ["memory", "://x", "mem ory://", ""] {
            assert!(LayerUrl::parse(bad).is_err(), "{bad}");
        }
        for bad in
            ["memory://?capacity=-1", "memory://?capacity=0", "memory://?expiry=x", "memory://?channel_capacity=x"]
        {
            let mut url = LayerUrl::parse(bad).unwrap();
            assert!(LayerConfig::take_from(&mut url).is_err(), "{bad}");
        }
    }
}
