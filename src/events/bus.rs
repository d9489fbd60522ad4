//! Fan-out between nodes: events are published on per-conversation channels
//! `{prefix}t:{tenant}:conv:{conversation}` (presence on `{prefix}t:{tenant}:presence`, document
//! edits on `{prefix}t:{tenant}:doc:{item}`); each node holds ONE subscriber connection
//! (`PSUBSCRIBE {prefix}t:*`) feeding its in-process hub. Pub/sub may drop events (it is only
//! the fast path); receivers detect gaps by seq and fill them from MongoDB.

use std::time::Duration;

use deadpool_redis::redis::Pipeline;
use futures_util::StreamExt;

use crate::domain::{ConversationId, ItemId, TenantId};

use super::live::Topic;
use super::{Redis, RedisError};

/// Wait before reconnecting a lost subscriber connection.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// An event as it arrives at a node.
pub struct Delivery {
    pub tenant: TenantId,
    pub channel: Channel,
    pub payload: Vec<u8>,
}

/// Which of a tenant's channels an event came on.
#[derive(Debug, PartialEq, Eq)]
pub enum Channel {
    Conversation(ConversationId),
    Presence,
    /// A collaborative document (a workspace file).
    Document(ItemId),
    /// Notices that a cached copy changed (see `caches`).
    Cache,
}

impl Redis {
    /// Publishes `payload` to every node; best effort (the caller's data is already stored).
    pub async fn publish(&self, tenant: &TenantId, topic: Topic<'_>, payload: Vec<u8>) -> Result<(), RedisError> {
        let channel = self.channel(tenant, topic);
        self.run(|mut conn| async move {
            deadpool_redis::redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Adds publishing `payload` on `topic` to `pipe`.
    pub(super) fn publish_in(&self, pipe: &mut Pipeline, tenant: &TenantId, topic: Topic<'_>, payload: Vec<u8>) {
        pipe.cmd("PUBLISH").arg(self.channel(tenant, topic)).arg(payload).ignore();
    }

    /// Runs `pipe`'s commands in order, in one round trip (none for an empty pipeline).
    pub(super) async fn run_pipe(&self, pipe: Pipeline) -> Result<(), RedisError> {
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await }).await
    }

    fn channel(&self, tenant: &TenantId, topic: Topic<'_>) -> String {
        match topic {
            Topic::Conversation(conversation) => self.keys(tenant).key(&format!("conv:{conversation}")),
            Topic::Presence => self.keys(tenant).key("presence"),
            Topic::Document(id) => self.keys(tenant).key(&format!("doc:{id}")),
            Topic::Cache => self.keys(tenant).key("cache"),
        }
    }

    /// Runs this node's subscriber until the process ends, handing each event to `deliver`.
    /// `subscribed` runs after every (re)subscription: events published while the subscriber
    /// was away are lost to it, so listeners catch up from MongoDB.
    pub fn spawn_subscriber(
        &self,
        url: String,
        subscribed: impl Fn() + Send + Sync + 'static,
        deliver: impl Fn(Delivery) + Send + Sync + 'static,
    ) {
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = subscribe_once(&url, &prefix, &subscribed, &deliver).await {
                    tracing::warn!(error = %e, "event subscriber lost its connection; reconnecting");
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        });
    }
}

async fn subscribe_once(
    url: &str,
    prefix: &str,
    subscribed: &impl Fn(),
    deliver: &impl Fn(Delivery),
) -> Result<(), deadpool_redis::redis::RedisError> {
    let client = deadpool_redis::redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(format!("{prefix}t:*")).await?;
    subscribed();
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let channel = message.get_channel_name().to_string();
        let Ok(payload) = message.get_payload::<Vec<u8>>() else { continue };
        if let Some(delivery) = parse_channel(prefix, &channel, payload) {
            deliver(delivery);
        }
    }
    Ok(())
}

/// `{prefix}t:{tenant}:conv:{conversation}`, `...:presence`, `...:cache` or `...:doc:{item}` -> a delivery.
fn parse_channel(prefix: &str, channel: &str, payload: Vec<u8>) -> Option<Delivery> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix("t:")?;
    let (tenant, rest) = rest.split_once(':')?;
    let channel = if rest == "presence" {
        Channel::Presence
    } else if rest == "cache" {
        Channel::Cache
    } else if let Some(id) = rest.strip_prefix("conv:") {
        Channel::Conversation(ConversationId::parse(id).ok()?)
    } else {
        Channel::Document(ItemId::parse(rest.strip_prefix("doc:")?).ok()?)
    };
    Some(Delivery { tenant: TenantId::parse(tenant).ok()?, channel, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_tenant_and_conversation() {
        let id = ConversationId::new();
        let parsed = parse_channel("cf:", &format!("cf:t:acme:conv:{id}"), b"x".to_vec()).unwrap();
        assert_eq!((parsed.tenant.as_str(), parsed.channel), ("acme", Channel::Conversation(id)));
        let presence = parse_channel("cf:", "cf:t:acme:presence", b"x".to_vec()).unwrap();
        assert_eq!(presence.channel, Channel::Presence);
        assert_eq!(parse_channel("cf:", "cf:t:acme:cache", b"x".to_vec()).unwrap().channel, Channel::Cache);
        let item = ItemId::new();
        let doc = parse_channel("cf:", &format!("cf:t:acme:doc:{item}"), b"x".to_vec()).unwrap();
        assert_eq!(doc.channel, Channel::Document(item));
        assert!(parse_channel("cf:", "cf:t:acme:rl:1", b"x".to_vec()).is_none());
        assert!(parse_channel("cf:", "other:t:acme:conv:x", b"x".to_vec()).is_none());
    }
}
