//! Chat use cases: users and their tokens, relationships, conversations, members, messages,
//! reactions and pins, receipts and unread counts, search. Rules live here; `http/` only maps.

mod commit;
pub mod conversations;
pub mod counters;
mod encrypted;
pub mod members;
pub mod messages;
pub mod presence;
pub mod reactions;
pub mod receipts;
pub mod relationships;
pub mod search;
pub mod search_index;
mod search_recent;
pub mod users;

pub use commit::Committers;

use crate::error::ApiError;

/// Checks a free-text field: trimmed, non-blank, at most `max` characters.
pub fn clean_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::validation(field, "must not be blank"));
    }
    if trimmed.chars().count() > max {
        return Err(ApiError::validation(field, format!("must be at most {max} characters")));
    }
    Ok(trimmed.to_string())
}

/// Checks an optional URL: http(s), at most 2048 characters.
pub fn clean_url(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(url) if (url.starts_with("https://") || url.starts_with("http://")) && url.len() <= 2048 => Ok(Some(url)),
        Some(_) => Err(ApiError::validation(field, "must be an http(s) URL of at most 2048 characters")),
    }
}

/// Checks a tenant-supplied JSON object against `chat.max_custom_data_bytes`.
pub fn clean_custom(field: &str, value: Option<serde_json::Value>, max: usize) -> Result<serde_json::Value, ApiError> {
    let value = value.unwrap_or_else(|| serde_json::json!({}));
    crate::domain::check_custom_data(&value, max).map_err(|e| ApiError::validation(field, e))?;
    Ok(value)
}
