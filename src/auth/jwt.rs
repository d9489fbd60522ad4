//! End-user tokens: HS256 JWTs signed with one of the tenant's signing keys, named by `kid`.
//!
//! Claims: `iss` (`auth.jwt_issuer`), `aud` (the tenant id), `sub` (the user id), `exp`, `iat`
//! and `jti`, all required. The HMAC key is the UTF-8 bytes of the signing key's `secret`, so a
//! tenant can mint tokens with any JWT library (see README.md).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{SigningKey, Tenant, TenantId, UserId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

/// Signs a token for `user` with the tenant's newest signing key.
pub fn mint(tenant: &Tenant, user: &UserId, ttl: Duration, issuer: &str) -> Option<(String, DateTime<Utc>)> {
    let key = tenant.signing_keys.iter().max_by_key(|k| k.created_at)?;
    let now = Utc::now();
    let expires_at = now + ttl;
    let claims = UserClaims {
        iss: issuer.to_string(),
        aud: tenant.id.to_string(),
        sub: user.to_string(),
        exp: expires_at.timestamp(),
        iat: now.timestamp(),
        jti: uuid::Uuid::now_v7().to_string(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key.secret.as_bytes())).ok()?;
    Some((token, DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at)))
}

/// The tenant a token claims to be for, read without verifying anything: it only says which
/// tenant's keys to verify with.
pub fn claimed_tenant(token: &str) -> Option<TenantId> {
    #[derive(Deserialize)]
    struct Audience {
        aud: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let audience: Audience = serde_json::from_slice(&bytes).ok()?;
    TenantId::parse(&audience.aud).ok()
}

/// How far past `exp` (and before `iat`/`nbf`) a token is still taken, in seconds.
pub const LEEWAY_SECS: i64 = 5;

/// Verifies signature (HS256 only), `kid`, issuer, audience, expiry and the required claims.
pub fn verify(tenant: &Tenant, token: &str, issuer: &str) -> Option<UserClaims> {
    verify_signed(tenant, token, issuer).map(|(claims, _)| claims)
}

/// `verify`, also naming the key that signed the token.
pub fn verify_signed<'t>(tenant: &'t Tenant, token: &str, issuer: &str) -> Option<(UserClaims, &'t SigningKey)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    if header.alg != Algorithm::HS256 {
        return None;
    }
    let kid = header.kid?;
    let key = tenant.signing_keys.iter().find(|k| k.kid == kid)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[tenant.id.as_str()]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
    validation.leeway = LEEWAY_SECS as u64;
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<UserClaims>(token, &DecodingKey::from_secret(key.secret.as_bytes()), &validation)
        .ok()?;
    (data.claims.iat <= Utc::now().timestamp() + LEEWAY_SECS).then_some((data.claims, key))
}

/// A tenant with signing keys `(kid, secret)` and nothing else of note, for tests.
#[cfg(test)]
pub(crate) fn test_tenant(id: &str, keys: &[(&str, &str)]) -> Tenant {
    use crate::domain::{PlanName, TenantLimits, TenantStatus};
    Tenant {
        id: TenantId::parse(id).unwrap(),
        name: id.into(),
        plan: PlanName::default(),
        limits: TenantLimits {
            max_users: 1,
            max_api_keys: 1,
            max_conversation_members: 2,
            max_message_bytes: 1,
            storage_quota_bytes: 0,
            requests_per_second: 1,
        },
        status: TenantStatus::Active,
        signing_keys: keys
            .iter()
            .map(|(kid, secret)| SigningKey { kid: (*kid).into(), secret: (*secret).into(), created_at: Utc::now() })
            .collect(),
        allowed_mime_types: Vec::new(),
        allowed_origins: Vec::new(),
        user_count: 0,
        api_key_count: 0,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, secret: &str) -> Tenant {
        test_tenant(id, &[("k1", secret)])
    }

    #[test]
    fn minted_tokens_verify_for_their_tenant_only() {
        let acme = tenant("acme", "secret-one-secret-one-secret-one");
        let other = tenant("other", "secret-one-secret-one-secret-one");
        let user = UserId::parse("alice").unwrap();
        let (token, _) = mint(&acme, &user, Duration::minutes(5), "confab").unwrap();
        assert_eq!(claimed_tenant(&token).unwrap().as_str(), "acme");
        assert_eq!(verify(&acme, &token, "confab").unwrap().sub, "alice");
        assert!(verify(&other, &token, "confab").is_none(), "wrong audience");
        assert!(verify(&acme, &token, "someone-else").is_none(), "wrong issuer");
    }

    #[test]
    fn expired_and_unsigned_tokens_fail() {
        let acme = tenant("acme", "secret-one-secret-one-secret-one");
        let user = UserId::parse("alice").unwrap();
        let (expired, _) = mint(&acme, &user, Duration::minutes(-5), "confab").unwrap();
        assert!(verify(&acme, &expired, "confab").is_none());
        let (token, _) = mint(&acme, &user, Duration::minutes(5), "confab").unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#);
        parts[0] = &none_header;
        parts[2] = "";
        assert!(verify(&acme, &parts.join("."), "confab").is_none());
    }
}
