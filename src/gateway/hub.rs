//! This node's registry of live sockets by (tenant, conversation). The node's single Redis
//! subscriber hands every event here; the hub decodes it once and offers it to each local
//! socket's bounded outbox. A socket whose outbox is full is told to close (slow consumer):
//! nobody is buffered without bound and nobody slows the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::domain::{ConversationId, TenantId};
use crate::events::{Delivery, LiveEvent};

#[derive(Clone)]
pub struct Outbox {
    pub tx: mpsc::Sender<Arc<LiveEvent>>,
    /// Notified when the socket must close because it fell behind.
    pub slow: Arc<Notify>,
}

type Key = (TenantId, ConversationId);

#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    sockets: Mutex<HashMap<Key, HashMap<u64, Outbox>>>,
}

impl Hub {
    pub fn next_socket_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(&self, socket: u64, tenant: &TenantId, conversations: &[ConversationId], outbox: &Outbox) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        for conversation in conversations {
            sockets.entry((tenant.clone(), conversation.clone())).or_default().insert(socket, outbox.clone());
        }
    }

    pub fn unregister(&self, socket: u64, tenant: &TenantId, conversations: &[ConversationId]) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        for conversation in conversations {
            let key = (tenant.clone(), conversation.clone());
            if let Some(entry) = sockets.get_mut(&key) {
                entry.remove(&socket);
                if entry.is_empty() {
                    sockets.remove(&key);
                }
            }
        }
    }

    /// Decodes an event and offers it to the local sockets of its conversation.
    pub fn dispatch(&self, delivery: Delivery) {
        let key = (delivery.tenant, delivery.conversation);
        let outboxes: Vec<Outbox> = match self.sockets.lock().expect("hub lock").get(&key) {
            Some(entry) => entry.values().cloned().collect(),
            None => return,
        };
        let Ok(event) = bson::from_slice::<LiveEvent>(&delivery.payload) else {
            tracing::warn!("dropping an undecodable event");
            return;
        };
        let misrouted = match &event {
            LiveEvent::Created { message } | LiveEvent::Updated { message } => message.tenant_id != key.0,
            _ => false,
        };
        if misrouted || event.conversation_id() != &key.1 {
            tracing::warn!("dropping an event published on the wrong channel");
            return;
        }
        let live = Arc::new(event);
        for outbox in outboxes {
            if outbox.tx.try_send(live.clone()).is_err() {
                outbox.slow.notify_one();
            }
        }
    }
}
