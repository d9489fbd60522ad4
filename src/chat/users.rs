//! End users: upsert, read, list, change, deactivate; and minting their tokens.

use chrono::{DateTime, Duration, Utc};

use crate::app::AppState;
use crate::auth::{AnyCaller, TenantCaller, jwt};
use crate::domain::{Page, PageRequest, Scope, TenantId, User, UserId, UserKind, UserSettings};
use crate::error::{ApiError, ErrorCode};
use crate::events::CacheEvent;
use crate::tenancy::repos::{TenantCounter, UserChanges};

/// A user's profile as the tenant describes it (PUT replaces all of it).
pub struct UserProfile {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub kind: UserKind,
    pub custom: Option<serde_json::Value>,
    pub settings: UserSettings,
}

/// Some profile fields; `None` keeps the stored value.
#[derive(Default)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub avatar_url: Option<Option<String>>,
    pub kind: Option<UserKind>,
    pub custom: Option<serde_json::Value>,
    pub settings: Option<UserSettings>,
}

/// The given display name, checked; or the user id, cut to fit, when none is given.
fn display_name(state: &AppState, raw: Option<&str>, id: &UserId) -> Result<String, ApiError> {
    let max = state.settings.chat.max_name_chars;
    match raw {
        Some(name) => super::clean_text("display_name", name, max),
        None => Ok(id.as_str().chars().take(max).collect()),
    }
}

/// Creates or replaces a user's profile. Returns the user and whether it was created.
pub async fn upsert_user(
    state: &AppState,
    caller: &TenantCaller,
    id: UserId,
    profile: UserProfile,
) -> Result<(User, bool), ApiError> {
    caller.require(Scope::UsersWrite)?;
    let name = display_name(state, profile.display_name.as_deref(), &id)?;
    let avatar = super::clean_url("avatar_url", profile.avatar_url)?;
    let custom = super::clean_custom("custom", profile.custom, state.settings.chat.max_custom_data_bytes)?;
    let users = state.store.tenant_db(&caller.scope()).users();
    let now = crate::domain::now();
    if users.get(&id).await?.is_none() {
        // The count is reserved before the insert, so concurrent creations cannot pass the limit.
        let tenants = state.store.tenants();
        if !tenants.reserve(&caller.tenant.id, TenantCounter::Users, caller.tenant.limits.max_users).await? {
            return Err(ApiError::new(ErrorCode::LimitReached, "the tenant has reached its user limit")
                .with_details(serde_json::json!({ "limit": "max_users", "value": caller.tenant.limits.max_users })));
        }
        let user = User {
            id: id.clone(),
            tenant_id: caller.tenant.id.clone(),
            name_key: name.to_lowercase(),
            display_name: name.clone(),
            avatar_url: avatar.clone(),
            kind: profile.kind,
            custom: custom.clone(),
            settings: profile.settings.clone(),
            created_at: now,
            updated_at: now,
            deactivated_at: None,
        };
        let inserted = users.insert(&user).await;
        if matches!(inserted, Ok(true)) {
            return Ok((user, true));
        }
        tenants.release(&caller.tenant.id, TenantCounter::Users).await?;
        inserted?;
    }
    let changes = UserChanges {
        display_name: Some(name),
        avatar_url: Some(avatar),
        kind: Some(profile.kind),
        custom: Some(custom),
        settings: Some(profile.settings),
    };
    let user = users.update(&id, changes, now).await?.ok_or_else(|| ApiError::not_found("user"))?;
    forget_user(state, &caller.tenant.id, &id).await;
    Ok((user, false))
}

pub async fn get_user(state: &AppState, caller: &AnyCaller, id: &UserId) -> Result<User, ApiError> {
    caller.require(Scope::UsersRead)?;
    state.store.tenant_db(&caller.scope()).users().get(id).await?.ok_or_else(|| ApiError::not_found("user"))
}

