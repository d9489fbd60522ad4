//! Signed download URLs: `?tenant=&expires=&signature=` where the signature is
//! HMAC-SHA256(key, "<tenant>\n<file id>\n<expires>"), base64url. A valid one is a principal of
//! its own: it grants reading that one file of that tenant until it expires.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Settings;
use crate::domain::{FileId, TenantId};

use super::TenantScope;

type HmacSha256 = Hmac<Sha256>;

pub enum SignedUrlError {
    /// Well signed, but past its expiry.
    Expired,
    /// Not signed by confab for this tenant and file.
    Invalid,
}

/// The signing key: `files.url_signing_secret`, or one derived from the operator token.
fn key(settings: &Settings) -> Vec<u8> {
    let configured = settings.files.url_signing_secret.expose();
    if !configured.is_empty() {
        return configured.as_bytes().to_vec();
    }
    let mut mac = HmacSha256::new_from_slice(settings.auth.operator_token.expose().as_bytes()).expect("any key length");
    mac.update(b"confab signed file URLs");
    mac.finalize().into_bytes().to_vec()
}

fn mac(settings: &Settings, tenant: &str, file: &str, expires: i64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&key(settings)).expect("any key length");
    mac.update(format!("{tenant}\n{file}\n{expires}").as_bytes());
    mac
}

pub fn sign(settings: &Settings, tenant: &TenantId, file: &FileId, expires: i64) -> String {
    URL_SAFE_NO_PAD.encode(mac(settings, tenant.as_str(), file.as_str(), expires).finalize().into_bytes())
}

/// Checks the signature (in constant time) first, then the expiry.
pub fn verify(
    settings: &Settings,
    tenant: &str,
    file: &FileId,
    expires: i64,
    signature: &str,
    now: i64,
) -> Result<TenantScope, SignedUrlError> {
    let bytes = URL_SAFE_NO_PAD.decode(signature).map_err(|_| SignedUrlError::Invalid)?;
    mac(settings, tenant, file.as_str(), expires).verify_slice(&bytes).map_err(|_| SignedUrlError::Invalid)?;
    let tenant = TenantId::parse(tenant).map_err(|_| SignedUrlError::Invalid)?;
    if now >= expires {
        return Err(SignedUrlError::Expired);
    }
    Ok(TenantScope { tenant })
}
