//! Who may read the dashboard's data: a request with `Authorization: Bearer <credential>`,
//! the credential being the node's admin token (for scripts) or a session from a one-time
//! login code ([`super::logins`]). No cookie is read or set: cookies are not kept apart by
//! port, so any other server on 127.0.0.1 would get them.
//!
//! The loopback `Host` check (DNS rebinding) is the shared loop's, in [`crate::server`].

use hyper::{HeaderMap, header};

use super::logins::{Logins, constant_time_eq};

/// The credentials a request may present.
#[derive(Clone)]
pub(crate) struct Credentials {
    token: Vec<u8>,
    logins: Logins,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// The admin token `token` and the sessions of `logins`.
    pub(crate) fn new(token: &str, logins: Logins) -> Self {
        Self {
            token: token.as_bytes().to_vec(),
            logins,
        }
    }

    /// Spends the login code `code`: a new session, or `None`.
    pub(crate) fn log_in(&self, code: &str) -> Option<String> {
        self.logins.redeem(code)
    }

    /// Whether `headers` carry the admin token or a live session as a bearer token.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .any(|credential| {
                constant_time_eq(credential.as_bytes(), &self.token)
                    || self.logins.admits(credential)
            })
    }
}

/// The value of `key` in a query string (`a=1&code=...`), as it is (codes are hex).
pub(crate) fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
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
    fn the_token_or_a_session_as_a_bearer_admits() {
        let logins = Logins::new();
        let creds = Credentials::new("abc123", logins.clone());
        assert!(creds.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc123")])));
        assert!(!creds.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc124")])));
        assert!(!creds.admits(&headers(&[(header::AUTHORIZATION, "abc123")])));
        assert!(!creds.admits(&HeaderMap::new()));
        let session = creds.log_in(&logins.new_code()).expect("a session");
        let bearer = format!("Bearer {session}");
        assert!(creds.admits(&headers(&[(header::AUTHORIZATION, &bearer)])));
        let cookie = format!("p2pos_dashboard={session}");
        assert!(
            !creds.admits(&headers(&[(header::COOKIE, &cookie)])),
            "a session only as a header"
        );
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("code=ab&x=1", "code"), Some("ab"));
        assert_eq!(query_value("x=1&code=", "code"), Some(""));
        assert_eq!(query_value("codes=1", "code"), None);
    }
}
