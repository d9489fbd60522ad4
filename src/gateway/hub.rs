//! This node's registry of live sockets, by conversation and by user. The node's single Redis
//! subscriber hands every event here; the hub skips those of tenants with no socket on this node,
//! decodes the others once and offers each to the bounded outbox of each local socket that
//! follows the conversation. A socket whose outbox is full is told to close (slow consumer):
//! nobody is buffered without bound and nobody slows the others.
//! Membership events re-point a user's sockets, so they follow conversations they join and stop
//! hearing from conversations they leave. The hub also counts the subscriber's (re)connections:
//! a socket that sees the count move knows events may have been lost and catches up. When the
//! node stops, the hub tells every socket to close (`close_all`) and refuses new ones.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use crate::domain::{ConversationId, TenantId, UserId};
use crate::events::{Channel, Delivery, LiveEvent, Topic};

use super::socket::Utf8Bytes;

/// An event as every local socket receives it. A message's frame is the same for every recipient,
/// so the first socket to send it encodes it and the others reuse the bytes.
pub struct SharedEvent {
    pub event: LiveEvent,
    pub(super) frame: OnceLock<Utf8Bytes>,
}

impl SharedEvent {
    pub fn new(event: LiveEvent) -> Self {
        Self { event, frame: OnceLock::new() }
    }
}

#[derive(Clone)]
pub struct Outbox {
    pub tx: mpsc::Sender<Arc<SharedEvent>>,
    /// Notified when the socket must close because it fell behind.
    pub slow: Arc<Notify>,
}

type ConversationKey = (TenantId, ConversationId);
type UserKey = (TenantId, UserId);

struct Socket {
    user: UserKey,
    outbox: Outbox,
    conversations: HashSet<ConversationId>,
}

#[derive(Default)]
struct Registry {
    sockets: HashMap<u64, Socket>,
    by_conversation: HashMap<ConversationKey, HashSet<u64>>,
    by_user: HashMap<UserKey, HashSet<u64>>,
    /// Sockets per tenant: an event of a tenant with none here is not even decoded.
    by_tenant: HashMap<TenantId, usize>,
}

impl Registry {
    fn follow(&mut self, socket: u64, conversation: &ConversationId) {
        let Some(entry) = self.sockets.get_mut(&socket) else { return };
        entry.conversations.insert(conversation.clone());
        self.by_conversation.entry((entry.user.0.clone(), conversation.clone())).or_default().insert(socket);
    }

    fn unfollow(&mut self, socket: u64, conversation: &ConversationId) {
        let Some(entry) = self.sockets.get_mut(&socket) else { return };
        entry.conversations.remove(conversation);
        let key = (entry.user.0.clone(), conversation.clone());
        if let Some(set) = self.by_conversation.get_mut(&key) {
            set.remove(&socket);
            if set.is_empty() {
                self.by_conversation.remove(&key);
            }
        }
    }
}

/// A name for this process, recorded on its connections ("which node holds this socket").
struct NodeName(String);

impl Default for NodeName {
    fn default() -> Self {
        let random = uuid::Uuid::now_v7().simple().to_string();
        Self(format!("node-{}", &random[random.len() - 12..]))
    }
}

#[derive(Default)]
pub struct Hub {
    node: NodeName,
    next_id: AtomicU64,
    subscriptions: AtomicU64,
    registry: Mutex<Registry>,
    /// Becomes `true` once when the node stops: every socket closes.
    closing: watch::Sender<bool>,
    /// Socket tasks that have not ended: a stopping node waits for them, as each ends by telling
    /// Redis (and so everyone sharing a conversation with its user) that it closed.
    live: Arc<watch::Sender<usize>>,
}

/// Counts its socket's task as live until it drops.
pub struct LiveSocket(Arc<watch::Sender<usize>>);

impl Drop for LiveSocket {
    fn drop(&mut self) {
        self.0.send_modify(|live| *live -= 1);
    }
}

impl Hub {
    pub fn node_id(&self) -> &str {
        &self.node.0
    }

