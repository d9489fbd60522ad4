//! The rules that differ for end-to-end encrypted conversations: messages carry an envelope
//! (checked by `e2e::verify`) and no plaintext content.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::envelope::Envelope;
use crate::domain::{Conversation, ConversationEncryption, FileEncryption, StoredFile};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

fn plaintext_refused(what: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("{what} is not allowed in an end-to-end encrypted conversation"))
}

/// Checks the content of a new or edited message against the conversation's encryption.
#[allow(clippy::too_many_arguments)]
pub async fn check_content(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    conversation: &Conversation,
    message_id: &str,
    text: Option<&str>,
    has_plain_attachments: bool,
    envelope: Option<&Envelope>,
) -> Result<(), ApiError> {
    match (conversation.encryption, envelope) {
        (ConversationEncryption::None, Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "envelopes are only accepted in end-to-end encrypted conversations",
        )),
        (ConversationEncryption::None, None) => Ok(()),
        (ConversationEncryption::E2e, None) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "messages in an end-to-end encrypted conversation must carry an envelope",
        )),
        (ConversationEncryption::E2e, Some(envelope)) => {
            if text.is_some() {
                return Err(plaintext_refused("text"));
            }
            if has_plain_attachments {
                return Err(plaintext_refused("a plaintext attachment"));
            }
            crate::e2e::verify::check(state, db, caller, conversation, message_id, envelope).await
        }
    }
}

/// In E2E conversations only end-to-end encrypted uploads may be attached.
pub fn check_files(conversation: &Conversation, files: &[StoredFile]) -> Result<(), ApiError> {
    if conversation.encryption == ConversationEncryption::E2e
        && files.iter().any(|f| f.encryption != FileEncryption::E2e)
    {
        return Err(plaintext_refused("a file uploaded without encryption=e2e"));
    }
    Ok(())
}
