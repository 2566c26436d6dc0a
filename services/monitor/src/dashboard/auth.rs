//! Who may see the dashboard: requests whose `Host` is a loopback name or address (a page on
//! another site that rebinds its DNS name to 127.0.0.1 still sends its own name), with the
//! admin credential: `Authorization: Bearer <admin token>`, or the session cookie that
//! `/login?token=<admin token>` sets (a browser's `EventSource` cannot set headers).
//!
//! The cookie holds a digest of the admin token, never the token: it is valid until the node
//! restarts (a new token), across restarts of the monitor.

use std::net::IpAddr;

use hyper::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "p2pos_dashboard";

/// The credentials a request may present.
#[derive(Clone)]
pub(crate) struct Credentials {
    token: Vec<u8>,
    session: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials of the admin token `token`.
    pub(crate) fn new(token: &str) -> Self {
        let digest = Sha256::new()
            .chain_update(b"p2pos dashboard session\0")
            .chain_update(token.as_bytes())
            .finalize();
        Self {
            token: token.as_bytes().to_vec(),
            session: data_encoding::HEXLOWER.encode(&digest),
        }
    }

    /// Whether `token` is the admin token (in constant time).
    pub(crate) fn is_token(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), &self.token)
    }

    /// The `Set-Cookie` value that logs a browser in.
    pub(crate) fn set_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            self.session
        )
    }

    /// Whether `headers` carry the admin token as a bearer token, or the session cookie.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|token| self.is_token(token.trim()));
        bearer || self.has_session(headers)
    }

    fn has_session(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == COOKIE && constant_time_eq(value.as_bytes(), self.session.as_bytes())
            })
    }
}

/// Whether a `Host` header names this machine: `localhost` (or a name under `.localhost`), or
/// a loopback address, with or without a port. A missing `Host` is refused too.
pub(crate) fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1] or [::1]:port
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The value of `key` in a query string (`a=1&token=...`), as it is (admin tokens are hex).
pub(crate) fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:7070",
            "[::1]",
            "127.1.2.3:80",
        ] {
            assert!(is_loopback_host(&headers(&[(header::HOST, ok)])), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "localhost.evil.example",
            "10.0.0.1:7070",
            "[::2]:7070",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(&headers(&[(header::HOST, bad)])), "{bad}");
        }
        assert!(!is_loopback_host(&HeaderMap::new()), "no Host");
    }

    #[test]
    fn the_token_or_the_session_cookie_admits() {
        let creds = Credentials::new("abc123");
        assert!(creds.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc123")])));
        assert!(!creds.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc124")])));
        assert!(!creds.admits(&headers(&[(header::AUTHORIZATION, "abc123")])));
        assert!(!creds.admits(&HeaderMap::new()));
        let cookie = creds.set_cookie();
        let pair = cookie.split(';').next().expect("name=value");
        assert!(!pair.contains("abc123"), "the cookie is not the token");
        assert!(creds.admits(&headers(&[(header::COOKIE, &format!("a=b; {pair}"))])));
        assert!(!creds.admits(&headers(&[(header::COOKIE, "p2pos_dashboard=abc123")])));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("token=ab&x=1", "token"), Some("ab"));
        assert_eq!(query_value("x=1&token=", "token"), Some(""));
        assert_eq!(query_value("tokens=1", "token"), None);
    }
}
