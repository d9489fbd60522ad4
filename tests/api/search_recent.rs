//! Search blocks cut from the texts a node just stored: they hold what was stored, not what a
//! read would find later, and an edit makes sure its message's block exists before changing the
//! text, so no block cut from an old text can miss the new words.

use std::collections::BTreeSet;

use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, spawn_app_with};
use crate::search::{
    alice_with_bob, assert_tiled, blocks, busy_tenant, counted, fully_indexed, hits, marks, send_numbered, tenant_db,
};

/// The words of `seq`'s block in the conversation, once everything is indexed.
async fn words_of_block(app: &TestApp, tenant: &str, conversation: &str, seq: i64) -> BTreeSet<String> {
    let client = app.mongo().await;
    let db = tenant_db(app, &client, tenant);
    fully_indexed(&db).await;
    let blocks = blocks(&db).await;
    let (_, _, words) = blocks[conversation].iter().find(|(from, to, _)| (*from..=*to).contains(&seq)).unwrap();
    words.clone()
}

/// A text rewritten in MongoDB behind confab's back (no edit) is not what the block holds,
/// unless the node holds no texts (`chat.search_recent_texts_max_bytes` = 0) and reads them.
#[tokio::test]
async fn blocks_are_cut_from_the_texts_just_stored_unless_none_are_held() {
    for (held, expected, absent) in [("16777216", "two", "buzzard"), ("0", "buzzard", "two")] {
        // No block before the fourth message.
        let app = spawn_app_with(&[
            ("chat.search_index_interval_ms", "20".into()),
            ("chat.search_block_min_messages", "4".into()),
            ("chat.search_block_max_wait_ms", "600000".into()),
            ("chat.search_recent_texts_max_bytes", held.into()),
        ])
        .await;
        let tenant = busy_tenant(&app).await;
        let (alice, conversation) = alice_with_bob(&app, &tenant).await;
        for text in ["kite one", "kite two", "kite three"] {
            assert_eq!(app.say(&alice, &conversation, text).await.status, StatusCode::CREATED);
        }
        let client = app.mongo().await;
        let db = tenant_db(&app, &client, &tenant.id);
        let filter = doc! { "conversation_id": &conversation, "seq": 2_i64 };
        let messages = db.collection::<Document>("messages");
        let rewritten = messages.update_one(filter, doc! { "$set": { "text": "buzzard" } }).await.unwrap();
        assert_eq!(rewritten.modified_count, 1);
        assert_eq!(app.say(&alice, &conversation, "kite four").await.status, StatusCode::CREATED);
        let words = words_of_block(&app, &tenant.id, &conversation, 2).await;
        assert!(words.contains(expected) && !words.contains(absent), "held {held}: {words:?}");
    }
}

/// An edit far past the search mark indexes through its message before changing it, so the
/// block the node would later cut from the old texts it holds is never stored.
#[tokio::test]
async fn an_edit_far_past_the_mark_is_indexed_with_its_new_words() {
    // The 300 messages wait for more (or for 8 s) before the indexer cuts them.
    let app = spawn_app_with(&[
        ("chat.search_index_interval_ms", "20".into()),
        ("chat.search_block_min_messages", "310".into()),
        ("chat.search_block_max_wait_ms", "8000".into()),
    ])
    .await;
    let tenant = busy_tenant(&app).await;
    let (alice, conversation) = alice_with_bob(&app, &tenant).await;
    send_numbered(&app, &alice, &conversation, "swift", 300).await;
    let client = app.mongo().await;
    let db = tenant_db(&app, &client, &tenant.id);
    assert_eq!(counted(&db, &conversation, 300).await, (0, 300), "nothing indexed before the edit");
    let path = format!("/v1/conversations/{conversation}/messages/290");
    let original = app.call(Method::GET, &path, &alice, None).await.body["text"].as_str().unwrap().to_string();
    let number = original.split(' ').nth(1).unwrap().to_string();
    let edited = app.call(Method::PATCH, &path, &alice, Some(json!({"text": "lapwing"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    let words = words_of_block(&app, &tenant.id, &conversation, 290).await;
    assert!(words.contains("lapwing") && !words.contains(&number), "{number}: {words:?}");
    assert_eq!(hits(&app, &alice, "lapwing").await, [290]);
    assert_tiled(&blocks(&db).await, &marks(&db).await);
}
