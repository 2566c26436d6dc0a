//! The dashboard's logins: one-time login codes (`Monitor.DashboardLogin` makes them, `GET
//! /login?code=` spends them) and the sessions they become. Both are random (256 bits from the
//! operating system), held only in memory, and bounded: at most [`MAX_CODES`] codes, each
//! valid [`CODE_TTL`] and spent once; at most [`MAX_SESSIONS`] sessions, each ending after
//! [`SESSION_IDLE`] unused or [`SESSION_MAX`] after the login. Past a bound, the oldest goes.
//!
//! The set is made with the monitor's child spec, so logins outlive a restart of the monitor
//! (not of the node). Codes and sessions are compared in constant time.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use p2pos_kernel::{ErrorCode, ServiceError};
use p2pos_proto::monitor::v1::DashboardLoginReply;
use rand::RngCore;

/// Most login codes not yet spent; a new one drops the oldest.
pub const MAX_CODES: usize = 16;
/// How long a login code is valid.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Most sessions at once; a new one ends the oldest.
pub const MAX_SESSIONS: usize = 32;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after its login, used or not.
pub const SESSION_MAX: Duration = Duration::from_secs(24 * 3600);

/// The node's dashboard logins; cheap to clone (one shared set).
#[derive(Clone, Default)]
pub struct Logins {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Oldest first.
    codes: VecDeque<Code>,
    /// Oldest login first.
    sessions: VecDeque<Session>,
}

struct Code {
    secret: String,
    expires: Instant,
}

struct Session {
    secret: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.created) < SESSION_MAX
            && now.duration_since(self.last_used) < SESSION_IDLE
    }
}

impl Logins {
    /// A new, empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new login code, valid [`CODE_TTL`] from now.
    pub fn new_code(&self) -> String {
        self.new_code_at(Instant::now())
    }

    /// Spends `code`: the new session's secret, or `None` for a code that is unknown, spent or
    /// expired.
    pub(crate) fn redeem(&self, code: &str) -> Option<String> {
        self.redeem_at(code, Instant::now())
    }

    /// Whether `session` is a live session (and marks it used).
    pub(crate) fn admits(&self, session: &str) -> bool {
        self.admits_at(session, Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the set is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_code_at(&self, now: Instant) -> String {
        let secret = random_secret();
        let mut inner = self.lock();
        inner.codes.retain(|c| c.expires > now);
        while inner.codes.len() >= MAX_CODES {
            inner.codes.pop_front();
        }
        inner.codes.push_back(Code {
            secret: secret.clone(),
            expires: now + CODE_TTL,
        });
        secret
    }

    fn redeem_at(&self, code: &str, now: Instant) -> Option<String> {
        let mut inner = self.lock();
        inner.codes.retain(|c| c.expires > now);
        let found = inner
            .codes
            .iter()
            .position(|c| constant_time_eq(c.secret.as_bytes(), code.as_bytes()))?;
        inner.codes.remove(found);
        let secret = random_secret();
        inner.sessions.retain(|s| s.live(now));
        while inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.pop_front();
        }
        inner.sessions.push_back(Session {
            secret: secret.clone(),
            created: now,
            last_used: now,
        });
        Some(secret)
    }

    fn admits_at(&self, session: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.sessions.retain(|s| s.live(now));
        match inner
            .sessions
            .iter_mut()
            .find(|s| constant_time_eq(s.secret.as_bytes(), session.as_bytes()))
        {
            Some(found) => {
                found.last_used = now;
                true
            }
            None => false,
        }
    }
}

/// `Monitor.DashboardLogin`'s answer: a new code's login link on the dashboard at `url`
/// (`http://127.0.0.1:PORT/`, empty while the dashboard is off).
pub fn login_reply(logins: &Logins, url: &str) -> Result<DashboardLoginReply, ServiceError> {
    if url.is_empty() {
        return Err(ServiceError::new(
            ErrorCode::FailedPrecondition,
            "the node's dashboard is off: start it with `p2posd --dashboard 127.0.0.1:PORT` (or \
             `dashboard = \"127.0.0.1:PORT\"` under [monitor] in p2posd.toml)",
        ));
    }
    let base = url.strip_suffix('/').unwrap_or(url);
    Ok(DashboardLoginReply {
        login_url: format!("{base}/login?code={}", logins.new_code()),
        expires_in_secs: CODE_TTL.as_secs() as u32,
    })
}

/// 256 random bits from the operating system, as 64 hex digits.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_spent_once_and_becomes_a_session() {
        let logins = Logins::new();
        let now = Instant::now();
        let code = logins.new_code_at(now);
        assert_eq!(code.len(), 64);
        let session = logins.redeem_at(&code, now).expect("a session");
        assert_ne!(session, code);
        assert!(logins.admits_at(&session, now));
        assert!(!logins.admits_at(&code, now), "a code is not a session");
        assert_eq!(logins.redeem_at(&code, now), None, "spent");
        assert_eq!(logins.redeem_at("", now), None);
        assert_eq!(logins.redeem_at(&"0".repeat(64), now), None);
    }

    #[test]
    fn a_code_expires_after_a_minute() {
        let logins = Logins::new();
        let now = Instant::now();
        let code = logins.new_code_at(now);
        assert_eq!(logins.redeem_at(&code, now + CODE_TTL), None);
        let code = logins.new_code_at(now);
        assert!(
            logins
                .redeem_at(&code, now + CODE_TTL - Duration::from_secs(1))
                .is_some()
        );
    }

    #[test]
    fn at_most_16_codes_the_oldest_dropped() {
        let logins = Logins::new();
        let now = Instant::now();
        let codes: Vec<String> = (0..MAX_CODES + 1)
            .map(|_| logins.new_code_at(now))
            .collect();
        assert_eq!(logins.lock().codes.len(), MAX_CODES);
        assert_eq!(logins.redeem_at(&codes[0], now), None, "the oldest went");
        assert!(logins.redeem_at(&codes[1], now).is_some());
        assert!(logins.redeem_at(&codes[MAX_CODES], now).is_some());
    }

    #[test]
    fn sessions_are_bounded_and_end_when_idle_or_old() {
        let logins = Logins::new();
        let now = Instant::now();
        let login = |at| {
            let code = logins.new_code_at(at);
            logins.redeem_at(&code, at).expect("a session")
        };
        let sessions: Vec<String> = (0..MAX_SESSIONS + 1).map(|_| login(now)).collect();
        assert_eq!(logins.lock().sessions.len(), MAX_SESSIONS);
        assert!(!logins.admits_at(&sessions[0], now), "the oldest ended");
        assert!(logins.admits_at(&sessions[MAX_SESSIONS], now));

        let idle = login(now);
        assert!(!logins.admits_at(&idle, now + SESSION_IDLE), "idle 12 h");

        let busy = login(now);
        let mut at = now;
        while at + SESSION_IDLE / 2 < now + SESSION_MAX {
            at += SESSION_IDLE / 2;
            assert!(logins.admits_at(&busy, at), "used every 6 h");
        }
        assert!(!logins.admits_at(&busy, now + SESSION_MAX), "24 h at most");
    }
}
