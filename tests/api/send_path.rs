//! The fast send path: group commit across many conversations and two nodes (gapless seqs,
//! repeats answered with the original, counters and newest messages right), and the per-node
//! caches of tenants, API keys, users and memberships, which a change must reach on every node at
//! once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ChatTenant, Reply, ServeProcess, TestApp, spawn_app_with};

/// Copies that would outlive any test: only the notices between nodes can make them go.
fn long_lived_caches() -> Vec<(&'static str, String)> {
    vec![("cache.ttl_ms", "600000".into())]
}

async fn two_nodes() -> (TestApp, TestApp) {
    let first = spawn_app_with(&long_lived_caches()).await;
    let second = first.second_node_with(&long_lived_caches()).await;
    (first, second)
}

fn messages(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

/// Starts with `$`, as an update operator would: previews must be stored as text.
fn text_of(client_msg_id: &str) -> String {
    format!("$set text of {client_msg_id}")
}

async fn send(node: &TestApp, token: &str, conversation: &str, client_msg_id: &str) -> Reply {
    let body = json!({"client_msg_id": client_msg_id, "text": text_of(client_msg_id)});
    node.call(Method::POST, &messages(conversation), token, Some(body)).await
}

/// Retries `attempt` until its reply satisfies `done` or five seconds pass (the caches here
/// live ten minutes, so only a notice from the other node can make it in time).
async fn eventually(mut attempt: impl AsyncFnMut(u32) -> Reply, done: impl Fn(&Reply) -> bool) -> Reply {
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let reply = attempt(n).await;
        if done(&reply) || started.elapsed() > Duration::from_secs(5) {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused(reply: &Reply) -> bool {
    reply.status != StatusCode::CREATED && reply.status != StatusCode::OK
}

async fn seqs_of(node: &TestApp, token: &str, conversation: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("{}?after_seq={after}&limit=200", messages(conversation));
        let page = node.call(Method::GET, &path, token, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        out.extend(
            items.iter().map(|m| (m["seq"].as_i64().unwrap(), m["client_msg_id"].as_str().unwrap().to_string())),
        );
        if !page.body["has_more_after"].as_bool().unwrap() {
            return out;
        }
        after = out.last().unwrap().0;
    }
}

#[tokio::test]
async fn concurrent_sends_over_many_conversations_on_two_nodes_stay_gapless_and_idempotent() {
    let (first, second) = two_nodes().await;
    // The burst below is beyond the default request rate.
    let id = first.create_tenant_with(json!({"limits": {"requests_per_second": 100000}})).await;
    let (key, _) = first.issue_key(&id, None).await;
    let tenant = ChatTenant { id, key };
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(first.user(&tenant, &format!("sender{i}")).await);
    }
    let members: Vec<String> = (1..6).map(|i| format!("sender{i}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut conversations = Vec::new();
    for _ in 0..8 {
        conversations.push(first.conversation(&tokens[0], "group", &members).await);
    }
    // Every sender sends 10 messages to every conversation, from both nodes at once, and sends
    // each of them twice (a retry racing its original).
    let mut sends = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for conversation in &conversations {
            for n in 0..10 {
                let id = format!("s{i}-m{n}");
                sends.push((&first, token, conversation, id.clone()));
                sends.push((&second, token, conversation, id));
            }
        }
    }
    let replies = futures_util::future::join_all(sends.into_iter().map(|(node, token, conversation, id)| async move {
        let reply = send(node, token, conversation, &id).await;
        (conversation.clone(), id, reply)
    }))
    .await;
    let mut originals: BTreeMap<(String, String), (StatusCode, Value)> = BTreeMap::new();
    for (conversation, id, reply) in replies {
        assert!(matches!(reply.status, StatusCode::CREATED | StatusCode::OK), "{}", reply.text);
        let key = (conversation, id);
        match originals.get(&key) {
            None => {
                originals.insert(key, (reply.status, reply.body));
            }
            Some((status, body)) => {
                assert_ne!(*status, reply.status, "exactly one of the two is the original: {key:?}");
                assert_eq!(body["id"], reply.body["id"], "a repeat returns the original");
                assert_eq!(body["seq"], reply.body["seq"]);
            }
        }
    }
    for conversation in &conversations {
        let stored = seqs_of(&second, &tokens[1], conversation).await;
        let numbers: Vec<i64> = stored.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(numbers, (1..=60).collect::<Vec<_>>(), "gapless in {conversation}");
        let ids: BTreeSet<&str> = stored.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids.len(), 60, "each client_msg_id stored once");
        for (seq, id) in &stored {
            let answered = &originals[&(conversation.clone(), id.clone())].1;
            assert_eq!(answered["seq"], *seq, "the answer named the stored seq");
        }
        let path = format!("/v1/conversations/{conversation}");
        let view = first.call(Method::GET, &path, &tokens[2], None).await;
        assert_eq!(view.body["last_seq"], 60, "{}", view.text);
        let view = first.get_until(&path, &tokens[2], |v| v["last_message"]["seq"] == 60).await;
        assert_eq!(view.body["last_message"]["seq"], 60, "{}", view.text);
        let newest = &stored.last().unwrap().1;
        assert_eq!(view.body["last_message"]["preview"], text_of(newest), "{}", view.text);
        let newest_at = &originals[&(conversation.clone(), newest.clone())].1["created_at"];
        assert_eq!(&view.body["last_activity_at"], newest_at, "{}", view.text);
        assert_eq!(&view.body["last_message"]["created_at"], newest_at, "an RFC 3339 time: {}", view.text);
    }
}

/// One committer finishes several stored runs at once (their counters recorded side by side), yet
/// publishes their events strictly in seq order: what the node's Redis channel for the
/// conversation carries is 1, 2, 3... with nothing missing or repeated.
#[tokio::test]
async fn a_burst_to_one_conversation_is_published_in_seq_order() {
    use deadpool_redis::redis;
    use futures_util::StreamExt;

    const SENDS: i64 = 1_000;
    let app = spawn_app_with(&[("chat.send_committers", "1".into())]).await;
    let tenant = app.burst_chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;

    let client = redis::Client::open(app.settings.redis.url.as_str()).expect("the suite's Redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("a Redis subscriber");
    pubsub.subscribe(format!("{}t:{}:conv:{conversation}", app.redis_prefix, tenant.id)).await.unwrap();
    let listener = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut messages = pubsub.on_message();
        while (seqs.len() as i64) < SENDS {
            let message = messages.next().await.expect("the subscription stays open");
            let event: bson::Document = bson::from_slice(&message.get_payload::<Vec<u8>>().unwrap()).unwrap();
            if event.get_str("kind") == Ok("created") {
                seqs.push(event.get_document("message").unwrap().get_i64("seq").unwrap());
            }
        }
        seqs
    });

    let senders = [&alice, &bob];
    let replies = futures_util::stream::iter(0..SENDS)
        .map(|n| {
            let (app, conversation) = (&app, &conversation);
            async move { send(app, senders[n as usize % 2], conversation, &format!("m{n}")).await }
        })
        .buffer_unordered(128)
        .collect::<Vec<Reply>>()
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let published = tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .expect("every event is published")
        .expect("the listener finishes");
    assert_eq!(published, (1..=SENDS).collect::<Vec<_>>(), "published once each, in seq order");
    let path = format!("/v1/conversations/{conversation}");
    let view = app.call(Method::GET, &path, &bob, None).await;
    assert_eq!(view.body["last_seq"], SENDS, "{}", view.text);
    let view = app.get_until(&path, &bob, |v| v["last_message"]["seq"] == SENDS).await;
    assert_eq!(view.body["last_message"]["seq"], SENDS, "{}", view.text);
}

/// Four committers hand their stored runs' records to one recorder, which writes them behind the
/// answers: still, every 201 comes after its message counts in the conversation's `last_seq`
/// and in the other member's unread count, and each conversation's newest message is recorded
/// soon after its last send.
#[tokio::test]
async fn every_answered_send_is_counted_at_once_and_recorded_soon_after() {
    use futures_util::StreamExt;

    const CONVERSATIONS: usize = 12;
    const SENDS: usize = 480;
    let app = spawn_app_with(&[("chat.send_committers", "4".into())]).await;
    let tenant = app.burst_chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let mut conversations = Vec::new();
    for _ in 0..CONVERSATIONS {
        conversations.push(app.conversation(&alice, "group", &["bob"]).await);
    }
    let checked = futures_util::stream::iter(0..SENDS)
        .map(|n| {
            let (app, alice, bob, conversation) = (&app, &alice, &bob, &conversations[n % CONVERSATIONS]);
            async move {
                let sent = send(app, alice, conversation, &format!("m{n}")).await;
                assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
                let seq = sent.body["seq"].as_i64().unwrap();
                let view = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), bob, None).await;
                let counted = view.body["last_seq"].as_i64().unwrap();
                let unread = view.body["membership"]["unread_count"].as_i64().unwrap();
                assert!(counted >= seq, "seq {seq} answered before it was counted: {}", view.text);
                assert!(unread >= seq, "seq {seq} answered before bob counted it unread: {}", view.text);
            }
        })
        .buffer_unordered(64)
        .count()
        .await;
    assert_eq!(checked, SENDS);
    let sends = (SENDS / CONVERSATIONS) as i64;
    for conversation in &conversations {
        let path = format!("/v1/conversations/{conversation}");
        let view = app.get_until(&path, &alice, |v| v["last_message"]["seq"] == sends).await;
        assert_eq!(view.body["last_seq"], sends, "{}", view.text);
        assert_eq!(view.body["last_message"]["seq"], sends, "{}", view.text);
        let newest = seqs_of(&app, &alice, conversation).await.pop().unwrap().1;
        assert_eq!(view.body["last_message"]["preview"], text_of(&newest), "{}", view.text);
    }
}

