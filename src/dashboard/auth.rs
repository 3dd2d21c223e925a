//! Who may write: the `--token`, sign-in sessions, CSRF tokens and the origin
//! check. Holds the sessions in memory; touches nothing else.
//!
//! # Model
//! Reading needs nothing. Writing (rule create/disable/enable) needs a session:
//! `POST /login` with the token (compared in constant time) creates one and
//! sets the cookie `conscope_session` (HttpOnly, SameSite=Strict, Path=/, and
//! Secure when the browser came over HTTPS: see `routes::secure`) to a
//! random 256-bit id. Each session has its own random CSRF token, put into
//! every form and checked on every POST, and every POST must come from this
//! origin (`Origin`, or `Referer` when a browser sends no Origin). Without a
//! token the dashboard is read-only: sign-in is refused and so is every write.
//! Sessions live in this process (a restart signs everyone out), expire after
//! [`SESSION_TTL`], and are capped at [`MAX_SESSIONS`] (the oldest goes).
//! The token is never logged, echoed or put into a page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "conscope_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 1024;

/// Why a write was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this dashboard is read-only: it was started without --token (CONSCOPE_DASHBOARD_TOKEN)")]
    ReadOnly,
    #[error("sign in with the dashboard token first")]
    NoSession,
    #[error("the form has expired or did not come from this dashboard (bad CSRF token); reload the page and try again")]
    BadCsrf,
    #[error("cross-origin request refused: Origin or Referer must be this dashboard")]
    CrossOrigin,
    #[error("wrong token")]
    WrongToken,
}

/// A signed-in session, as a page needs it.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
}

struct Stored {
    csrf: String,
    created: Instant,
}

pub struct Auth {
    /// SHA-256 of the token: what is compared, so the comparison's time
    /// depends on neither the token's length nor its content.
    token_digest: Option<[u8; 32]>,
    sessions: Mutex<HashMap<String, Stored>>,
}

impl Auth {
    pub fn new(token: Option<&str>) -> Auth {
        Auth {
            token_digest: token.filter(|t| !t.is_empty()).map(digest),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether writes are possible at all.
    pub fn writable(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Checks `offered` against the token; returns a new session id and its
    /// CSRF token.
    pub fn sign_in(&self, offered: &str) -> Result<(String, Session), Refusal> {
        let Some(expected) = &self.token_digest else {
            return Err(Refusal::ReadOnly);
        };
        if !constant_time_eq(&digest(offered), expected) {
            return Err(Refusal::WrongToken);
        }
        let id = random_hex();
        let csrf = random_hex();
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.created) < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Stored {
                csrf: csrf.clone(),
                created: now,
            },
        );
        Ok((id, Session { csrf }))
    }

    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.lock().remove(&id);
        }
    }

    /// The session named by the request's cookie, when it is valid.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.token_digest.as_ref()?;
        let id = cookie(headers)?;
        let sessions = self.lock();
        // The map lookup hashes the id; ids are 256 random bits, so guessing one
        // through timing is not a concern, unlike the token and CSRF checks.
        let stored = sessions.get(&id)?;
        (stored.created.elapsed() < SESSION_TTL).then(|| Session {
            csrf: stored.csrf.clone(),
        })
    }

    /// Everything a write must pass: a token configured, this origin, a
    /// session, and that session's CSRF token in the form.
    pub fn authorize_write(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Refusal> {
        if !self.writable() {
            return Err(Refusal::ReadOnly);
        }
        check_origin(headers)?;
        let session = self.session(headers).ok_or(Refusal::NoSession)?;
        if !constant_time_eq(&digest(csrf), &digest(&session.csrf)) {
            return Err(Refusal::BadCsrf);
        }
        Ok(session)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        // A panic while holding the lock cannot leave the map half-updated in a
        // way that matters: every operation is one insert, remove or retain.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `Set-Cookie` value for a new session; `secure` keeps the browser from
/// ever sending it over plain HTTP.
pub fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session (a `Secure` cookie is only
/// replaced by another `Secure` one).
pub fn cleared_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A POST must name this dashboard as its origin: `Origin` (every current
/// browser sends it on a form POST) or else `Referer`, whose host must be the
/// `Host` the request was sent to. No header at all is refused too.
pub fn check_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::CrossOrigin)?;
    let source = headers
        .get(axum::http::header::ORIGIN)
        .or_else(|| headers.get(axum::http::header::REFERER))
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::CrossOrigin)?;
    let authority = source
        .strip_prefix("http://")
        .or_else(|| source.strip_prefix("https://"))
        .ok_or(Refusal::CrossOrigin)?;
    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(Refusal::CrossOrigin)
    }
}

/// The session id in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| value.to_owned())
        })
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal-length digests compared without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 256 bits from the operating system's generator, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::client::headers;
    use super::*;

    #[test]
    fn read_only_without_a_token() {
        for token in [None, Some("")] {
            let auth = Auth::new(token);
            assert!(!auth.writable());
            assert_eq!(auth.sign_in("").unwrap_err(), Refusal::ReadOnly);
            assert_eq!(
                auth.authorize_write(&HeaderMap::new(), "").unwrap_err(),
                Refusal::ReadOnly
            );
        }
    }

    #[test]
    fn a_write_needs_origin_session_and_csrf() {
        let auth = Auth::new(Some("s3cret"));
        assert_eq!(auth.sign_in("s3cre").unwrap_err(), Refusal::WrongToken);
        let (id, session) = auth.sign_in("s3cret").expect("sign in");
        let cookie = format!("other=1; {COOKIE}={id}");
        let good = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("cookie", &cookie),
        ]);
        assert!(auth.authorize_write(&good, &session.csrf).is_ok());
        assert_eq!(auth.authorize_write(&good, "x").unwrap_err(), Refusal::BadCsrf);
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
            ("cookie", &cookie),
        ]);
        assert_eq!(
            auth.authorize_write(&evil, &session.csrf).unwrap_err(),
            Refusal::CrossOrigin
        );
        let prefix = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080.evil"),
            ("cookie", &cookie),
        ]);
        assert_eq!(
            auth.authorize_write(&prefix, &session.csrf).unwrap_err(),
            Refusal::CrossOrigin
        );
        let referer = headers(&[
            ("host", "127.0.0.1:8080"),
            ("referer", "http://127.0.0.1:8080/rules?x"),
            ("cookie", &cookie),
        ]);
        assert!(auth.authorize_write(&referer, &session.csrf).is_ok());
        let none = headers(&[("host", "127.0.0.1:8080"), ("cookie", &cookie)]);
        assert_eq!(
            auth.authorize_write(&none, &session.csrf).unwrap_err(),
            Refusal::CrossOrigin
        );
        let stranger = headers(&[
            ("host", "h"),
            ("origin", "http://h"),
            ("cookie", &format!("{COOKIE}={}", "a".repeat(64))),
        ]);
        assert_eq!(
            auth.authorize_write(&stranger, &session.csrf).unwrap_err(),
            Refusal::NoSession
        );
        auth.sign_out(&good);
        assert_eq!(
            auth.authorize_write(&good, &session.csrf).unwrap_err(),
            Refusal::NoSession
        );
    }
}
