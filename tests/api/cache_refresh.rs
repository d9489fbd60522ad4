//! Copies in steady use (users, memberships, conversations) are refreshed by the node behind the
//! requests, many to a query: requests keep being served, and a change made behind confab's back
//! (no notice between nodes) still reaches them within `cache.ttl_ms`.

use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, doc};
use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, assert_error, spawn_app_with};

const TTL_MS: u64 = 400;

/// How many copies of `cache` the node has refreshed behind the requests.
async fn refreshed(app: &TestApp, cache: &str) -> u64 {
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    let series = format!("cache_refreshed_copies_total{{cache=\"{cache}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

/// Sends as `token` every 20 ms until a send is refused or `limit` passes; the last reply.
async fn send_until_refused(app: &TestApp, token: &str, conversation: &str, limit: Duration) -> crate::helpers::Reply {
    let started = Instant::now();
    loop {
        let reply = app.say(token, conversation, "still here").await;
        if reply.status != StatusCode::CREATED || started.elapsed() > limit {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn copies_in_use_are_refreshed_behind_the_requests_and_changes_made_behind_confabs_back_show() {
    let app = spawn_app_with(&[("cache.ttl_ms", TTL_MS.to_string())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));

    // Four ttls of steady sending: every copy a send reads is found due and refreshed.
    let busy = send_until_refused(&app, &alice, &conversation, Duration::from_millis(4 * TTL_MS)).await;
    assert_eq!(busy.status, StatusCode::CREATED, "{}", busy.text);
    for cache in ["users", "members", "conversations"] {
        assert!(refreshed(&app, cache).await > 0, "no {cache} copy was refreshed behind the requests");
    }

    // A ban written straight into MongoDB: the refreshed copies must not keep Bob in.
    assert_eq!(app.say(&bob, &conversation, "warm").await.status, StatusCode::CREATED);
    let member = doc! { "_id": format!("{conversation}:bob") };
    db.collection::<mongodb::bson::Document>("members")
        .update_one(member, doc! { "$set": { "banned_at": DateTime::now() } })
        .await
        .unwrap();
    let banned = send_until_refused(&app, &bob, &conversation, Duration::from_secs(5)).await;
    assert_eq!(banned.status, StatusCode::NOT_FOUND, "a ban behind confab's back shows: {}", banned.text);

    // A deactivation written straight into MongoDB, while Alice keeps sending.
    db.collection::<mongodb::bson::Document>("users")
        .update_one(doc! { "_id": "alice" }, doc! { "$set": { "deactivated_at": DateTime::now() } })
        .await
        .unwrap();
    let deactivated = send_until_refused(&app, &alice, &conversation, Duration::from_secs(5)).await;
    assert_error(&deactivated, StatusCode::FORBIDDEN, "user_deactivated");
}