/// Records are written behind the answers, at most every `chat.record_interval_ms` (held long
/// here): meanwhile `last_seq`, unread counts and read marks count every answered send, the other
/// node numbers its sends past what is stored rather than what is recorded, an edit of the newest
/// message shows at once, and the record of the message as it was sent does not undo it.
#[tokio::test]
async fn what_a_held_record_has_not_written_yet_is_counted_numbered_past_and_not_undone() {
    let held = [("chat.record_interval_ms", "5000".to_string())];
    let first = spawn_app_with(&held).await;
    let second = first.second_node_with(&held).await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let carol = first.user(&tenant, "carol").await;
    let conversation = first.conversation(&alice, "group", &["bob", "carol"]).await;
    let other = first.conversation(&alice, "group", &["bob"]).await;
    // The first record after a quiet spell is written at once; the ones after it are held.
    let started = Instant::now();
    for n in 1..=3 {
        assert_eq!(send(&first, &alice, &conversation, &format!("m{n}")).await.status, StatusCode::CREATED);
        assert_eq!(send(&first, &alice, &other, &format!("o{n}")).await.status, StatusCode::CREATED);
    }
    let path = format!("/v1/conversations/{conversation}");
    let view = first.call(Method::GET, &path, &bob, None).await;
    let counts = (&view.body["last_seq"], &view.body["membership"]["unread_count"]);
    assert_eq!(counts, (&json!(3), &json!(3)), "{}", view.text);
    assert!(view.body["last_message"]["seq"].as_i64().unwrap() < 3, "the newest record is held: {}", view.text);
    let read = first.call(Method::POST, &format!("{path}/read"), &carol, Some(json!({"seq": 3}))).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!((&read.body["last_read_seq"], &read.body["unread_count"]), (&json!(3), &json!(0)), "{}", read.text);
    let unread = first.call(Method::GET, "/v1/me/unread", &bob, None).await;
    assert!(unread.text.contains(&conversation) && unread.body["total_unread_count"] == 6, "{}", unread.text);

    let elsewhere = send(&second, &alice, &other, "o4").await;
    assert_eq!((elsewhere.status, &elsewhere.body["seq"]), (StatusCode::CREATED, &json!(4)), "{}", elsewhere.text);

    let edit = json!({"text": "m3, edited"});
    let edited = first.call(Method::PATCH, &format!("{}/3", messages(&conversation)), &alice, Some(edit)).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    let view = first.call(Method::GET, &path, &bob, None).await;
    assert_eq!(view.body["last_message"]["seq"], 3, "{}", view.text);
    assert_eq!(view.body["last_message"]["preview"], "m3, edited", "{}", view.text);
    assert!(started.elapsed() < Duration::from_secs(5), "the checks ran while the record was held");

    tokio::time::sleep(Duration::from_millis(5_500).saturating_sub(started.elapsed())).await;
    let view = first.call(Method::GET, &path, &bob, None).await;
    assert_eq!(view.body["last_message"]["preview"], "m3, edited", "the held record kept the edit: {}", view.text);
    let view = first.get_until(&format!("/v1/conversations/{other}"), &bob, |v| v["last_message"]["seq"] == 4).await;
    assert_eq!((&view.body["last_seq"], &view.body["last_message"]["seq"]), (&json!(4), &json!(4)), "{}", view.text);
}

