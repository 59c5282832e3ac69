//! Authentication of override requests, the same for HTTP and the control topic:
//!
//! - a bearer token (`Authorization: Bearer <token>`), compared in constant time; or
//! - an HMAC-SHA256 signature over `"{timestamp}.{body}"` (`X-Driftgate-Timestamp`: Unix
//!   seconds; `X-Driftgate-Signature: sha256=<hex>`), refused when the timestamp is older
//!   (or newer) than `max_age`, so a captured request cannot be replayed later.
//!
//! With neither a token nor a secret configured, overrides cannot be submitted at all.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// Neither a token nor a signature was presented.
    #[error("unauthenticated: send `Authorization: Bearer <token>` or an HMAC signature")]
    Missing,
    /// The token does not match.
    #[error("forged: the bearer token is wrong")]
    BadToken,
    /// The signature does not match the body.
    #[error("forged: the signature does not match the body")]
    BadSignature,
    /// The signature is too old (or from the future), or its timestamp unreadable.
    #[error("expired: the signature timestamp is {0}")]
    Expired(String),
    /// No credentials are configured: overrides are disabled.
    #[error("overrides are disabled: configure `http.override_token` or `http.override_hmac_secret`")]
    Disabled,
}

impl AuthError {
    /// A short code for metrics and history.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::BadToken | AuthError::BadSignature => "forged",
            AuthError::Expired(_) => "expired_signature",
            AuthError::Disabled => "disabled",
        }
    }
}

/// What a request presents.
#[derive(Debug, Default, Clone)]
pub struct Presented<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The signature header (`sha256=<hex>`).
    pub signature: Option<&'a str>,
    /// The timestamp header (Unix seconds).
    pub timestamp: Option<&'a str>,
}

/// The configured credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    secret: Option<Vec<u8>>,
    max_age_secs: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Credentials {
    /// Empty strings count as not configured.
    pub fn new(token: Option<&str>, secret: Option<&str>, max_age_secs: i64) -> Credentials {
        let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        Credentials { token: nonempty(token), secret: nonempty(secret).map(String::into_bytes), max_age_secs }
    }

    /// Checks a request; `now_secs` is the wall clock.
    pub fn check(&self, p: &Presented<'_>, body: &[u8], now_secs: i64) -> Result<&'static str, AuthError> {
        if self.token.is_none() && self.secret.is_none() {
            return Err(AuthError::Disabled);
        }
        if let Some(sig) = p.signature {
            let Some(secret) = &self.secret else { return Err(AuthError::BadSignature) };
            let ts = p.timestamp.ok_or_else(|| AuthError::Expired("missing".into()))?;
            let t: i64 = ts.trim().parse().map_err(|_| AuthError::Expired(format!("unreadable ({ts:?})")))?;
            let expected = hex_decode(sig.trim().strip_prefix("sha256=").unwrap_or(sig.trim()))
                .ok_or(AuthError::BadSignature)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::BadSignature)?;
            mac.update(ts.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            // Constant-time comparison, inside `verify_slice`.
            mac.verify_slice(&expected).map_err(|_| AuthError::BadSignature)?;
            if (now_secs - t).abs() > self.max_age_secs {
                return Err(AuthError::Expired(format!(
                    "{} s from now (allowed {} s)",
                    t - now_secs,
                    self.max_age_secs
                )));
            }
            return Ok("hmac");
        }
        if let Some(h) = p.authorization {
            let Some(token) = &self.token else { return Err(AuthError::BadToken) };
            let given = h.trim().strip_prefix("Bearer ").unwrap_or("").trim();
            return if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                Ok("token")
            } else {
                Err(AuthError::BadToken)
            };
        }
        Err(AuthError::Missing)
    }
}

/// `sha256=<hex>` for a body (for clients and tests).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("sha256={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn creds() -> Credentials {
        Credentials::new(Some("t0ken"), Some("s3cret"), 300)
    }

    #[test]
    fn tokens_and_signatures() {
        let c = creds();
        let body = br#"{"x":1}"#;
        let bearer = Presented { authorization: Some("Bearer t0ken"), ..Default::default() };
        assert_eq!(c.check(&bearer, body, NOW), Ok("token"));
        let wrong = Presented { authorization: Some("Bearer t0kem"), ..Default::default() };
        assert_eq!(c.check(&wrong, body, NOW), Err(AuthError::BadToken));
        assert_eq!(c.check(&Presented::default(), body, NOW), Err(AuthError::Missing));

        let sig = sign("s3cret", NOW - 10, body);
        let ts = (NOW - 10).to_string();
        let signed = Presented { signature: Some(&sig), timestamp: Some(&ts), ..Default::default() };
        assert_eq!(c.check(&signed, body, NOW), Ok("hmac"));
        // Another body, another key, or an old timestamp.
        assert_eq!(c.check(&signed, br#"{"x":2}"#, NOW), Err(AuthError::BadSignature));
        let forged = sign("guess", NOW - 10, body);
        assert_eq!(
            c.check(
                &Presented { signature: Some(&forged), timestamp: Some(&ts), ..Default::default() },
                body,
                NOW
            ),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(c.check(&signed, body, NOW + 600), Err(AuthError::Expired(_))));
        assert!(matches!(
            c.check(&Presented { signature: Some(&sig), ..Default::default() }, body, NOW),
            Err(AuthError::Expired(_))
        ));
        assert_eq!(
            c.check(
                &Presented { signature: Some("sha256=zz"), timestamp: Some(&ts), ..Default::default() },
                body,
                NOW
            ),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn nothing_configured_disables_overrides() {
        let c = Credentials::new(Some(" "), None, 300);
        let bearer = Presented { authorization: Some("Bearer "), ..Default::default() };
        assert_eq!(c.check(&bearer, b"", NOW), Err(AuthError::Disabled));
        assert_eq!(AuthError::Disabled.code(), "disabled");
    }
}