    /// Called each time this node's Redis subscriber (re)subscribes.
    pub fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the subscriber has subscribed; a change means events may have been missed.
    pub fn subscription_epoch(&self) -> u64 {
        self.subscriptions.load(Ordering::SeqCst)
    }

    /// What a socket watches for the node's stop; `None` once it has begun (refuse the socket).
    pub fn closing(&self) -> Option<watch::Receiver<bool>> {
        let closing = self.closing.subscribe();
        let stopping = *closing.borrow();
        (!stopping).then_some(closing)
    }

    /// For a node that is stopping: every socket closes (with 1012, so clients reconnect to
    /// another node), and `closing` refuses new ones.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Counts a socket's task as live until the guard drops.
    pub fn live_socket(&self) -> LiveSocket {
        self.live.send_modify(|live| *live += 1);
        LiveSocket(self.live.clone())
    }

    /// Waits until every socket task has ended, at most `limit`.
    pub async fn sockets_ended(&self, limit: Duration) {
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(limit, live.wait_for(|live| *live == 0)).await;
    }

    pub fn next_socket_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(
        &self,
        socket: u64,
        tenant: &TenantId,
        user: &UserId,
        conversations: &[ConversationId],
        outbox: &Outbox,
    ) {
        let mut registry = self.registry.lock().expect("hub lock");
        let user_key = (tenant.clone(), user.clone());
        registry.by_user.entry(user_key.clone()).or_default().insert(socket);
        let known = registry
            .sockets
            .insert(socket, Socket { user: user_key, outbox: outbox.clone(), conversations: HashSet::new() });
        if known.is_none() {
            *registry.by_tenant.entry(tenant.clone()).or_default() += 1;
        }
        for conversation in conversations {
            registry.follow(socket, conversation);
        }
    }

    pub fn unregister(&self, socket: u64) {
        let mut registry = self.registry.lock().expect("hub lock");
        let Some(entry) = registry.sockets.get(&socket) else { return };
        let (user, conversations): (UserKey, Vec<ConversationId>) =
            (entry.user.clone(), entry.conversations.iter().cloned().collect());
        for conversation in &conversations {
            registry.unfollow(socket, conversation);
        }
        registry.sockets.remove(&socket);
        if let Some(count) = registry.by_tenant.get_mut(&user.0) {
            *count -= 1;
            if *count == 0 {
                registry.by_tenant.remove(&user.0);
            }
        }
        if let Some(set) = registry.by_user.get_mut(&user) {
            set.remove(&socket);
            if set.is_empty() {
                registry.by_user.remove(&user);
            }
        }
    }

    /// Decodes an event and offers it to the local sockets it concerns. The node hears every
    /// tenant's events, so one of a tenant with no socket here is dropped undecoded.
    pub fn dispatch(&self, delivery: Delivery) {
        if !self.registry.lock().expect("hub lock").by_tenant.contains_key(&delivery.tenant) {
            return;
        }
        let Ok(event) = bson::from_slice::<LiveEvent>(&delivery.payload) else {
            tracing::warn!("dropping an undecodable event");
            return;
        };
        let misrouted = match &event {
            LiveEvent::Created { message } | LiveEvent::Updated { message } => message.tenant_id != delivery.tenant,
            _ => false,
        };
        let on_its_channel = match (event.topic(), &delivery.channel) {
            (Topic::Conversation(id), Channel::Conversation(channel)) => id == channel,
            (Topic::Presence, Channel::Presence) => true,
            _ => false,
        };
        if misrouted || !on_its_channel {
            tracing::warn!("dropping an event published on the wrong channel");
            return;
        }
        let outboxes: Vec<Outbox> = {
            let mut registry = self.registry.lock().expect("hub lock");
            let targets = registry.targets(&delivery.tenant, &event);
            targets.iter().filter_map(|s| registry.sockets.get(s).map(|entry| entry.outbox.clone())).collect()
        };
        let live = Arc::new(SharedEvent::new(event));
        for outbox in outboxes {
            if outbox.tx.try_send(live.clone()).is_err() {
                outbox.slow.notify_one();
            }
        }
    }
}

