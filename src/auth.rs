//! JWT verification (HS256) and, in dev mode, minting.

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
}

impl AuthError {
    /// Stable code for API and signaling errors.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::Missing | AuthError::Invalid => "unauthorized",
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
        validation.leeway = 5;
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
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
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

    #[test]
    fn wildcard_room() {
        assert!(claims(0, Some("*")).grants_room("anything"));
        assert!(!claims(0, None).grants_room("anything"));
    }
}
