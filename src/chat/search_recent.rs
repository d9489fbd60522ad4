//! The texts of the messages this node stored lately, per conversation, so the search indexer
//! can cut a block of them without reading back what the committers have just written: reading
//! 256 messages costs the database about as much per message as inserting them did.
//!
//! Only an unbroken run of seqs is kept per conversation. A seq stored by another node breaks the
//! run (it starts again at the next seq this node stores), and a block that is not wholly held
//! here is read from MongoDB as before. A text held here may be older than the stored one (an
//! edit landed since): that is safe because an edit or delete first makes sure the block holding
//! its message exists (`search::before_change`), so a block cut from here later cannot hold that
//! seq (its `_id` is taken), and one stored earlier gets the new words added and is rebuilt.
//! The texts held are bounded by `chat.search_recent_texts_max_bytes` per node; past it, runs
//! are broken rather than grown.

use std::collections::{HashMap, VecDeque};

use crate::domain::{ConversationId, Message, TenantId};

/// Bytes counted per held message beyond its id and text (the entry and its strings' headers).
const ENTRY_OVERHEAD: usize = 64;
/// Most seqs held per conversation: two blocks' worth, as an indexer a little behind needs.
const RUN_MAX: usize = 2 * super::search_index::BLOCK_MAX_MESSAGES as usize;

/// One stored message as a search block needs it: its id and its text (`None`: no plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredText {
    pub id: String,
    pub text: Option<String>,
}

impl StoredText {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD + self.id.len() + self.text.as_ref().map_or(0, String::len)
    }
}

/// Consecutive seqs from `first_seq` of one conversation.
#[derive(Default)]
struct Run {
    first_seq: i64,
    texts: VecDeque<StoredText>,
}

impl Run {
    fn next_seq(&self) -> i64 {
        self.first_seq + self.texts.len() as i64
    }

    fn bytes(&self) -> usize {
        self.texts.iter().map(StoredText::bytes).sum()
    }
}

pub struct RecentTexts {
    runs: HashMap<(TenantId, ConversationId), Run>,
    bytes: usize,
    max_bytes: usize,
}