/// Looks up to `chat.max_batch_ids` users at once; unknown ids are simply absent.
pub async fn get_users(state: &AppState, caller: &AnyCaller, ids: &[UserId]) -> Result<Vec<User>, ApiError> {
    caller.require(Scope::UsersRead)?;
    let max = state.settings.chat.max_batch_ids;
    if ids.len() > max {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("at most {max} ids per lookup")));
    }
    let mut users = state.store.tenant_db(&caller.scope()).users().get_many(ids).await?;
    users.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(users)
}

/// Users in display-name order, optionally those whose name starts with `prefix`.
pub async fn list_users(
    state: &AppState,
    caller: &AnyCaller,
    prefix: Option<&str>,
    page: PageRequest,
) -> Result<Page<User>, ApiError> {
    caller.require(Scope::UsersRead)?;
    let prefix = prefix.map(str::to_lowercase);
    let after = page.after.as_deref().map(|cursor| cursor.split_once('\u{1f}').unwrap_or((cursor, "")));
    let users = state.store.tenant_db(&caller.scope()).users().list(prefix.as_deref(), after, page.limit + 1).await?;
    Ok(Page::from_overfetch(users, page.limit, |u| format!("{}\u{1f}{}", u.name_key, u.id)))
}

pub async fn update_user(
    state: &AppState,
    caller: &TenantCaller,
    id: &UserId,
    patch: UserPatch,
) -> Result<User, ApiError> {
    caller.require(Scope::UsersWrite)?;
    let chat = &state.settings.chat;
    let changes = UserChanges {
        display_name: patch
            .display_name
            .map(|n| super::clean_text("display_name", &n, chat.max_name_chars))
            .transpose()?,
        avatar_url: patch.avatar_url.map(|a| super::clean_url("avatar_url", a)).transpose()?,
        kind: patch.kind,
        custom: patch.custom.map(|c| super::clean_custom("custom", Some(c), chat.max_custom_data_bytes)).transpose()?,
        settings: patch.settings,
    };
    let users = state.store.tenant_db(&caller.scope()).users();
    let user = users.update(id, changes, crate::domain::now()).await?.ok_or_else(|| ApiError::not_found("user"))?;
    forget_user(state, caller.tenant_id(), id).await;
    Ok(user)
}

/// Drops the cached copies of a changed user on every node.
async fn forget_user(state: &AppState, tenant: &TenantId, id: &UserId) {
    state.caches.forget(&state.redis, tenant, CacheEvent::User { user_id: id.clone() }).await;
}

/// Deactivates (`active = false`) or reactivates a user. Deactivated users keep their data and
/// memberships but cannot authenticate, connect or send.
pub async fn set_active(state: &AppState, caller: &TenantCaller, id: &UserId, active: bool) -> Result<User, ApiError> {
    caller.require(Scope::UsersWrite)?;
    let users = state.store.tenant_db(&caller.scope()).users();
    let current = users.get(id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    if current.is_active() == active {
        return Ok(current);
    }
    let at = (!active).then(crate::domain::now);
    let user = users.set_deactivated(id, at).await?.ok_or_else(|| ApiError::not_found("user"))?;
    forget_user(state, caller.tenant_id(), id).await;
    Ok(user)
}

/// Mints a token for an active user, valid for `ttl_secs` (default and maximum from settings).
pub async fn mint_token(
    state: &AppState,
    caller: &TenantCaller,
    id: &UserId,
    ttl_secs: Option<u64>,
) -> Result<(String, DateTime<Utc>), ApiError> {
    caller.require(Scope::UsersWrite)?;
    let auth = &state.settings.auth;
    let ttl = ttl_secs.unwrap_or(auth.user_token_default_ttl_secs);
    if ttl == 0 || ttl > auth.user_token_max_ttl_secs {
        return Err(ApiError::validation(
            "ttl_secs",
            format!("must be between 1 and {}", auth.user_token_max_ttl_secs),
        ));
    }
    let user =
        state.store.tenant_db(&caller.scope()).users().get(id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    if !user.is_active() {
        return Err(ApiError::new(ErrorCode::UserDeactivated, "this user is deactivated"));
    }
    jwt::mint(&caller.tenant, &user.id, Duration::seconds(ttl as i64), &auth.jwt_issuer)
        .ok_or_else(|| ApiError::internal("the tenant has no signing key"))
}
