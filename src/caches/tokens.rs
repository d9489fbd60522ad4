//! User tokens this node verified lately, by their text, so a token sent again skips the HMAC
//! and the JSON decoding. A copy vouches for nothing by itself: it is used only for the same
//! tenant and issuer, while the token has not expired, and while the tenant still has the key
//! that signed it with the same secret. The checks of the tenant and the user that follow a
//! verification run on every request, as before.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex};

use chrono::Utc;

use crate::auth::jwt::{self, LEEWAY_SECS, UserClaims};
use crate::domain::{Tenant, TenantId};

pub struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Verified>>,
    max_entries: usize,
}

struct Verified {
    tenant: TenantId,
    kid: String,
    /// A digest of the signing key's secret, so a changed secret under the same kid is noticed
    /// without keeping a copy of the secret.
    secret: u64,
    claims: Arc<UserClaims>,
}

fn digest(secret: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(secret)
}

impl VerifiedTokens {
    pub fn new(max_entries: usize) -> Self {
        Self { tokens: Mutex::default(), max_entries: max_entries.max(1) }
    }

    /// The tenant a token known here was verified for: what `jwt::claimed_tenant` would read
    /// from it, without decoding it again. `verify` still checks it.
    pub fn known_tenant(&self, token: &str) -> Option<TenantId> {
        self.lock().get(token).map(|known| known.tenant.clone())
    }

    /// The claims of `token` if it is valid for `tenant` now (`jwt::verify`'s checks).
    pub fn verify(&self, tenant: &Tenant, token: &str, issuer: &str) -> Option<Arc<UserClaims>> {
        self.verify_at(tenant, token, issuer, Utc::now().timestamp())
    }

    fn verify_at(&self, tenant: &Tenant, token: &str, issuer: &str, now: i64) -> Option<Arc<UserClaims>> {
        {
            let mut tokens = self.lock();
            if let Some(known) = tokens.get(token).filter(|k| k.tenant == tenant.id && k.claims.iss == issuer) {
                if now > known.claims.exp + LEEWAY_SECS {
                    tokens.remove(token);
                    return None;
                }
                if tenant.signing_keys.iter().any(|k| k.kid == known.kid && digest(&k.secret) == known.secret) {
                    return Some(known.claims.clone());
                }
            }
        }
        let (claims, key) = jwt::verify_signed(tenant, token, issuer)?;
        let verified = Verified {
            tenant: tenant.id.clone(),
            kid: key.kid.clone(),
            secret: digest(&key.secret),
            claims: Arc::new(claims),
        };
        let claims = verified.claims.clone();
        let mut tokens = self.lock();
        super::make_room(&mut tokens, self.max_entries, |v| now <= v.claims.exp + LEEWAY_SECS);
        tokens.insert(token.into(), verified);
        Some(claims)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Verified>> {
        self.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::UserId;

    fn tenant(id: &str, keys: &[(&str, &str)]) -> Tenant {
        jwt::test_tenant(id, keys)
    }

    const SECRET: &str = "secret-one-secret-one-secret-one";

    fn token(tenant: &Tenant, ttl: Duration) -> (String, i64) {
        let (token, expires) = jwt::mint(tenant, &UserId::parse("alice").unwrap(), ttl, "confab").unwrap();
        (token, expires.timestamp())
    }

    #[test]
    fn a_token_verified_once_is_taken_again_until_it_expires() {
        let tokens = VerifiedTokens::new(100);
        let acme = tenant("acme", &[("k1", SECRET)]);
        let (token, exp) = token(&acme, Duration::minutes(5));
        let now = Utc::now().timestamp();
        assert_eq!(tokens.verify_at(&acme, &token, "confab", now).unwrap().sub, "alice");
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens.known_tenant(&token), Some(acme.id.clone()));
        assert_eq!(tokens.verify_at(&acme, &token, "confab", now + 60).unwrap().sub, "alice");
        assert!(tokens.verify_at(&acme, &token, "confab", exp + LEEWAY_SECS).is_some(), "within the leeway");
        assert!(tokens.verify_at(&acme, &token, "confab", exp + LEEWAY_SECS + 1).is_none(), "expired, though known");
        assert_eq!(tokens.len(), 0, "and forgotten");
        assert_eq!(tokens.known_tenant(&token), None);
    }

    #[test]
    fn a_known_token_is_refused_once_its_key_or_secret_is_gone_or_for_another_tenant_or_issuer() {
        let tokens = VerifiedTokens::new(100);
        let acme = tenant("acme", &[("k1", SECRET)]);
        let (token, _) = token(&acme, Duration::minutes(5));
        assert!(tokens.verify(&acme, &token, "confab").is_some());

        let rotated_away = tenant("acme", &[("k2", SECRET)]);
        assert!(tokens.verify(&rotated_away, &token, "confab").is_none(), "the signing key is gone");
        let new_secret = tenant("acme", &[("k1", "another-secret-another-secret-12")]);
        assert!(tokens.verify(&new_secret, &token, "confab").is_none(), "the kid's secret changed");
        let other = tenant("other", &[("k1", SECRET)]);
        assert!(tokens.verify(&other, &token, "confab").is_none(), "another tenant (audience)");
        assert!(tokens.verify(&acme, &token, "someone-else").is_none(), "another issuer");
        assert!(tokens.verify(&acme, &token, "confab").is_some(), "still fine where it belongs");
    }

    #[test]
    fn bad_tokens_are_refused_and_not_kept_and_the_record_stays_bounded() {
        let tokens = VerifiedTokens::new(2);
        let acme = tenant("acme", &[("k1", SECRET)]);
        let (good, _) = token(&acme, Duration::minutes(5));
        let forged = format!("{}x", &good[..good.len() - 1]);
        assert!(tokens.verify(&acme, &forged, "confab").is_none());
        let (expired, _) = token(&acme, Duration::minutes(-5));
        assert!(tokens.verify(&acme, &expired, "confab").is_none());
        assert_eq!(tokens.len(), 0);
        for _ in 0..5 {
            let (token, _) = token(&acme, Duration::minutes(5));
            assert!(tokens.verify(&acme, &token, "confab").is_some());
            assert!(tokens.len() <= 2);
        }
    }
}