/// A node (`confab serve`, with `env`) that holds records for ten minutes, and alice's
/// conversation with bob after three sends through it: the first is recorded at once, the
/// others are held. Returns the node, a handle to it that outlives it, the tenant, alice's token
/// and the conversation.
async fn node_holding_records(env: &[(&str, &str)]) -> (ServeProcess, TestApp, ChatTenant, String, String) {
    let mut env = env.to_vec();
    env.push(("CONFAB__CHAT__RECORD_INTERVAL_MS", "600000"));
    let node = ServeProcess::start(&env).await;
    let app = node.app.clone();
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=3 {
        assert_eq!(send(&app, &alice, &conversation, &format!("m{n}")).await.status, StatusCode::CREATED);
    }
    (node, app, tenant, alice, conversation)
}

/// A node told to stop (SIGTERM) answers its sends, then writes the conversation records it
/// holds behind them before it exits.
#[tokio::test]
async fn a_stopping_node_writes_the_records_it_holds() {
    let (node, app, tenant, _, conversation) = node_holding_records(&[("CONFAB__SERVER__KEEP_ALIVE_SECS", "1")]).await;
    let client = app.mongo().await;
    let conversations =
        crate::search::tenant_db(&app, &client, &tenant.id).collection::<bson::Document>("conversations");
    let record = || async { conversations.find_one(bson::doc! { "_id": &conversation }).await.unwrap().unwrap() };
    // The first record is written at once; the later ones are held for ten minutes.
    let held = record().await;
    assert!(held.get_document("last_message").unwrap().get_i64("seq").unwrap() < 3, "{held}");

    node.stop().await;
    let stored = record().await;
    assert_eq!(stored.get_i64("last_seq").unwrap(), 3, "{stored}");
    let newest = stored.get_document("last_message").unwrap();
    assert_eq!((newest.get_i64("seq").unwrap(), newest.get_str("preview").unwrap()), (3, text_of("m3").as_str()));
}

