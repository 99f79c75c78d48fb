//! JWT verification (HS256) and, in dev mode, minting.
//!
//! `verify` is the one gate of every surface (REST, `/ws`, WHIP/WHEP): signature, `exp`, `nbf`
//! and `iat` (each with `LEEWAY_SECS` for clock skew), and the `sub` rule of `valid_user_id`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The claims Switchboard reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The room this token grants; `*` for any room, absent for none.
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default = "yes")]
    pub can_publish: bool,
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    #[serde(default)]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

/// Allowance for clock skew between the token's issuer and this server, in seconds: on `exp`,
/// `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 5;

/// User ids (`sub`): 1 to 128 bytes, no control characters (the store separates keys with
/// NUL; CR/LF would forge log lines).
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// The claims as decoded: `Claims` plus the times only `verify` looks at.
#[derive(Deserialize)]
struct Decoded {
    #[serde(flatten)]
    claims: Claims,
    /// Issued at, seconds since the Unix epoch (a JSON number, maybe fractional).
    #[serde(default)]
    iat: Option<f64>,
}

impl Claims {
    /// May this token enter `room`?
    pub fn grants_room(&self, room: &str) -> bool {
        self.admin || matches!(self.room.as_deref(), Some(r) if r == "*" || r == room)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("token sub must be 1 to 128 bytes without control characters")]
    BadSubject,
}

impl AuthError {
    /// Stable code for API and signaling errors.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::Missing
            | AuthError::Invalid
            | AuthError::NotYetValid
            | AuthError::IssuedInFuture
            | AuthError::BadSubject => "unauthorized",
        }
    }
}

/// Verifies (and in dev mode mints) tokens with one HS256 secret.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    dev_mode: bool,
}

impl Auth {
    pub fn new(secret: &[u8], dev_mode: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            dev_mode,
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let decoded = jsonwebtoken::decode::<Decoded>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid,
            })?
            .claims;
        if decoded
            .iat
            .is_some_and(|iat| !iat.is_finite() || iat > (unix_now() + LEEWAY_SECS) as f64)
        {
            return Err(AuthError::IssuedInFuture);
        }
        if !valid_user_id(&decoded.claims.sub) {
            return Err(AuthError::BadSubject);
        }
        Ok(decoded.claims)
    }

    /// Verifies the value of an `Authorization` header (`Bearer <jwt>`).
    pub fn verify_bearer(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Invalid)?;
        self.verify(token.trim())
    }

    pub fn mint(&self, claims: &Claims) -> String {
        // Encoding HS256 with a valid key cannot fail: the claims are plain serde structs.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 encoding of plain claims")
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random secret for dev mode, printed at start.
pub fn generate_secret() -> String {
    random_token(32)
}

/// `n` random bytes as lowercase hex.
pub fn random_token(n: usize) -> String {
    let mut out = String::with_capacity(n * 2);
    for _ in 0..n {
        out.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64, room: Option<&str>) -> Claims {
        Claims {
            sub: "u1".into(),
            name: "Ada".into(),
            exp,
            room: room.map(str::to_owned),
            can_publish: true,
            can_subscribe: true,
            admin: false,
        }
    }

    #[test]
    fn round_trip_and_room_grant() {
        let auth = Auth::new(b"secret", false);
        let token = auth.mint(&claims(unix_now() + 60, Some("a")));
        let c = auth.verify(&token).unwrap();
        assert!(c.grants_room("a"));
        assert!(!c.grants_room("b"));
        assert_eq!(auth.verify_bearer(Some(&format!("Bearer {token}"))), Ok(c));
    }

    #[test]
    fn rejects_expired_forged_and_garbage() {
        let auth = Auth::new(b"secret", false);
        let expired = auth.mint(&claims(unix_now() - 3600, Some("a")));
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let forged = Auth::new(b"other", false).mint(&claims(unix_now() + 60, Some("a")));
        assert_eq!(auth.verify(&forged), Err(AuthError::Invalid));
        assert_eq!(auth.verify("not.a.jwt"), Err(AuthError::Invalid));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert_eq!(
            auth.verify_bearer(Some("Basic abc")),
            Err(AuthError::Invalid)
        );
    }

    fn mint_json(auth_secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(auth_secret),
        )
        .unwrap()
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused() {
        let auth = Auth::new(b"secret", false);
        let now = unix_now();
        let with = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "u1", "exp": now + 600});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            auth.verify(&mint_json(b"secret", c))
        };
        assert_eq!(
            with(serde_json::json!({"nbf": now + 3600})),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            with(serde_json::json!({"iat": now + 365 * 86400})),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(
            with(serde_json::json!({"iat": (now + 365 * 86400) as f64 + 0.5})),
            Err(AuthError::IssuedInFuture)
        );
        // within the leeway, or in the past: fine
        assert!(with(serde_json::json!({"nbf": now + 2, "iat": now + 2})).is_ok());
        assert!(with(serde_json::json!({"nbf": now - 60, "iat": now - 60})).is_ok());
        assert_eq!(AuthError::NotYetValid.code(), "unauthorized");
        assert_eq!(AuthError::IssuedInFuture.code(), "unauthorized");
    }

    #[test]
    fn sub_rules_hold_for_every_surface() {
        let auth = Auth::new(b"secret", false);
        let exp = unix_now() + 600;
        for bad in [
            String::new(),
            "x".repeat(10_000),
            "a\r\nb".into(),
            "a\0b".into(),
        ] {
            let token = mint_json(b"secret", serde_json::json!({"sub": bad, "exp": exp}));
            assert_eq!(auth.verify(&token), Err(AuthError::BadSubject), "{bad:?}");
            assert_eq!(
                auth.verify_bearer(Some(&format!("Bearer {token}"))),
                Err(AuthError::BadSubject)
            );
        }
        let token = mint_json(
            b"secret",
            serde_json::json!({"sub": "x".repeat(128), "exp": exp}),
        );
        assert!(auth.verify(&token).is_ok());
        assert!(valid_user_id("ümlaut user"));
    }

    #[test]
    fn wildcard_room() {
        assert!(claims(0, Some("*")).grants_room("anything"));
        assert!(!claims(0, None).grants_room("anything"));
    }
}