impl Registry {
    fn following(&self, tenant: &TenantId, conversation: &ConversationId) -> impl Iterator<Item = u64> + '_ {
        self.by_conversation.get(&(tenant.clone(), conversation.clone())).into_iter().flatten().copied()
    }

    fn of_user(&self, tenant: &TenantId, user: &UserId) -> Vec<u64> {
        self.by_user.get(&(tenant.clone(), user.clone())).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// The local sockets an event goes to. Membership changes first re-point the member's own
    /// sockets, then go to them and to everyone following the conversation.
    fn targets(&mut self, tenant: &TenantId, event: &LiveEvent) -> HashSet<u64> {
        match event {
            LiveEvent::Joined { conversation_id, user_id, .. } | LiveEvent::Left { conversation_id, user_id } => {
                let own = self.of_user(tenant, user_id);
                for socket in &own {
                    if matches!(event, LiveEvent::Joined { .. }) {
                        self.follow(*socket, conversation_id);
                    } else {
                        self.unfollow(*socket, conversation_id);
                    }
                }
                self.following(tenant, conversation_id).chain(own).collect()
            }
            LiveEvent::Presence { user_id, conversations, .. } => {
                let own: HashSet<u64> = self.of_user(tenant, user_id).into_iter().collect();
                conversations
                    .iter()
                    .flat_map(|c| self.following(tenant, c))
                    .filter(|socket| !own.contains(socket))
                    .collect()
            }
            other => match other.topic() {
                Topic::Conversation(id) => self.following(tenant, id).collect(),
                Topic::Presence | Topic::Document(_) | Topic::Cache => HashSet::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> (Outbox, mpsc::Receiver<Arc<SharedEvent>>) {
        let (tx, rx) = mpsc::channel(8);
        (Outbox { tx, slow: Arc::new(Notify::new()) }, rx)
    }

    fn typing(tenant: &TenantId, conversation: &ConversationId) -> Delivery {
        let user = UserId::parse("bob").unwrap();
        let event = LiveEvent::Typing { conversation_id: conversation.clone(), user_id: user, typing: true };
        let payload = bson::to_vec(&event).unwrap();
        Delivery { tenant: tenant.clone(), channel: Channel::Conversation(conversation.clone()), payload }
    }

    #[test]
    fn events_reach_followers_while_their_tenant_has_sockets_here() {
        let hub = Hub::default();
        let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
        let conversation = ConversationId::new();
        let alice = UserId::parse("alice").unwrap();
        let ((first, mut first_rx), (second, mut second_rx)) = (outbox(), outbox());
        hub.register(1, &acme, &alice, std::slice::from_ref(&conversation), &first);
        hub.register(1, &acme, &alice, std::slice::from_ref(&conversation), &first);
        hub.register(2, &acme, &alice, std::slice::from_ref(&conversation), &second);
        hub.register(3, &globex, &alice, &[], &outbox().0);

        hub.dispatch(typing(&acme, &conversation));
        assert!(first_rx.try_recv().is_ok() && second_rx.try_recv().is_ok());

        hub.unregister(1);
        hub.dispatch(typing(&acme, &conversation));
        assert!(second_rx.try_recv().is_ok(), "one socket of the tenant is still here");
        assert_eq!(hub.registry.lock().unwrap().by_tenant.get(&acme), Some(&1), "a repeated register counted once");

        hub.unregister(2);
        hub.unregister(2);
        assert!(!hub.registry.lock().unwrap().by_tenant.contains_key(&acme));
        assert_eq!(hub.registry.lock().unwrap().by_tenant.get(&globex), Some(&1));
    }

    #[tokio::test]
    async fn a_stop_waits_for_live_sockets_and_no_longer() {
        let hub = Arc::new(Hub::default());
        hub.sockets_ended(Duration::from_secs(5)).await;
        let (first, second) = (hub.live_socket(), hub.live_socket());
        let started = std::time::Instant::now();
        hub.sockets_ended(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "two sockets live: waited the limit");
        drop(first);
        let ending = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(second);
        });
        let started = std::time::Instant::now();
        hub.sockets_ended(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(4), "ended as the last socket did");
        ending.await.unwrap();
    }
}