/// A record the database refuses is kept and written again with what came since: the newest
/// message stays counted meanwhile, and is recorded once the database takes records again.
#[tokio::test]
async fn a_refused_record_is_written_again_later() {
    let app = spawn_app_with(&[("chat.record_interval_ms", "50".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    assert_eq!(app.say_recorded(&alice, &conversation, "recorded").await.status, StatusCode::CREATED);
    let client = app.mongo().await;
    let db = crate::search::tenant_db(&app, &client, &tenant.id);
    // The tenant's database refuses any record that counts past the first message.
    let refuse = bson::doc! { "collMod": "conversations", "validator": { "last_seq": { "$lt": 2_i64 } } };
    db.run_command(refuse).await.expect("a validator on the conversations");
    for n in 2..=3 {
        assert_eq!(send(&app, &alice, &conversation, &format!("m{n}")).await.status, StatusCode::CREATED);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/v1/conversations/{conversation}");
    let refused = app.call(Method::GET, &path, &alice, None).await;
    assert_eq!(refused.body["last_seq"], 3, "counted through its head: {}", refused.text);
    assert_eq!(refused.body["last_message"]["seq"], 1, "the record was refused: {}", refused.text);

    db.run_command(bson::doc! { "collMod": "conversations", "validator": {} }).await.unwrap();
    let view = app.get_until(&path, &alice, |v| v["last_message"]["seq"] == 3).await;
    assert_eq!(view.body["last_message"]["preview"], text_of("m3"), "{}", view.text);
}

/// A node that dies (SIGKILL) loses the records it held behind its answers: the conversation's
/// head still counts the messages, and a reader on another node records the newest stored message
/// once the recorded one is older than `chat.record_repair_after_ms`.
#[tokio::test]
async fn what_a_node_that_died_held_is_recorded_by_a_later_reader() {
    let (dying, app, _, alice, conversation) = node_holding_records(&[]).await;
    let path = format!("/v1/conversations/{conversation}");
    let held = app.call(Method::GET, &path, &alice, None).await;
    assert!(held.body["last_message"]["seq"].as_i64().unwrap() < 3, "held: {}", held.text);
    drop(dying);

    let reader = app.second_node_with(&[("chat.record_repair_after_ms", "200".into())]).await;
    let view = reader.get_until(&path, &alice, |v| v["last_message"]["seq"] == 3).await;
    assert_eq!(view.body["last_seq"], 3, "{}", view.text);
    assert_eq!(view.body["last_message"]["seq"], 3, "recorded by a reader: {}", view.text);
    assert_eq!(view.body["last_message"]["preview"], text_of("m3"), "{}", view.text);
}

/// A committer numbers sends from the heads it remembers; the other node's sends make those
/// stale (the seq taken under them must be noticed and the send numbered again), and a repeat
/// numbered but not stored must not leave its seq behind as a hole.
#[tokio::test]
async fn sends_alternating_between_nodes_get_consecutive_seqs() {
    let (first, second) = two_nodes().await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let _bob = first.user(&tenant, "bob").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    // Runs on one node and switches both ways, so each node's remembered head goes stale.
    for (n, on) in "abaabbabaaab".chars().enumerate() {
        let node = if on == 'a' { &first } else { &second };
        let reply = send(node, &alice, &conversation, &format!("m{n}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "send {n}: {}", reply.text);
        assert_eq!(reply.body["seq"], n as i64 + 1, "send {n} gets the next seq: {}", reply.text);
    }
    // A repeat takes no seq: the next send still gets the one after the last stored.
    for (id, status, seq) in
        [("m12", StatusCode::CREATED, 13), ("m12", StatusCode::OK, 13), ("m13", StatusCode::CREATED, 14)]
    {
        let reply = send(&first, &alice, &conversation, id).await;
        assert_eq!((reply.status, &reply.body["seq"]), (status, &json!(seq)), "{id}: {}", reply.text);
    }
    let stored = seqs_of(&first, &alice, &conversation).await;
    let expected: Vec<(i64, String)> = (0..14).map(|n| (n as i64 + 1, format!("m{n}"))).collect();
    assert_eq!(stored, expected, "gapless, in send order");
    let path = format!("/v1/conversations/{conversation}");
    let view = second.call(Method::GET, &path, &alice, None).await;
    assert_eq!(view.body["last_seq"], 14, "{}", view.text);
    let view = second.get_until(&path, &alice, |v| v["last_message"]["seq"] == 14).await;
    assert_eq!(view.body["last_message"]["seq"], 14, "{}", view.text);
}

#[tokio::test]
async fn a_removed_member_can_no_longer_send_or_read_on_either_node() {
    let (first, second) = two_nodes().await;
    let tenant = first.chat_tenant().await;
    let owner = first.user(&tenant, "owner").await;
    let leaver = first.user(&tenant, "leaver").await;
    let conversation = first.conversation(&owner, "group", &["leaver"]).await;
    // Both nodes now hold the leaver's membership.
    assert_eq!(send(&first, &leaver, &conversation, "warm-1").await.status, StatusCode::CREATED);
    assert_eq!(send(&second, &leaver, &conversation, "warm-2").await.status, StatusCode::CREATED);
    for node in [&first, &second] {
        assert_eq!(node.call(Method::GET, &messages(&conversation), &leaver, None).await.status, StatusCode::OK);
    }
    let removed =
        first.call(Method::DELETE, &format!("/v1/conversations/{conversation}/members/leaver"), &owner, None).await;
    assert!(removed.status.is_success(), "{}", removed.text);
    let here = send(&first, &leaver, &conversation, "after-here").await;
    assert_eq!(here.status, StatusCode::NOT_FOUND, "refused at once where it happened: {}", here.text);
    let there =
        eventually(async |n| send(&second, &leaver, &conversation, &format!("after-there-{n}")).await, refused).await;
    assert_eq!(there.status, StatusCode::NOT_FOUND, "refused on the other node too: {}", there.text);
    for node in [&first, &second] {
        let read = node.call(Method::GET, &messages(&conversation), &leaver, None).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "history is closed too: {}", read.text);
    }
    let stored = seqs_of(&first, &owner, &conversation).await;
    assert!(stored.iter().all(|(_, id)| !id.starts_with("after-here")), "{stored:?}");
}

#[tokio::test]
async fn a_deactivated_user_is_refused_on_both_nodes() {
    let (first, second) = two_nodes().await;
    let tenant = first.chat_tenant().await;
    let owner = first.user(&tenant, "owner").await;
    let quitter = first.user(&tenant, "quitter").await;
    let conversation = first.conversation(&owner, "group", &["quitter"]).await;
    assert_eq!(send(&first, &quitter, &conversation, "warm-1").await.status, StatusCode::CREATED);
    assert_eq!(send(&second, &quitter, &conversation, "warm-2").await.status, StatusCode::CREATED);
    let gone = first.call(Method::DELETE, "/v1/users/quitter", &tenant.key, None).await;
    assert!(gone.status.is_success(), "{}", gone.text);
    let here = send(&first, &quitter, &conversation, "after-here").await;
    assert_eq!(here.status, StatusCode::FORBIDDEN, "{}", here.text);
    assert_eq!(here.body["error"]["code"], "user_deactivated", "{}", here.text);
    let there =
        eventually(async |n| send(&second, &quitter, &conversation, &format!("after-there-{n}")).await, refused).await;
    assert_eq!(there.status, StatusCode::FORBIDDEN, "{}", there.text);
    let back = first.call(Method::POST, "/v1/users/quitter/reactivate", &tenant.key, None).await;
    assert!(back.status.is_success(), "{}", back.text);
    let again = eventually(
        async |n| send(&second, &quitter, &conversation, &format!("back-{n}")).await,
        |r| r.status == StatusCode::CREATED,
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED, "reactivation reaches the other node: {}", again.text);
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_on_both_nodes() {
    let (first, second) = two_nodes().await;
    let tenant = first.chat_tenant().await;
    let user = first.user(&tenant, "someone").await;
    for node in [&first, &second] {
        assert_eq!(node.call(Method::GET, "/v1/me", &user, None).await.status, StatusCode::OK);
    }
    let suspended = first
        .admin(Method::PATCH, &format!("/admin/v1/tenants/{}", tenant.id), Some(json!({"status": "suspended"})))
        .await;
    assert!(suspended.status.is_success(), "{}", suspended.text);
    let here = first.call(Method::GET, "/v1/me", &user, None).await;
    assert_eq!(here.body["error"]["code"], "tenant_suspended", "{}", here.text);
    let there =
        eventually(async |_| second.call(Method::GET, "/v1/me", &user, None).await, |r| r.status != StatusCode::OK)
            .await;
    assert_eq!(there.body["error"]["code"], "tenant_suspended", "{}", there.text);
}

#[tokio::test]
async fn a_revoked_or_rotated_api_key_is_refused_on_both_nodes() {
    let (first, second) = two_nodes().await;
    let tenant = first.create_tenant().await;
    let (revoked, revoked_meta) = first.issue_key(&tenant, None).await;
    let (rotated, rotated_meta) = first.issue_key(&tenant, None).await;
    for node in [&first, &second] {
        for key in [&revoked, &rotated] {
            assert_eq!(node.call(Method::GET, "/v1/api-keys", key, None).await.status, StatusCode::OK);
        }
    }

    let id = revoked_meta["id"].as_str().unwrap();
    let revoke = first.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &rotated, None).await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{}", revoke.text);
    assert_eq!(first.call(Method::GET, "/v1/api-keys", &revoked, None).await.status, StatusCode::UNAUTHORIZED);
    let there = eventually(
        async |_| second.call(Method::GET, "/v1/api-keys", &revoked, None).await,
        |r| r.status != StatusCode::OK,
    )
    .await;
    assert_eq!(there.status, StatusCode::UNAUTHORIZED, "{}", there.text);

    let id = rotated_meta["id"].as_str().unwrap();
    let body = json!({"grace_period_secs": 0});
    let rotation = second.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &rotated, Some(body)).await;
    assert_eq!(rotation.status, StatusCode::OK, "{}", rotation.text);
    let newest = rotation.body["key"].as_str().unwrap().to_string();
    let there = eventually(
        async |_| first.call(Method::GET, "/v1/api-keys", &rotated, None).await,
        |r| r.status != StatusCode::OK,
    )
    .await;
    assert_eq!(there.status, StatusCode::UNAUTHORIZED, "the old secret, without grace: {}", there.text);
    for node in [&first, &second] {
        assert_eq!(node.call(Method::GET, "/v1/api-keys", &newest, None).await.status, StatusCode::OK);
    }
}
