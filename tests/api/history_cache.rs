//! History pages served from a node's copies of stored messages: a change to a message shows on
//! the next page on every node at once (or, made while Redis was unreachable, once it is back),
//! and one made behind confab's back within `cache.history_ttl_ms`.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Relay, TestApp, redis_url, spawn_app_with};

fn messages(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

/// The page of seqs `before - limit` to `before - 1`.
async fn page(app: &TestApp, token: &str, conversation: &str, before: i64, limit: i64) -> Vec<Value> {
    let path = format!("{}?before_seq={before}&limit={limit}", messages(conversation));
    let reply = app.call(Method::GET, &path, token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().unwrap().clone()
}

/// Seqs 1-4 (and, unseen, 5: the page reads one past its window).
async fn first_page(app: &TestApp, token: &str, conversation: &str) -> Vec<Value> {
    page(app, token, conversation, 5, 4).await
}

/// Alice and Bob's group with messages m1-m5 from Alice: (tenant, Alice's token, Bob's token,
/// conversation).
async fn five_messages(app: &TestApp) -> (String, String, String, String) {
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=5 {
        app.say(&alice, &conversation, &format!("m{n}")).await;
    }
    (tenant.id, alice, bob, conversation)
}

fn thumbs(message: &Value) -> Option<i64> {
    message["reactions"].as_array().unwrap().iter().find(|r| r["emoji"] == "👍").and_then(|r| r["count"].as_i64())
}

/// Copies that would otherwise live ten minutes: only the revision can make the pages right.
fn long_cache() -> Vec<(&'static str, String)> {
    vec![("cache.ttl_ms", "600000".to_string()), ("cache.history_ttl_ms", "600000".to_string())]
}

#[tokio::test]
async fn pages_read_again_on_either_node_show_every_change_made_since() {
    let long_cache = long_cache();
    let first = spawn_app_with(&long_cache).await;
    let second = first.second_node_with(&long_cache).await;
    let (_, alice, bob, conversation) = five_messages(&first).await;
    for (node, token) in [(&first, &alice), (&second, &bob)] {
        let page = first_page(node, token, &conversation).await;
        let texts: Vec<&str> = page.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4"]);
    }

    let message = |seq: i64| format!("{}/{seq}", messages(&conversation));
    let edited = first.call(Method::PATCH, &message(2), &alice, Some(json!({"text": "m2 again"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    let reacted = first.call(Method::PUT, &format!("{}/reactions/👍", message(3)), &bob, None).await;
    assert_eq!(reacted.status, StatusCode::NO_CONTENT, "{}", reacted.text);
    let reply = json!({"client_msg_id": "reply-1", "text": "answer", "reply_to": 1});
    let replied = first.call(Method::POST, &messages(&conversation), &bob, Some(reply)).await;
    assert_eq!(replied.status, StatusCode::CREATED, "{}", replied.text);
    assert_eq!(first.call(Method::DELETE, &message(4), &alice, None).await.status, StatusCode::NO_CONTENT);

    for (node, token) in [(&first, &alice), (&second, &bob)] {
        let page = first_page(node, token, &conversation).await;
        assert_eq!(page[0]["reply_count"], 1, "the reply counts on its parent");
        assert_eq!(page[1]["text"], "m2 again", "the edit shows");
        assert_eq!(thumbs(&page[2]), Some(1), "the reaction shows");
        assert_eq!((page[3]["deleted"].as_bool(), &page[3]["text"]), (Some(true), &Value::Null), "the delete shows");
    }

    let removed = first.call(Method::DELETE, &format!("{}/reactions/👍", message(3)), &bob, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert_eq!(thumbs(&first_page(&second, &bob, &conversation).await[2]), None, "so does the reaction's removal");
}

/// Changes to a stored message straight in MongoDB, as an operator repairing data would.
async fn rewrite_in_mongodb(app: &TestApp, tenant: &str, conversation: &str, seq: i64, text: &str) {
    let db = app.mongo().await.database(&app.tenant_db_name(tenant));
    let filter = doc! { "conversation_id": conversation, "seq": seq };
    let changed = db.collection::<Document>("messages").update_one(filter, doc! { "$set": { "text": text } }).await;
    assert_eq!(changed.unwrap().modified_count, 1);
}

#[tokio::test]
async fn a_change_behind_confabs_back_shows_within_the_cache_ttl_and_at_once_without_copies() {
    let ttl = Duration::from_millis(1500);
    let app = spawn_app_with(&[("cache.history_ttl_ms", ttl.as_millis().to_string())]).await;
    let (tenant, alice, _, conversation) = five_messages(&app).await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "m1");
    rewrite_in_mongodb(&app, &tenant, &conversation, 1, "repaired").await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "m1", "served from the node's copy");
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    for series in ["chat_history_pages_total{from=\"database\"}", "chat_history_pages_total{from=\"copies\"}"] {
        assert!(metrics.contains(series), "{series} missing from {metrics}");
    }
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "repaired", "no copy outlives the ttl");

    let uncached = spawn_app_with(&[("cache.history_messages", "0".to_string())]).await;
    let (tenant, alice, _, conversation) = five_messages(&uncached).await;
    assert_eq!(first_page(&uncached, &alice, &conversation).await[0]["text"], "m1");
    rewrite_in_mongodb(&uncached, &tenant, &conversation, 1, "repaired").await;
    assert_eq!(first_page(&uncached, &alice, &conversation).await[0]["text"], "repaired", "no copies kept");
}

#[tokio::test]
async fn a_page_read_from_mongodb_brings_copies_of_the_pages_around_it() {
    let app = spawn_app_with(&long_cache()).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=130 {
        assert_eq!(app.say(&alice, &conversation, &format!("m{n}")).await.status, StatusCode::CREATED);
    }
    let text_of = |page: &[Value], seq: i64| {
        let message = page.iter().find(|m| m["seq"] == seq).unwrap_or_else(|| panic!("seq {seq} missing"));
        message["text"].as_str().unwrap().to_string()
    };

    // Seqs 51-61 lie in the first block (1-64): the page reads all of it.
    let read = page(&app, &alice, &conversation, 61, 10).await;
    assert_eq!(read.len(), 10);
    assert_eq!((text_of(&read, 51), text_of(&read, 60)), ("m51".into(), "m60".into()));
    rewrite_in_mongodb(&app, &tenant.id, &conversation, 5, "repaired").await;
    let before = page(&app, &alice, &conversation, 11, 10).await;
    assert_eq!(before.len(), 10);
    assert_eq!(text_of(&before, 5), "m5", "served from the copies the page before read");

    // Seqs 120-130 lie in the second and third blocks (65-192): the page reads 65-130.
    let newest = page(&app, &alice, &conversation, 130, 10).await;
    assert_eq!(text_of(&newest, 129), "m129");
    rewrite_in_mongodb(&app, &tenant.id, &conversation, 70, "repaired").await;
    let between = page(&app, &alice, &conversation, 75, 10).await;
    assert_eq!(between.len(), 10);
    assert_eq!(text_of(&between, 70), "m70", "served from copies");
    // Seq 131 does not exist: a page reaching it is read again, and shows what MongoDB holds now.
    let last = page(&app, &alice, &conversation, 131, 70).await;
    assert_eq!(last.len(), 70);
    assert_eq!(text_of(&last, 70), "repaired");
}

/// How many history pages `/metrics` counts as served `from`.
async fn pages_from(app: &TestApp, from: &str) -> u64 {
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    let series = format!("chat_history_pages_total{{from=\"{from}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn pages_read_while_redis_gives_no_revision_use_no_copies_and_are_counted_apart() {
    let (relay, relayed) = Relay::redis().await;
    let mut cut_off = long_cache();
    cut_off.extend([("redis.url", relayed), ("redis.timeout_ms", "300".to_string())]);
    let app = spawn_app_with(&cut_off).await;
    let (tenant, alice, _, conversation) = five_messages(&app).await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "m1");
    rewrite_in_mongodb(&app, &tenant, &conversation, 1, "repaired").await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "m1", "served from the node's copy");

    relay.cut();
    let unrevised = pages_from(&app, "database_unrevised").await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "repaired", "read from MongoDB");
    assert!(pages_from(&app, "database_unrevised").await > unrevised, "counted as read without a revision");
}

#[tokio::test]
async fn a_revision_lost_from_redis_never_comes_back_for_copies_kept_under_it() {
    let app = spawn_app_with(&long_cache()).await;
    let (tenant, alice, _, conversation) = five_messages(&app).await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "m1");
    // Redis restarted empty, or the key expired: the next reader sets a revision of its own.
    let key = format!("{}t:{tenant}:rev:{conversation}", app.redis_prefix);
    let client = deadpool_redis::redis::Client::open(redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let removed: i64 = deadpool_redis::redis::cmd("DEL").arg(&key).query_async(&mut redis).await.unwrap();
    assert_eq!(removed, 1, "the page set the conversation's revision");
    rewrite_in_mongodb(&app, &tenant, &conversation, 1, "repaired").await;
    assert_eq!(first_page(&app, &alice, &conversation).await[0]["text"], "repaired", "the copies are not used");
}

#[tokio::test]
async fn a_change_made_while_redis_was_unreachable_shows_on_other_nodes_once_it_is_back() {
    let first = spawn_app_with(&long_cache()).await;
    let (relay, relayed) = Relay::redis().await;
    let mut cut_off = long_cache();
    cut_off.extend([("redis.url", relayed), ("redis.timeout_ms", "300".to_string())]);
    let second = first.second_node_with(&cut_off).await;
    let (_, alice, bob, conversation) = five_messages(&first).await;
    assert_eq!(first_page(&first, &bob, &conversation).await[0]["text"], "m1");

    relay.cut();
    let edit = Some(json!({"text": "m1 again"}));
    let edited = second.call(Method::PATCH, &format!("{}/1", messages(&conversation)), &alice, edit).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(first_page(&first, &bob, &conversation).await[0]["text"], "m1", "no node has heard of it yet");

    relay.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = first_page(&first, &bob, &conversation).await[0]["text"].clone();
        if text == "m1 again" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the edit never reached the first node's copies: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
