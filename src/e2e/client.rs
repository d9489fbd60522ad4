//! The reference client: device keys, signed key uploads, sealing and opening envelopes.
//! Tests, the load generator and SDK authors use it; the server never holds a secret key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::envelope::{
    COMMITMENT_LEN, Context, Envelope, KEY_LEN, NONCE_LEN, Recipient, SUITE, VERSION, b64, put, unb64,
};

type Kem = X25519HkdfSha256;

/// A device's secrets: its Ed25519 identity key and one X25519 key (named `key_id`).
pub struct DeviceKeys {
    pub device_id: String,
    pub identity: SigningKey,
    pub key_id: String,
    pub x25519_secret: [u8; 32],
}

/// A recipient device's public X25519 key, as listed by the key directory.
#[derive(Debug, Clone)]
pub struct RecipientKey {
    pub user_id: String,
    pub device_id: String,
    pub key_id: String,
    pub public_key: [u8; 32],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the envelope is malformed")]
    Malformed,
    #[error("the sender's signature does not verify")]
    BadSignature,
    #[error("no copy of the content key for this device")]
    NotARecipient,
    #[error("the content key cannot be unwrapped")]
    Unwrap,
    #[error("the key commitment does not match")]
    BadCommitment,
    #[error("the body does not decrypt")]
    Decrypt,
}

impl DeviceKeys {
    pub fn generate(device_id: &str, key_id: &str, rng: &mut impl CryptoRng) -> Self {
        let mut identity_secret = [0u8; 32];
        rng.fill_bytes(&mut identity_secret);
        let identity = SigningKey::from_bytes(&identity_secret);
        let mut x25519_secret = [0u8; 32];
        rng.fill_bytes(&mut x25519_secret);
        Self { device_id: device_id.into(), identity, key_id: key_id.into(), x25519_secret }
    }

    pub fn identity_public(&self) -> [u8; 32] {
        self.identity.verifying_key().to_bytes()
    }

    pub fn x25519_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(self.x25519_secret)).to_bytes()
    }

    /// The signature the key directory requires on an uploaded X25519 key.
    pub fn sign_key_upload(&self, tenant: &str, user: &str, not_after: i64) -> [u8; 64] {
        let bytes = key_upload_bytes(tenant, user, &self.device_id, &self.key_id, &self.x25519_public(), not_after);
        self.identity.sign(&bytes).to_bytes()
    }
}

/// What an identity key signs when publishing an X25519 key.
pub fn key_upload_bytes(
    tenant: &str,
    user: &str,
    device: &str,
    key_id: &str,
    public_key: &[u8],
    not_after: i64,
) -> Vec<u8> {
    let mut out = b"confab-e2e-v1 device-key".to_vec();
    for field in [tenant.as_bytes(), user.as_bytes(), device.as_bytes(), key_id.as_bytes(), public_key] {
        put(&mut out, field);
    }
    out.extend_from_slice(&not_after.to_be_bytes());
    out
}

/// Verifies an Ed25519 signature with a raw 32-byte public key.
pub fn verify_signature(identity_public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (<[u8; 32]>::try_from(identity_public), <[u8; 64]>::try_from(signature)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else { return false };
    key.verify(message, &Signature::from_bytes(&sig)).is_ok()
}

fn commitment(content_key: &[u8], context: &Context) -> [u8; COMMITMENT_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(content_key).expect("any key length");
    mac.update(&Envelope::commitment_input(context));
    mac.finalize().into_bytes().into()
}

/// Seals `plaintext` for `recipients`, signed by `sender`. `rng` supplies the content key, the
/// body nonce and the HPKE ephemeral keys (a seeded one gives reproducible test vectors).
pub fn seal(
    context: &Context,
    sender: &DeviceKeys,
    plaintext: &[u8],
    recipients: &[RecipientKey],
    rng: &mut impl CryptoRng,
) -> Envelope {
    let mut content_key = [0u8; KEY_LEN];
    rng.fill_bytes(&mut content_key);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new_from_slice(&content_key).expect("32-byte key");
    let body_aad = Envelope::body_aad(context);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &body_aad })
        .expect("AES-GCM encryption does not fail");
    let info = Envelope::wrap_info(context);
    let recipients = recipients
        .iter()
        .map(|r| {
            let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&r.public_key).expect("32-byte X25519 key");
            let aad = Envelope::wrap_aad(&r.user_id, &r.device_id, &r.key_id);
            let (enc, wrapped) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
                &OpModeS::Base,
                &pk,
                &info,
                &content_key,
                &aad,
                rng,
            )
            .expect("HPKE sealing does not fail");
            Recipient {
                user_id: r.user_id.clone(),
                device_id: r.device_id.clone(),
                key_id: r.key_id.clone(),
                enc: b64(&enc.to_bytes()),
                wrapped_key: b64(&wrapped),
            }
        })
        .collect();
    let mut envelope = Envelope {
        v: VERSION,
        suite: SUITE.to_string(),
        sender_device_id: sender.device_id.clone(),
        nonce: b64(&nonce),
        ciphertext: b64(&ciphertext),
        commitment: b64(&commitment(&content_key, context)),
        recipients,
        signature: String::new(),
    };
    envelope.signature = b64(&sender.identity.sign(&envelope.signing_bytes(context)).to_bytes());
    envelope
}

/// Opens an envelope as `me` (a recipient device of `my_user`): checks the sender's signature,
/// unwraps the content key, checks the key commitment, decrypts the body.
pub fn open(
    envelope: &Envelope,
    context: &Context,
    sender_identity: &[u8; 32],
    my_user: &str,
    me: &DeviceKeys,
) -> Result<Vec<u8>, OpenError> {
    if envelope.v != VERSION || envelope.suite != SUITE || envelope.sender_device_id != context.sender_device_id {
        return Err(OpenError::Malformed);
    }
    let signature = unb64(&envelope.signature).ok_or(OpenError::Malformed)?;
    if !verify_signature(sender_identity, &envelope.signing_bytes(context), &signature) {
        return Err(OpenError::BadSignature);
    }
    let copy = envelope
        .recipients
        .iter()
        .find(|r| r.user_id == my_user && r.device_id == me.device_id && r.key_id == me.key_id)
        .ok_or(OpenError::NotARecipient)?;
    let enc = unb64(&copy.enc).ok_or(OpenError::Malformed)?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc).map_err(|_| OpenError::Malformed)?;
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&me.x25519_secret).map_err(|_| OpenError::Malformed)?;
    let wrapped = unb64(&copy.wrapped_key).ok_or(OpenError::Malformed)?;
    let aad = Envelope::wrap_aad(my_user, &me.device_id, &me.key_id);
    let content_key = hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        &Envelope::wrap_info(context),
        &wrapped,
        &aad,
    )
    .map_err(|_| OpenError::Unwrap)?;
    let claimed = unb64(&envelope.commitment).ok_or(OpenError::Malformed)?;
    if !bool::from(commitment(&content_key, context).as_slice().ct_eq(&claimed)) {
        return Err(OpenError::BadCommitment);
    }
    let nonce = unb64(&envelope.nonce).filter(|n| n.len() == NONCE_LEN).ok_or(OpenError::Malformed)?;
    let ciphertext = unb64(&envelope.ciphertext).ok_or(OpenError::Malformed)?;
    let cipher = Aes256Gcm::new_from_slice(&content_key).map_err(|_| OpenError::Unwrap)?;
    cipher
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &Envelope::body_aad(context) })
        .map_err(|_| OpenError::Decrypt)
}
