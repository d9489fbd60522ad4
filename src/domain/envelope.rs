//! Envelope v1: the wire format of an end-to-end encrypted message (see docs/e2e.md).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const VERSION: u32 = 1;
/// HPKE base mode X25519 / HKDF-SHA256 / AES-256-GCM for key wrapping, AES-256-GCM for the body,
/// Ed25519 signatures.
pub const SUITE: &str = "x25519-hkdf-sha256-aes256gcm+ed25519";

pub const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const COMMITMENT_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
pub const ENC_LEN: usize = 32;
pub const WRAPPED_KEY_LEN: usize = KEY_LEN + TAG_LEN;

/// What an envelope is bound to: changing any of these makes signature and AAD checks fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub tenant_id: String,
    pub conversation_id: String,
    /// The message's `client_msg_id`, chosen by the sender before sealing.
    pub message_id: String,
    pub sender_user_id: String,
    pub sender_device_id: String,
}

impl Context {
    /// A label, then each field length-prefixed (u32 big-endian), in declaration order.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 context".to_vec();
        for field in
            [&self.tenant_id, &self.conversation_id, &self.message_id, &self.sender_user_id, &self.sender_device_id]
        {
            put(&mut out, field.as_bytes());
        }
        out
    }
}

/// One recipient device's copy of the content key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub user_id: String,
    pub device_id: String,
    /// The recipient device's X25519 key the content key was wrapped to.
    pub key_id: String,
    /// HPKE encapsulated key (32 bytes, base64url).
    pub enc: String,
    /// HPKE ciphertext of the content key (48 bytes, base64url).
    pub wrapped_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u32,
    pub suite: String,
    pub sender_device_id: String,
    /// AES-256-GCM nonce of the body (12 bytes, base64url).
    pub nonce: String,
    /// AES-256-GCM ciphertext and tag of the body (base64url).
    pub ciphertext: String,
    /// HMAC-SHA256(content key, "confab-e2e-v1 commitment" ‖ context) (32 bytes, base64url).
    pub commitment: String,
    pub recipients: Vec<Recipient>,
    /// Ed25519 signature by the sender device's identity key over `signing_bytes` (64 bytes).
    pub signature: String,
}

/// A u32 big-endian length, then the bytes.
pub fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

impl Envelope {
    /// The bytes the sender signs: a label, the context, then every field but the signature,
    /// each length-prefixed, recipients in envelope order.
    pub fn signing_bytes(&self, context: &Context) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 signature".to_vec();
        put(&mut out, &context.bytes());
        put(&mut out, &self.v.to_be_bytes());
        for field in [&self.suite, &self.sender_device_id, &self.nonce, &self.ciphertext, &self.commitment] {
            put(&mut out, field.as_bytes());
        }
        out.extend_from_slice(&(self.recipients.len() as u32).to_be_bytes());
        for r in &self.recipients {
            for field in [&r.user_id, &r.device_id, &r.key_id, &r.enc, &r.wrapped_key] {
                put(&mut out, field.as_bytes());
            }
        }
        out
    }

    /// The AAD of the body cipher and the HPKE `info`: the context, labelled.
    pub fn body_aad(context: &Context) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 body".to_vec();
        put(&mut out, &context.bytes());
        out
    }

    pub fn wrap_info(context: &Context) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 wrap".to_vec();
        put(&mut out, &context.bytes());
        out
    }

    /// HPKE AAD for one recipient: who the copy is for.
    pub fn wrap_aad(recipient_user: &str, recipient_device: &str, key_id: &str) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 recipient".to_vec();
        for field in [recipient_user, recipient_device, key_id] {
            put(&mut out, field.as_bytes());
        }
        out
    }

    pub fn commitment_input(context: &Context) -> Vec<u8> {
        let mut out = b"confab-e2e-v1 commitment".to_vec();
        put(&mut out, &context.bytes());
        out
    }
}