impl RecentTexts {
    pub fn new(max_bytes: usize) -> Self {
        Self { runs: HashMap::new(), bytes: 0, max_bytes }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds a stored message's text. Messages of a conversation come in seq order; one that
    /// does not follow the run starts a new run.
    pub fn record(&mut self, tenant: &TenantId, message: &Message) {
        let key = (tenant.clone(), message.conversation_id.clone());
        let text = StoredText { id: message.id.clone(), text: message.text.clone() };
        let size = text.bytes();
        let run = self.runs.entry(key.clone()).or_default();
        let mut freed = 0;
        if run.next_seq() != message.seq {
            freed += run.bytes();
            run.texts.clear();
            run.first_seq = message.seq;
        }
        if run.texts.len() == RUN_MAX {
            freed += run.texts.pop_front().map_or(0, |t| t.bytes());
            run.first_seq += 1;
        }
        self.bytes -= freed;
        if size > self.max_bytes.saturating_sub(self.bytes) {
            // Not holding this one breaks the run: the next seq starts a new one.
            if let Some(run) = self.runs.remove(&key) {
                self.bytes -= run.bytes();
            }
            return;
        }
        run.texts.push_back(text);
        self.bytes += size;
    }

    /// The texts of seqs `from..=to` of a conversation, if all of them are held (they are then
    /// let go). Texts of seqs before `from` are let go either way: blocks only move forward.
    pub fn take(
        &mut self,
        tenant: &TenantId,
        conversation: &ConversationId,
        from: i64,
        to: i64,
    ) -> Option<Vec<StoredText>> {
        let key = (tenant.clone(), conversation.clone());
        let run = self.runs.get_mut(&key)?;
        let passed = (from - run.first_seq).clamp(0, run.texts.len() as i64) as usize;
        let mut freed: usize = run.texts.drain(..passed).map(|t| t.bytes()).sum();
        run.first_seq += passed as i64;
        let wanted = (to - from + 1).max(0) as usize;
        let taken = (wanted > 0 && run.first_seq == from && run.texts.len() >= wanted).then(|| {
            let taken: Vec<StoredText> = run.texts.drain(..wanted).collect();
            run.first_seq += wanted as i64;
            freed += taken.iter().map(StoredText::bytes).sum::<usize>();
            taken
        });
        if run.texts.is_empty() {
            self.runs.remove(&key);
        }
        self.bytes -= freed;
        taken
    }

    /// Lets go of the texts of seqs up to `upto`: another writer indexed them.
    pub fn let_go_through(&mut self, tenant: &TenantId, conversation: &ConversationId, upto: i64) {
        let _ = self.take(tenant, conversation, upto + 1, upto);
    }

    /// Lets go of everything held for `tenant`.
    pub fn forget_tenant(&mut self, tenant: &TenantId) {
        let mut freed = 0;
        self.runs.retain(|(t, _), run| {
            let keep = t != tenant;
            if !keep {
                freed += run.bytes();
            }
            keep
        });
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageKind, UserId};

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn message(conversation: &ConversationId, seq: i64, text: &str) -> Message {
        let sender = UserId::parse("alice").unwrap();
        let mut m = Message::draft(&tenant(), conversation, &sender, MessageKind::Text, format!("c{seq}"));
        m.seq = seq;
        m.text = Some(text.to_string());
        m
    }

    fn texts(taken: Option<Vec<StoredText>>) -> Vec<String> {
        taken.expect("held").into_iter().map(|t| t.text.unwrap()).collect()
    }

    #[test]
    fn a_held_run_gives_its_blocks_in_order_and_lets_them_go() {
        let (mut recent, c) = (RecentTexts::new(1 << 20), ConversationId::new());
        for seq in 1..=5 {
            recent.record(&tenant(), &message(&c, seq, &format!("t{seq}")));
        }
        assert_eq!(texts(recent.take(&tenant(), &c, 1, 3)), ["t1", "t2", "t3"]);
        assert!(recent.take(&tenant(), &c, 4, 6).is_none(), "seq 6 is not held");
        assert_eq!(texts(recent.take(&tenant(), &c, 4, 5)), ["t4", "t5"]);
        assert_eq!(recent.bytes(), 0, "everything taken is let go");
    }

    #[test]
    fn a_gap_or_a_block_starting_earlier_than_the_run_is_not_held() {
        let (mut recent, c) = (RecentTexts::new(1 << 20), ConversationId::new());
        for seq in [1, 2, 4, 5] {
            recent.record(&tenant(), &message(&c, seq, &format!("t{seq}")));
        }
        assert!(recent.take(&tenant(), &c, 1, 2).is_none(), "seq 3 came from elsewhere: the run restarted at 4");
        assert!(recent.take(&tenant(), &c, 3, 5).is_none());
        assert_eq!(texts(recent.take(&tenant(), &c, 4, 5)), ["t4", "t5"]);
        for seq in [6, 7, 8] {
            recent.record(&tenant(), &message(&c, seq, "x"));
        }
        // Another node indexed up to 6: the block from 7 is still held.
        assert_eq!(texts(recent.take(&tenant(), &c, 7, 8)), ["x", "x"]);
        assert_eq!(recent.bytes(), 0);
    }

    #[test]
    fn the_byte_budget_breaks_runs_instead_of_growing() {
        let (c, d) = (ConversationId::new(), ConversationId::new());
        let one = StoredText { id: message(&c, 1, "hello").id, text: Some("hello".into()) }.bytes();
        let mut recent = RecentTexts::new(3 * one);
        for seq in 1..=3 {
            recent.record(&tenant(), &message(&c, seq, "hello"));
        }
        recent.record(&tenant(), &message(&d, 1, "hello"));
        assert_eq!(recent.bytes(), 3 * one);
        assert!(recent.take(&tenant(), &d, 1, 1).is_none(), "over budget: not held");
        recent.record(&tenant(), &message(&c, 4, "hello"));
        assert_eq!(recent.bytes(), 0, "over budget, the run it would have grown is let go");
        assert!(recent.take(&tenant(), &c, 1, 3).is_none());
        recent.record(&tenant(), &message(&c, 5, "hello"));
        assert_eq!(texts(recent.take(&tenant(), &c, 5, 5)), ["hello"], "a new run starts after the gap");
        recent.record(&tenant(), &message(&c, 6, "hello"));
        recent.forget_tenant(&tenant());
        assert_eq!(recent.bytes(), 0);
        assert!(recent.take(&tenant(), &c, 6, 6).is_none());
    }

    #[test]
    fn a_run_keeps_only_its_newest_seqs() {
        let (mut recent, c) = (RecentTexts::new(usize::MAX), ConversationId::new());
        for seq in 1..=(RUN_MAX as i64 + 10) {
            recent.record(&tenant(), &message(&c, seq, "w"));
        }
        assert!(recent.take(&tenant(), &c, 1, 256).is_none(), "the oldest ten went");
        assert_eq!(texts(recent.take(&tenant(), &c, 11, 266)).len(), 256);
        assert_eq!(texts(recent.take(&tenant(), &c, 267, RUN_MAX as i64 + 10)).len(), RUN_MAX - 256);
        assert_eq!(recent.bytes(), 0);
    }

    #[test]
    fn texts_another_writer_indexed_are_let_go_and_tenants_are_apart() {
        let (mut recent, c) = (RecentTexts::new(1 << 20), ConversationId::new());
        let other = TenantId::parse("globex").unwrap();
        for seq in 1..=4 {
            recent.record(&tenant(), &message(&c, seq, "mine"));
        }
        recent.record(&other, &message(&c, 1, "theirs"));
        recent.let_go_through(&tenant(), &c, 3);
        assert!(recent.take(&tenant(), &c, 1, 3).is_none());
        assert_eq!(texts(recent.take(&tenant(), &c, 4, 4)), ["mine"]);
        recent.let_go_through(&tenant(), &c, 10);
        assert_eq!(texts(recent.take(&other, &c, 1, 1)), ["theirs"]);
        assert_eq!(recent.bytes(), 0, "nothing is left behind");
    }
}
