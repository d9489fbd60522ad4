//! What travels between nodes: the events sockets are told about. Encoded as BSON.

use deadpool_redis::redis::Pipeline;
use serde::{Deserialize, Serialize};

use crate::domain::{ApiKeyId, ConversationId, ItemId, ItemKind, MemberRole, Message, SessionId, TenantId, UserId};

use super::{Redis, RedisError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A new message: sockets deliver these once each, in seq order.
    Created { message: Message },
    /// A message changed (edited, deleted, reacted to): its new state.
    Updated { message: Message },
    /// Someone started or stopped typing.
    Typing { conversation_id: ConversationId, user_id: UserId, typing: bool },
    /// Someone's read mark moved.
    Read { conversation_id: ConversationId, user_id: UserId, last_read_seq: i64 },
    /// A user became a member; their sockets follow the conversation from `after_seq` on.
    Joined { conversation_id: ConversationId, user_id: UserId, after_seq: i64 },
    /// A user stopped being a member (left, removed, banned); their sockets stop following it.
    Left { conversation_id: ConversationId, user_id: UserId },
    /// A member's role changed.
    MemberUpdated { conversation_id: ConversationId, user_id: UserId, role: MemberRole },
    /// A message was pinned or unpinned.
    Pinned { conversation_id: ConversationId, seq: i64, pinned: bool, by: UserId },
    /// A user came online (first live connection on any node) or went offline (last one
    /// closed). Carries the user's conversations: it reaches the sockets that follow any of them.
    Presence { user_id: UserId, online: bool, last_seen_at: i64, conversations: Vec<ConversationId> },
    /// A code session's workspace tree changed (announced on the session's conversation).
    Workspace {
        conversation_id: ConversationId,
        session_id: SessionId,
        /// `created`, `updated` (renamed or moved) or `deleted` (with its subtree).
        change: String,
        item_id: ItemId,
        path: String,
        item_kind: ItemKind,
        by: UserId,
    },
}

/// Where an event is published: one conversation's channel, the tenant's presence channel, or
/// one collaborative document's channel.
pub enum Topic<'a> {
    Conversation(&'a ConversationId),
    Presence,
    Document(&'a ItemId),
    Cache,
}

/// Tells every node to forget its copy of something that changed (see `caches`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CacheEvent {
    Tenant,
    ApiKey {
        key_id: ApiKeyId,
    },
    User {
        user_id: UserId,
    },
    Member {
        conversation_id: ConversationId,
        user_id: UserId,
    },
    /// A conversation's settings or pins changed.
    Conversation {
        conversation_id: ConversationId,
    },
    /// A code session member was removed or given another role (`user_id`), or the session
    /// stopped being visible to the whole tenant (no `user_id`: everyone). Nothing cached
    /// changes: each node's rooms close those editors of the session's files (`collab::Rooms`),
    /// which reconnect with what they may do now. `origin` is the node that did so already.
    SessionAccess {
        session_id: SessionId,
        user_id: Option<UserId>,
        origin: String,
    },
}

impl LiveEvent {
    pub fn topic(&self) -> Topic<'_> {
        match self {
            LiveEvent::Created { message } | LiveEvent::Updated { message } => {
                Topic::Conversation(&message.conversation_id)
            }
            LiveEvent::Typing { conversation_id, .. }
            | LiveEvent::Read { conversation_id, .. }
            | LiveEvent::Joined { conversation_id, .. }
            | LiveEvent::Left { conversation_id, .. }
            | LiveEvent::MemberUpdated { conversation_id, .. }
            | LiveEvent::Pinned { conversation_id, .. }
            | LiveEvent::Workspace { conversation_id, .. } => Topic::Conversation(conversation_id),
            LiveEvent::Presence { .. } => Topic::Presence,
        }
    }
}

impl Redis {
    /// Publishes a cache notice; best effort (copies expire anyway).
    pub async fn publish_cache_event(&self, tenant: &TenantId, event: &CacheEvent) {
        let published = match bson::to_vec(event) {
            Ok(payload) => self.publish(tenant, Topic::Cache, payload).await,
            Err(e) => return tracing::error!(error = %e, "could not encode a cache notice"),
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "could not publish a cache notice");
        }
    }

    /// Raises the conversations' `heads` and replaces the revisions of those whose stored messages
    /// changed (`events::heads`), then publishes `events` in order, all in one round trip; best
    /// effort like `publish_event`, apart from the revisions, which are retried until Redis takes them.
    pub async fn publish_stored(
        &self,
        tenant: &TenantId,
        heads: &[(&ConversationId, i64)],
        revised: &[&ConversationId],
        events: &[LiveEvent],
    ) {
        let mut pipe = Pipeline::new();
        for (conversation, seq) in heads {
            self.raise_in(&mut pipe, tenant, conversation, *seq);
        }
        for conversation in revised {
            self.revise_in(&mut pipe, tenant, conversation);
        }
        for event in events {
            match bson::to_vec(event) {
                Ok(payload) => self.publish_in(&mut pipe, tenant, event.topic(), payload),
                Err(e) => tracing::error!(error = %e, "could not encode a live event"),
            }
        }
        if let Err(e) = self.run_pipe(pipe).await {
            tracing::warn!(error = %e, "could not record heads and publish live events");
            self.revise_later(tenant, revised);
        }
    }

    /// Publishes an event to every node. Best effort: stored data is already in MongoDB and
    /// sockets fill gaps from there; a failure is logged.
    pub async fn publish_event(&self, tenant: &TenantId, event: &LiveEvent) {
        let payload = match bson::to_vec(event) {
            Ok(payload) => payload,
            Err(e) => return tracing::error!(error = %e, "could not encode a live event"),
        };
        let published: Result<(), RedisError> = self.publish(tenant, event.topic(), payload).await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "could not publish a live event");
        }
    }
}
