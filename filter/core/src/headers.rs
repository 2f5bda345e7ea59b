//! Header policy: which header names are acceptable, and how a key is read
//! from a `cookie` header. Pure string work, done without allocating.

/// Headers the filter must never own or key on: the ones Envoy and HTTP give
/// a meaning of their own.
const RESERVED: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "x-request-id",
    "x-envoy-original-path",
];

/// Why a header name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderNameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; at most 128 are allowed")]
    TooLong(usize),
    #[error("`{0}` is a pseudo-header; use a regular header name")]
    Pseudo(String),
    #[error("`{name}` contains {ch:?}, which is not allowed in an HTTP header name")]
    BadChar { name: String, ch: char },
    #[error("`{0}` is reserved by HTTP or Envoy")]
    Reserved(String),
}

/// Validates an HTTP header name (RFC 9110 token) and returns it lowercased,
/// the form Envoy stores and HTTP/2 requires.
pub fn header_name(name: &str) -> Result<String, HeaderNameError> {
    if name.is_empty() {
        return Err(HeaderNameError::Empty);
    }
    if name.len() > 128 {
        return Err(HeaderNameError::TooLong(name.len()));
    }
    if name.starts_with(':') {
        return Err(HeaderNameError::Pseudo(name.to_string()));
    }
    if let Some(ch) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(HeaderNameError::BadChar { name: name.to_string(), ch });
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(HeaderNameError::Reserved(lower));
    }
    Ok(lower)
}

/// Validates a cookie name (also an RFC 9110 token).
pub fn cookie_name(name: &str) -> Result<String, HeaderNameError> {
    if name.is_empty() {
        return Err(HeaderNameError::Empty);
    }
    if name.len() > 128 {
        return Err(HeaderNameError::TooLong(name.len()));
    }
    if let Some(ch) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(HeaderNameError::BadChar { name: name.to_string(), ch });
    }
    Ok(name.to_string())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The value of cookie `name` in a `cookie` request header
/// (`a=1; b=2`), without surrounding quotes. Empty values count as absent.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        if k != name {
            return None;
        }
        let v = match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        (!v.is_empty()).then_some(v)
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_lowercased_tokens() {
        assert_eq!(header_name("X-User-Id").unwrap(), "x-user-id");
        assert_eq!(header_name(""), Err(HeaderNameError::Empty));
        assert!(matches!(header_name(":path"), Err(HeaderNameError::Pseudo(_))));
        assert!(matches!(header_name("x user"), Err(HeaderNameError::BadChar { ch: ' ', .. })));
        assert!(matches!(header_name("x-ü"), Err(HeaderNameError::BadChar { .. })));
        assert!(matches!(header_name("Host"), Err(HeaderNameError::Reserved(_))));
        assert!(matches!(header_name(&"x".repeat(129)), Err(HeaderNameError::TooLong(129))));
    }

    #[test]
    fn cookie_value_finds_the_named_cookie() {
        let h = b"theme=dark; uid=abc123;  other=x";
        assert_eq!(cookie_value(h, b"uid"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(h, b"theme"), Some(&b"dark"[..]));
        assert_eq!(cookie_value(h, b"other"), Some(&b"x"[..]));
        assert_eq!(cookie_value(h, b"missing"), None);
        assert_eq!(cookie_value(h, b"ui"), None);
    }

    #[test]
    fn cookie_value_handles_odd_input() {
        assert_eq!(cookie_value(b"uid=\"q\"", b"uid"), Some(&b"q"[..]));
        assert_eq!(cookie_value(b"uid=", b"uid"), None);
        assert_eq!(cookie_value(b"uid=\"\"", b"uid"), None);
        assert_eq!(cookie_value(b"uid", b"uid"), None);
        assert_eq!(cookie_value(b";;;", b"uid"), None);
        assert_eq!(cookie_value(b"", b"uid"), None);
        assert_eq!(cookie_value(b"a=1;uid=2=3", b"uid"), Some(&b"2=3"[..]));
        assert_eq!(cookie_value(b"uid=\"", b"uid"), Some(&b"\""[..]));
    }
}
