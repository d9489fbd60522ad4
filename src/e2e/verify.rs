//! What the server checks on an E2E message without seeing its plaintext: version and suite,
//! sizes, the sender device and its signature over the envelope bound to this tenant,
//! conversation, message and sender, and that the recipients are exactly the members' active
//! devices (409 with the differences) under their current keys (410 with the stale ones).

use std::collections::BTreeSet;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::envelope::{
    COMMITMENT_LEN, Context, ENC_LEN, Envelope, NONCE_LEN, SIGNATURE_LEN, SUITE, TAG_LEN, VERSION, WRAPPED_KEY_LEN,
    unb64,
};
use crate::domain::{Conversation, Device, UserId};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

use super::client::verify_signature;

fn sized(field: &str, value: &str, len: usize) -> Result<Vec<u8>, ApiError> {
    unb64(value)
        .filter(|b| b.len() == len)
        .ok_or_else(|| ApiError::validation(field, format!("must be {len} bytes, base64url")))
}

fn check_shape(state: &AppState, envelope: &Envelope) -> Result<(), ApiError> {
    let size = serde_json::to_vec(envelope).map(|b| b.len()).unwrap_or(usize::MAX);
    let max = state.settings.e2e.max_envelope_bytes;
    if size > max {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("envelopes may be at most {max} bytes"))
            .with_details(serde_json::json!({ "limit_bytes": max })));
    }
    if envelope.v != VERSION || envelope.suite != SUITE {
        return Err(ApiError::validation("envelope", format!("only v{VERSION} with suite {SUITE} is accepted")));
    }
    sized("envelope.nonce", &envelope.nonce, NONCE_LEN)?;
    sized("envelope.commitment", &envelope.commitment, COMMITMENT_LEN)?;
    sized("envelope.signature", &envelope.signature, SIGNATURE_LEN)?;
    if unb64(&envelope.ciphertext).is_none_or(|c| c.len() < TAG_LEN) {
        return Err(ApiError::validation("envelope.ciphertext", "must be base64url of at least 16 bytes"));
    }
    if envelope.recipients.is_empty() || envelope.recipients.len() > state.settings.e2e.max_recipients {
        return Err(ApiError::validation(
            "envelope.recipients",
            format!("must list 1 to {} devices", state.settings.e2e.max_recipients),
        ));
    }
    for r in &envelope.recipients {
        sized("envelope.recipients.enc", &r.enc, ENC_LEN)?;
        sized("envelope.recipients.wrapped_key", &r.wrapped_key, WRAPPED_KEY_LEN)?;
    }
    Ok(())
}

fn device_ref(user: &str, device: &str) -> serde_json::Value {
    serde_json::json!({ "user_id": user, "device_id": device })
}

/// Every current member, read page by page: members without devices need no copy, so the
/// recipient limit says nothing about how many members there are.
async fn all_members(db: &TenantDb, conversation: &Conversation) -> Result<Vec<UserId>, ApiError> {
    const PAGE: u32 = 1000;
    let mut members = Vec::new();
    loop {
        let after = members.last().map(|m: &UserId| m.to_string());
        let page = db.members().list(&conversation.id, after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        members.extend(page.into_iter().map(|m| m.user_id));
        if !full {
            return Ok(members);
        }
    }
}

/// Checks an envelope for message `message_id` from the caller in `conversation`.
pub async fn check(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    conversation: &Conversation,
    message_id: &str,
    envelope: &Envelope,
) -> Result<(), ApiError> {
    check_shape(state, envelope)?;
    let sender =
        db.devices().get(caller.user_id(), &envelope.sender_device_id).await?.filter(Device::is_active).ok_or_else(
            || ApiError::validation("envelope.sender_device_id", "is not an active device of the sender"),
        )?;
    let context = Context {
        tenant_id: caller.tenant.id.to_string(),
        conversation_id: conversation.id.to_string(),
        message_id: message_id.to_string(),
        sender_user_id: caller.user_id().to_string(),
        sender_device_id: envelope.sender_device_id.clone(),
    };
    let identity = unb64(&sender.identity_key).unwrap_or_default();
    let signature = unb64(&envelope.signature).unwrap_or_default();
    if !verify_signature(&identity, &envelope.signing_bytes(&context), &signature) {
        return Err(ApiError::new(
            ErrorCode::InvalidSignature,
            "the envelope's signature does not verify for this message",
        ));
    }
    let members = all_members(db, conversation).await?;
    let devices = db.devices().active_of(&members).await?;
    let expected: BTreeSet<(&str, &str)> = devices
        .iter()
        .filter(|d| !(d.user_id == sender.user_id && d.device_id == sender.device_id))
        .map(|d| (d.user_id.as_str(), d.device_id.as_str()))
        .collect();
    let mut listed = BTreeSet::new();
    for r in &envelope.recipients {
        if !listed.insert((r.user_id.as_str(), r.device_id.as_str())) {
            return Err(ApiError::validation("envelope.recipients", "lists a device twice"));
        }
    }
    let missing: Vec<_> = expected.difference(&listed).map(|(u, d)| device_ref(u, d)).collect();
    let extra: Vec<_> = listed.difference(&expected).map(|(u, d)| device_ref(u, d)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(ApiError::new(
            ErrorCode::RecipientsMismatch,
            "the recipients must be exactly the members' active devices",
        )
        .with_details(serde_json::json!({ "missing": missing, "extra": extra })));
    }
    let now = crate::domain::now();
    let stale: Vec<_> = envelope
        .recipients
        .iter()
        .filter_map(|r| {
            let device = devices.iter().find(|d| d.user_id.as_str() == r.user_id && d.device_id == r.device_id)?;
            // A current key past its `not_after` is stale too: the device must publish a new one.
            let current = device.current_key().filter(|k| k.not_after > now).map(|k| k.key_id.as_str());
            (current != Some(r.key_id.as_str())).then(|| {
                serde_json::json!({
                    "user_id": r.user_id, "device_id": r.device_id, "key_id": r.key_id, "current_key_id": current,
                })
            })
        })
        .collect();
    if !stale.is_empty() {
        return Err(ApiError::new(ErrorCode::StaleKeys, "some recipient keys were rotated; refresh and re-encrypt")
            .with_details(serde_json::json!({ "stale": stale })));
    }
    Ok(())
}
