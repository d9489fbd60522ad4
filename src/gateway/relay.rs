//! From stored messages and live events to server frames. Every conversation keeps the highest
//! seq delivered, so live events that arrive twice are dropped and a gap (a dropped pub/sub
//! event, or a resume) is filled from MongoDB before newer messages go out: a client sees each
//! message once, in seq order.

use std::collections::HashMap;

use crate::domain::{ConversationId, Message};
use crate::events::LiveEvent;
use crate::http::live_message_view;

use super::hub::SharedEvent;
use super::protocol::ServerFrame;
use super::session::{Connection, TYPING_EXPIRY};
use super::socket::{Closed, Sender, Utf8Bytes};

fn message_frame(message: Message, updated: bool) -> String {
    let conversation_id = message.conversation_id.to_string();
    let message = live_message_view(message);
    let frame = if updated {
        ServerFrame::MessageUpdated { conversation_id, message }
    } else {
        ServerFrame::MessageNew { conversation_id, message }
    };
    frame.to_text()
}

/// Sends what the client is missing in `id` up to `upto`, from MongoDB: at most
/// `gateway.max_replay` messages, preceded by a `gap` frame naming the range it must fetch over
/// REST if there is more.
pub(super) async fn catch_up(
    connection: &mut Connection,
    session: &mut Sender,
    id: &ConversationId,
    upto: i64,
) -> Result<(), Closed> {
    let Some(&delivered) = connection.delivered.get(id) else { return Ok(()) };
    let from = delivered + 1;
    if from > upto {
        return Ok(());
    }
    let max_replay = connection.state.settings.gateway.max_replay;
    let gap = |from_seq, to_seq| ServerFrame::Gap { conversation_id: id.to_string(), from_seq, to_seq }.to_text();
    let start = if upto - from + 1 > max_replay {
        session.text(gap(from, upto - max_replay)).await?;
        upto - max_replay + 1
    } else {
        from
    };
    match connection.db.messages().range(id, start, upto).await {
        Ok(messages) => {
            for message in messages {
                session.text(message_frame(message, false)).await?;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not replay messages; announcing a gap");
            session.text(gap(start, upto)).await?;
        }
    }
    connection.delivered.insert(id.clone(), upto);
    Ok(())
}

/// Re-reads the last seq of every followed conversation and delivers what is missing: repairs
/// messages whose live event never arrived (Redis restarted, a publish failed) even in
/// conversations where nothing else happens.
///
/// A message stored just now usually has its live event on the way (or waiting in this socket's
/// outbox), so a head found ahead is only remembered: the next sweep, a period later, catches up
/// to it if the event still has not come. Replaying it at once would read from MongoDB and send
/// what the live events bring anyway, while they pile up behind the replay. After the node's
/// subscriber reconnected (`lost`), events published meanwhile are gone: it catches up at once.
pub(super) async fn sweep(connection: &mut Connection, session: &mut Sender, lost: bool) -> Result<(), Closed> {
    let ids: Vec<ConversationId> = connection.delivered.keys().cloned().collect();
    // The recorded counters, not the heads in Redis: a sweep repairs what Redis lost, and a
    // counter trails its sends by `chat.record_interval_ms` at most, far less than a period.
    let Ok(conversations) = connection.db.conversations().get_many(&ids).await else { return Ok(()) };
    let behind: HashMap<ConversationId, i64> = conversations
        .into_iter()
        .filter(|c| connection.delivered.get(&c.id).is_some_and(|d| c.last_seq > *d))
        .map(|c| (c.id, c.last_seq))
        .collect();
    let due = if lost {
        connection.behind.clear();
        behind
    } else {
        std::mem::replace(&mut connection.behind, behind)
    };
    for (id, upto) in due {
        catch_up(connection, session, &id, upto).await?;
    }
    Ok(())
}

/// Passes one live event to the client, in the frame format of docs/realtime.md.
pub(super) async fn relay(
    connection: &mut Connection,
    session: &mut Sender,
    shared: &SharedEvent,
) -> Result<(), Closed> {
    let me = connection.caller.user_id();
    let shared_frame = |message: &Message, updated| {
        shared.frame.get_or_init(|| message_frame(message.clone(), updated).into()).clone()
    };
    let frame = match &shared.event {
        LiveEvent::Created { message } => {
            return deliver(connection, session, message, shared_frame(message, false)).await;
        }
        LiveEvent::Updated { message } => {
            // A change to a message the client has not been sent yet reaches it with the message.
            if connection.delivered.get(&message.conversation_id).is_none_or(|d| message.seq > *d) {
                return Ok(());
            }
            return session.text(shared_frame(message, true)).await;
        }
        LiveEvent::Typing { conversation_id, user_id, typing } if user_id != me => ServerFrame::Typing {
            conversation_id: conversation_id.to_string(),
            user_id: user_id.to_string(),
            typing: *typing,
            expires_in_ms: TYPING_EXPIRY.as_millis() as u64,
        }
        .to_text(),
        LiveEvent::Joined { conversation_id, user_id, after_seq } if user_id == me => {
            connection.delivered.entry(conversation_id.clone()).or_insert(*after_seq);
            ServerFrame::ConversationJoined { conversation_id: conversation_id.to_string(), after_seq: *after_seq }
                .to_text()
        }
        LiveEvent::Joined { conversation_id, user_id, .. } => {
            ServerFrame::MemberJoined { conversation_id: conversation_id.to_string(), user_id: user_id.to_string() }
                .to_text()
        }
        LiveEvent::Left { conversation_id, user_id } if user_id == me => {
            connection.delivered.remove(conversation_id);
            ServerFrame::ConversationLeft { conversation_id: conversation_id.to_string() }.to_text()
        }
        LiveEvent::Left { conversation_id, user_id } => {
            ServerFrame::MemberLeft { conversation_id: conversation_id.to_string(), user_id: user_id.to_string() }
                .to_text()
        }
        LiveEvent::MemberUpdated { conversation_id, user_id, role } => ServerFrame::MemberUpdated {
            conversation_id: conversation_id.to_string(),
            user_id: user_id.to_string(),
            role: *role,
        }
        .to_text(),
        LiveEvent::Pinned { conversation_id, seq, pinned, by } => ServerFrame::MessagePinned {
            conversation_id: conversation_id.to_string(),
            seq: *seq,
            pinned: *pinned,
            by: by.to_string(),
        }
        .to_text(),
        LiveEvent::Workspace { session_id, change, item_id, path, item_kind, by, .. } => {
            ServerFrame::WorkspaceChanged {
                session_id: session_id.to_string(),
                change: change.clone(),
                item_id: item_id.to_string(),
                path: path.clone(),
                kind: *item_kind,
                by: by.to_string(),
            }
            .to_text()
        }
        LiveEvent::Read { conversation_id, user_id, last_read_seq } if user_id != me => ServerFrame::Read {
            conversation_id: conversation_id.to_string(),
            user_id: user_id.to_string(),
            last_read_seq: *last_read_seq,
        }
        .to_text(),
        LiveEvent::Presence { user_id, online, last_seen_at, .. } if user_id != me => {
            ServerFrame::Presence { user_id: user_id.to_string(), online: *online, last_seen_at: *last_seen_at }
                .to_text()
        }
        _ => return Ok(()),
    };
    session.text(frame).await
}

/// Sends a live message (`frame`) once, after anything missing before it.
async fn deliver(
    connection: &mut Connection,
    session: &mut Sender,
    message: &Message,
    frame: Utf8Bytes,
) -> Result<(), Closed> {
    let id = &message.conversation_id;
    let Some(&delivered) = connection.delivered.get(id) else { return Ok(()) };
    if message.seq <= delivered {
        return Ok(());
    }
    if message.seq > delivered + 1 {
        catch_up(connection, session, id, message.seq - 1).await?;
    }
    session.text(frame).await?;
    connection.delivered.insert(id.clone(), message.seq);
    Ok(())
}
