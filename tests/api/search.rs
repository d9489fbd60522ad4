//! Word search over search blocks and the messages not indexed yet: pages run newest first over
//! both, indexers racing on two nodes tile every conversation's seqs exactly once, a search
//! indexes a conversation far behind, and edited or deleted text leaves no words stored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ChatTenant, TestApp, spawn_app_with};

pub(crate) fn search(q: &str) -> String {
    format!("/v1/search/messages?q={q}")
}

/// Indexing every 20 ms whatever a conversation has gathered, or (`None`) practically never.
fn indexing_every(ms: Option<u64>) -> Vec<(&'static str, String)> {
    vec![
        ("chat.search_index_interval_ms", ms.unwrap_or(3_600_000).to_string()),
        ("chat.search_block_min_messages", "1".into()),
    ]
}

async fn app_indexing_every(ms: Option<u64>) -> TestApp {
    spawn_app_with(&indexing_every(ms)).await
}

/// A tenant whose request rate allows the bursts below.
pub(crate) async fn busy_tenant(app: &TestApp) -> ChatTenant {
    let id = app.create_tenant_with(json!({"limits": {"requests_per_second": 100000}})).await;
    let (key, _) = app.issue_key(&id, None).await;
    ChatTenant { id, key }
}

/// Alice's token and a group of her and Bob.
pub(crate) async fn alice_with_bob(app: &TestApp, tenant: &ChatTenant) -> (String, String) {
    let alice = app.user(tenant, "alice").await;
    app.user(tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    (alice, conversation)
}

/// Sends `count` messages "{word} number{n}", 100 at a time.
pub(crate) async fn send_numbered(app: &TestApp, token: &str, conversation: &str, word: &str, count: usize) {
    for chunk in (0..count).step_by(100) {
        let sends = (chunk..count.min(chunk + 100))
            .map(|n| async move { app.say(token, conversation, &format!("{word} number{n}")).await });
        for sent in futures_util::future::join_all(sends).await {
            assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        }
    }
}

pub(crate) async fn hits(app: &TestApp, token: &str, q: &str) -> Vec<i64> {
    let reply = app.call(Method::GET, &search(q), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

pub(crate) fn tenant_db(app: &TestApp, client: &mongodb::Client, tenant: &str) -> mongodb::Database {
    client.database(&app.tenant_db_name(tenant))
}

/// Each conversation's `(search_indexed_upto, last_seq)`.
pub(crate) async fn marks(db: &mongodb::Database) -> BTreeMap<String, (i64, i64)> {
    let conversations: Vec<Document> =
        db.collection::<Document>("conversations").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    conversations
        .into_iter()
        .map(|c| {
            let upto = c.get_i64("search_indexed_upto").unwrap_or(0);
            (c.get_str("_id").unwrap().to_string(), (upto, c.get_i64("last_seq").unwrap()))
        })
        .collect()
}

/// The conversation's marks `(indexed_upto, last_seq)` once its counter counts `n` messages (it
/// is recorded behind the sends).
pub(crate) async fn counted(db: &mongodb::Database, conversation: &str, n: i64) -> (i64, i64) {
    let started = Instant::now();
    loop {
        let mark = marks(db).await[conversation];
        if mark.1 >= n || started.elapsed() > Duration::from_secs(5) {
            return mark;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each conversation's newest stored seq, from its messages.
pub(crate) async fn stored_upto(db: &mongodb::Database) -> BTreeMap<String, i64> {
    let newest = [doc! { "$group": { "_id": "$conversation_id", "seq": { "$max": "$seq" } } }];
    let found: Vec<Document> =
        db.collection::<Document>("messages").aggregate(newest).await.unwrap().try_collect().await.unwrap();
    found.into_iter().map(|n| (n.get_str("_id").unwrap().to_string(), n.get_i64("seq").unwrap())).collect()
}

/// Waits until every conversation's counter counts its stored messages (it is recorded behind
/// the sends) and the conversation is indexed up to it.
pub(crate) async fn fully_indexed(db: &mongodb::Database) {
    let started = Instant::now();
    loop {
        let (marks, stored) = (marks(db).await, stored_upto(db).await);
        let counted = |id: &String, last: i64| last == stored.get(id).copied().unwrap_or(0);
        if marks.iter().all(|(id, (upto, last))| upto == last && counted(id, *last)) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not indexed: {marks:?}, stored: {stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stored block: `(from_seq, to_seq, words)`.
pub(crate) type Block = (i64, i64, BTreeSet<String>);

/// Each conversation's blocks, in seq order.
pub(crate) async fn blocks(db: &mongodb::Database) -> BTreeMap<String, Vec<Block>> {
    let stored: Vec<Document> =
        db.collection::<Document>("search_blocks").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    let mut by_conversation: BTreeMap<String, Vec<Block>> = BTreeMap::new();
    for block in stored {
        let words = block.get_array("terms").unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        let range = (block.get_i64("from_seq").unwrap(), block.get_i64("to_seq").unwrap());
        by_conversation
            .entry(block.get_str("conversation_id").unwrap().to_string())
            .or_default()
            .push((range.0, range.1, words));
    }
    for blocks in by_conversation.values_mut() {
        blocks.sort_by_key(|(from, _, _)| *from);
    }
    by_conversation
}

/// Blocks of every conversation cover seqs 1 up to its mark, each seq exactly once.
pub(crate) fn assert_tiled(blocks: &BTreeMap<String, Vec<Block>>, marks: &BTreeMap<String, (i64, i64)>) {
    for (conversation, (upto, _)) in marks {
        let mut next = 1;
        for (from, to, _) in blocks.get(conversation).map(Vec::as_slice).unwrap_or_default() {
            assert_eq!(*from, next, "{conversation}: blocks {:?}", blocks[conversation]);
            assert!(to >= from);
            next = to + 1;
        }
        assert_eq!(next - 1, *upto, "{conversation}: blocks end at the mark");
    }
}

#[tokio::test]
async fn pages_run_newest_first_over_indexed_and_unindexed_messages() {
    let app = app_indexing_every(Some(20)).await;
    let tenant = busy_tenant(&app).await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let first = app.conversation(&alice, "group", &["bob"]).await;
    let second = app.conversation(&bob, "group", &["alice"]).await;
    let mut kestrels = Vec::new();
    let mut both = Vec::new();
    let mut say = async |n: i64, conversation: &str| {
        let text = match n {
            n if n % 10 == 0 => format!("Kestrel and osprey, number {n}"),
            n if n % 7 == 0 => format!("a kestrel, number {n}"),
            n => format!("nothing to see, number {n}"),
        };
        let sent = app.say(&alice, conversation, &text).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        let id = sent.body["id"].as_str().unwrap().to_string();
        if n % 10 == 0 {
            both.push(id.clone());
        }
        if n % 10 == 0 || n % 7 == 0 {
            kestrels.push(id);
        }
    };
    // The two conversations interleaved in time, indexed in several blocks each.
    for n in 1..=150 {
        say(n, &first).await;
        say(n, &second).await;
    }
    let client = app.mongo().await;
    let db = tenant_db(&app, &client, &tenant.id);
    fully_indexed(&db).await;
    // And some not indexed yet: searched right after they are stored.
    for n in 151..=160 {
        say(n, &first).await;
    }
    kestrels.reverse();
    both.reverse();
    let paged = app.collect_pages(&format!("{}&limit=7", search("kestrel")), &bob, "after", 7).await;
    assert_eq!(ids(&paged), kestrels, "every match once, newest first, over pages of 7");
    let paged = app.collect_pages(&format!("{}&limit=4", search("OSPREY%20kestrel")), &bob, "after", 4).await;
    assert_eq!(ids(&paged), both, "all words must occur");
    let scoped = format!("{}&conversation_id={second}&limit=50", search("osprey"));
    assert_eq!(app.collect_pages(&scoped, &bob, "after", 50).await.len(), 15, "one conversation's matches");
    assert_eq!(hits(&app, &bob, "kestrel%20nothing").await, Vec::<i64>::new(), "words of different messages");
    assert_eq!(hits(&app, &bob, "number%20149").await, [149, 149]);
    assert_eq!(hits(&app, &bob, "number%20160").await, [160]);

    fully_indexed(&db).await;
    let (blocks, marks) = (blocks(&db).await, marks(&db).await);
    assert_tiled(&blocks, &marks);
    assert!(blocks.values().any(|b| b.len() > 1), "several blocks: {blocks:?}");
    let words: BTreeSet<&str> = blocks.values().flatten().flat_map(|(_, _, w)| w.iter().map(String::as_str)).collect();
    assert!(words.contains("160") && words.contains("osprey") && !words.contains("Kestrel"), "{words:?}");
}

#[tokio::test]
async fn indexers_racing_on_two_nodes_tile_the_seqs_and_lose_no_words() {
    let first = app_indexing_every(Some(20)).await;
    let second = first.second_node_with(&indexing_every(Some(20))).await;
    let tenant = busy_tenant(&first).await;
    let (alice, conversation) = alice_with_bob(&first, &tenant).await;
    for round in 0..3 {
        let sends = (0..100).map(|n| {
            let node = if n % 2 == 0 { &first } else { &second };
            let (alice, conversation) = (&alice, &conversation);
            async move { node.say(alice, conversation, &format!("falcon word{round}x{n}")).await }
        });
        for sent in futures_util::future::join_all(sends).await {
            assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let client = first.mongo().await;
    let db = tenant_db(&first, &client, &tenant.id);
    fully_indexed(&db).await;
    let (blocks, marks) = (blocks(&db).await, marks(&db).await);
    assert_tiled(&blocks, &marks);
    let all = first.collect_pages(&format!("{}&limit=100", search("falcon")), &alice, "after", 100).await;
    let seqs: BTreeSet<i64> = all.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=300).collect(), "each message found once");
    // Every message's words are in the block of its seq.
    for message in &all {
        let seq = message["seq"].as_i64().unwrap();
        let word = message["text"].as_str().unwrap().split(' ').nth(1).unwrap();
        let (_, _, words) = blocks[&conversation].iter().find(|(from, to, _)| (*from..=*to).contains(&seq)).unwrap();
        assert!(words.contains(word) && words.contains("falcon"), "seq {seq}: {words:?}");
    }
}

/// Quiet conversations' messages wait for more (search reads them meanwhile), up to a time.
#[tokio::test]
async fn few_messages_wait_for_more_or_for_their_time_before_a_block() {
    let app = spawn_app_with(&[
        ("chat.search_index_interval_ms", "20".into()),
        ("chat.search_block_min_messages", "8".into()),
        ("chat.search_block_max_wait_ms", "1500".into()),
    ])
    .await;
    let tenant = busy_tenant(&app).await;
    let alice = app.user(&tenant, "alice").await;
    let _bob = app.user(&tenant, "bob").await;
    let busy = app.conversation(&alice, "group", &["bob"]).await;
    let quiet = app.conversation(&alice, "group", &["bob"]).await;
    let started = Instant::now();
    for n in 0..10 {
        assert_eq!(app.say(&alice, &busy, &format!("plover {n}")).await.status, StatusCode::CREATED);
    }
    assert_eq!(app.say(&alice, &quiet, "plover quiet").await.status, StatusCode::CREATED);
    assert_eq!(hits(&app, &alice, "quiet").await, [1], "found before it is indexed");
    let client = app.mongo().await;
    let db = tenant_db(&app, &client, &tenant.id);
    let waited = loop {
        let marks = marks(&db).await;
        if marks[&busy].0 >= 8 {
            break marks;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{marks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if started.elapsed() < Duration::from_millis(1200) {
        assert_eq!(waited[&quiet].0, 0, "one message waits for more");
        assert!(!blocks(&db).await.contains_key(&quiet));
    }
    fully_indexed(&db).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before its time");
    assert_eq!(blocks(&db).await[&quiet].len(), 1);
}

#[tokio::test]
async fn a_search_indexes_a_conversation_too_far_behind_to_read() {
    let app = app_indexing_every(None).await;
    let tenant = busy_tenant(&app).await;
    let (alice, conversation) = alice_with_bob(&app, &tenant).await;
    send_numbered(&app, &alice, &conversation, "heron", 600).await;
    let client = app.mongo().await;
    let db = tenant_db(&app, &client, &tenant.id);
    assert_eq!(counted(&db, &conversation, 600).await, (0, 600), "nothing indexed yet");
    assert_eq!(hits(&app, &alice, "number599").await.len(), 1);
    let (upto, last) = marks(&db).await[&conversation];
    assert!(last - upto <= 256 && upto > 0, "the search indexed the rest first: {upto} of {last}");
    assert_tiled(&blocks(&db).await, &marks(&db).await);
    let all = app.collect_pages(&format!("{}&limit=200", search("heron")), &alice, "after", 200).await;
    assert_eq!(all.len(), 600);
}

#[tokio::test]
async fn edited_and_deleted_text_leaves_no_words_stored() {
    let app = app_indexing_every(Some(20)).await;
    let tenant = busy_tenant(&app).await;
    let (alice, conversation) = alice_with_bob(&app, &tenant).await;
    for text in ["harrier alpha", "harrier beta", "!!!", "kept words"] {
        assert_eq!(app.say(&alice, &conversation, text).await.status, StatusCode::CREATED);
    }
    let client = app.mongo().await;
    let db = tenant_db(&app, &client, &tenant.id);
    fully_indexed(&db).await;
    let message = |seq: i64| format!("/v1/conversations/{conversation}/messages/{seq}");
    let edited = app.call(Method::PATCH, &message(2), &alice, Some(json!({"text": "gamma"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    // A message that had no words gets some.
    let edited = app.call(Method::PATCH, &message(3), &alice, Some(json!({"text": "delta"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    let deleted = app.call(Method::DELETE, &message(1), &alice, None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    // Edited most likely before the indexer reads it.
    assert_eq!(app.say(&alice, &conversation, "osprey").await.status, StatusCode::CREATED);
    let edited = app.call(Method::PATCH, &message(5), &alice, Some(json!({"text": "eagle"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    fully_indexed(&db).await;

    assert_eq!(hits(&app, &alice, "gamma").await, [2]);
    assert_eq!(hits(&app, &alice, "delta").await, [3]);
    assert_eq!(hits(&app, &alice, "harrier").await, Vec::<i64>::new());
    assert_eq!(hits(&app, &alice, "eagle").await, [5]);
    let words: BTreeSet<String> =
        blocks(&db).await.into_values().flatten().flat_map(|(_, _, words)| words.into_iter()).collect();
    let expected: BTreeSet<String> = ["gamma", "delta", "kept", "words", "eagle"].map(String::from).into();
    assert_eq!(words, expected, "only the live messages' words");
}
