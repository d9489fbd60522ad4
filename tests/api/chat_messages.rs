//! Messages: gapless seqs, idempotency, history windows, threads, edits, deletes, reactions,
//! pins, receipts and unread arithmetic, search, and tenant isolation of message routes.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ChatTenant, TestApp, spawn_app};

fn messages(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

async fn send(app: &TestApp, token: &str, conversation: &str, body: Value) -> crate::helpers::Reply {
    app.call(Method::POST, &messages(conversation), token, Some(body)).await
}

/// Every seq of the conversation's history, read back page by page, with senders.
async fn all_seqs(app: &TestApp, token: &str, conversation: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .call(Method::GET, &format!("{}?after_seq={after}&limit=200", messages(conversation)), token, None)
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        out.extend(items.iter().map(|m| (m["seq"].as_i64().unwrap(), m["sender_id"].as_str().unwrap().to_string())));
        if !page.body["has_more_after"].as_bool().unwrap() {
            return out;
        }
        after = out.last().unwrap().0;
    }
}

async fn group_of(app: &TestApp, tenant: &ChatTenant, n: usize) -> (Vec<String>, Vec<String>, String) {
    let mut names = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..n {
        let name = format!("user{i:02}");
        tokens.push(app.user(tenant, &name).await);
        names.push(name);
    }
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let conversation = app.conversation(&tokens[0], "group", &others).await;
    (names, tokens, conversation)
}

#[tokio::test]
async fn concurrent_senders_get_exactly_the_seqs_one_to_n() {
    let app = spawn_app().await;
    let tenant = app.burst_chat_tenant().await;
    let (names, tokens, conversation) = group_of(&app, &tenant, 20).await;
    let senders = tokens.iter().enumerate().map(|(i, token)| {
        let (app, conversation) = (&app, conversation.clone());
        async move {
            for n in 0..50 {
                let body = json!({"client_msg_id": format!("s{i}-{n}"), "text": format!("message {n} from {i}")});
                let reply = send(app, token, &conversation, body).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
            }
        }
    });
    futures_util::future::join_all(senders).await;
    let seqs = all_seqs(&app, &tokens[0], &conversation).await;
    let numbers: Vec<i64> = seqs.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=1000).collect::<Vec<_>>());
    for name in &names {
        assert_eq!(seqs.iter().filter(|(_, sender)| sender == name).count(), 50, "{name}");
    }
    let conversation_view = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), &tokens[1], None).await;
    assert_eq!(conversation_view.body["last_seq"], 1000);
}

#[tokio::test]
async fn two_nodes_sending_to_one_conversation_stay_gapless() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let tenant = first.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&first, &tenant, 4).await;
    let senders = tokens.iter().enumerate().map(|(i, token)| {
        let node = if i % 2 == 0 { &first } else { &second };
        let conversation = conversation.clone();
        async move {
            for n in 0..25 {
                let body = json!({"client_msg_id": format!("n{i}-{n}"), "text": "x"});
                let reply = send(node, token, &conversation, body).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
            }
        }
    });
    futures_util::future::join_all(senders).await;
    let numbers: Vec<i64> = all_seqs(&second, &tokens[0], &conversation).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_retries_store_one_message_and_burn_no_seq() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    let body = json!({"client_msg_id": "retry-me", "text": "only once"});
    let replies =
        futures_util::future::join_all((0..10).map(|_| send(&app, &tokens[0], &conversation, body.clone()))).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let repeated = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!((created, repeated), (1, 9));
    let ids: BTreeSet<&str> = replies.iter().map(|r| r.body["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every retry returns the original");
    assert!(replies.iter().all(|r| r.body["seq"] == 1));
    let next = app.say(&tokens[0], &conversation, "next").await;
    assert_eq!(next.body["seq"], 2, "no seq was burned by the retries");
    let other_sender = send(&app, &tokens[1], &conversation, body).await;
    assert_eq!(other_sender.status, StatusCode::CREATED, "client_msg_id is per sender");
    assert_eq!(other_sender.body["seq"], 3);
}

#[tokio::test]
async fn history_windows_are_exact_seq_ranges() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    for n in 1..=30 {
        app.say(&tokens[0], &conversation, &format!("m{n}")).await;
    }
    let window = |query: &'static str| {
        let (app, token, path) = (&app, tokens[1].clone(), messages(&conversation));
        async move {
            let reply = app.call(Method::GET, &format!("{path}?{query}"), &token, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
            let seqs: Vec<i64> =
                reply.body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
            (seqs, reply.body["has_more_before"].as_bool().unwrap(), reply.body["has_more_after"].as_bool().unwrap())
        }
    };
    assert_eq!(window("limit=10").await, ((21..=30).collect(), true, false));
    assert_eq!(window("before_seq=21&limit=10").await, ((11..=20).collect(), true, true));
    assert_eq!(window("after_seq=25&limit=10").await, ((26..=30).collect(), true, false));
    assert_eq!(window("around_seq=15&limit=10").await, ((10..=19).collect(), true, true));
    assert_eq!(window("before_seq=3").await, ((1..=2).collect(), false, true));
    assert_eq!(window("after_seq=30").await.0, Vec::<i64>::new());
    let (default_page, _, _) = window("").await;
    assert_eq!(default_page, (1..=30).collect::<Vec<_>>());

    for bad in ["limit=0", "limit=201", "before_seq=5&after_seq=1", "limit=x"] {
        let reply = app.call(Method::GET, &format!("{}?{bad}", messages(&conversation)), &tokens[0], None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let one = app.call(Method::GET, &format!("{}/7", messages(&conversation)), &tokens[1], None).await;
    assert_eq!(one.body["text"], "m7");
    let missing = app.call(Method::GET, &format!("{}/31", messages(&conversation)), &tokens[1], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let invalid = app.call(Method::GET, &format!("{}/zero", messages(&conversation)), &tokens[1], None).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn message_kinds_and_limits_are_checked() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    let code = json!({"client_msg_id": "c1", "kind": "code_snippet", "text": "fn main() {}", "language": "rust",
        "metadata": {"editor": "monaco"},
        "ai": {"role": "assistant", "model": "m-1", "provider": "p", "tokens": {"prompt": 3, "completion": 5, "total": 8}}});
    let stored = send(&app, &tokens[0], &conversation, code).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text);
    assert_eq!(stored.body["language"], "rust");
    assert_eq!(stored.body["ai"]["tokens"]["total"], 8);
    assert_eq!(stored.body["metadata"]["editor"], "monaco");

    let image = json!({"client_msg_id": "c2", "kind": "image", "attachments": [{"url": "https://cdn.example/x.png", "mime": "image/png"}]});
    assert_eq!(send(&app, &tokens[0], &conversation, image).await.status, StatusCode::CREATED);
    let cases = [
        (json!({"text": "no id"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c3"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c4", "text": "   "}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c5", "kind": "image"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"client_msg_id": "c6", "kind": "video", "attachments": [{"url": "ftp://x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"client_msg_id": "c7", "kind": "system", "text": "fake"}), StatusCode::FORBIDDEN),
        (json!({"client_msg_id": "has space", "text": "x"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c8", "text": "x".repeat(16_385)}), StatusCode::PAYLOAD_TOO_LARGE),
        (json!({"client_msg_id": "c9", "text": "x", "metadata": {"$bad": 1}}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c10", "text": "x", "kind": "poll"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"client_msg_id": "c11", "text": "x", "reply_to": 99}), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, status) in cases {
        let reply = send(&app, &tokens[0], &conversation, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
    }
    let last = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), &tokens[0], None).await;
    assert_eq!(last.body["last_seq"], 2, "refused messages stored nothing and took no seq");

    let as_server = app
        .call(
            Method::POST,
            &format!("{}?user_id=user00", messages(&conversation)),
            &tenant.key,
            Some(json!({"client_msg_id": "sys-1", "kind": "system", "text": "Maintenance at noon"})),
        )
        .await;
    assert_eq!(as_server.status, StatusCode::CREATED, "{}", as_server.text);
    assert_eq!(as_server.body["kind"], "system");
}

/// A pair's conversation where the first says "parent" (seq 1) and the second replies `replies`
/// times ("reply 0", ...); returns the tenant, both tokens and the conversation.
async fn a_thread(app: &TestApp, replies: usize) -> (ChatTenant, Vec<String>, String) {
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(app, &tenant, 2).await;
    app.say(&tokens[0], &conversation, "parent").await;
    for n in 0..replies {
        let body = json!({"client_msg_id": format!("r{n}"), "text": format!("reply {n}"), "reply_to": 1});
        assert_eq!(send(app, &tokens[1], &conversation, body).await.status, StatusCode::CREATED);
    }
    (tenant, tokens, conversation)
}

#[tokio::test]
async fn threads_count_their_live_replies() {
    let app = spawn_app().await;
    let (_, tokens, conversation) = a_thread(&app, 3).await;
    app.say(&tokens[0], &conversation, "unrelated").await;
    let parent = app.call(Method::GET, &format!("{}/1", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(parent.body["reply_count"], 3);
    let replies =
        app.call(Method::GET, &format!("{}/1/replies?limit=2", messages(&conversation)), &tokens[0], None).await;
    let seqs: Vec<i64> = replies.body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(replies.body["has_more_after"], true);
    let rest =
        app.call(Method::GET, &format!("{}/1/replies?after_seq=3", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(rest.body["items"][0]["seq"], 4);

    assert_eq!(
        app.call(Method::DELETE, &format!("{}/3", messages(&conversation)), &tokens[1], None).await.status,
        StatusCode::NO_CONTENT
    );
    let parent = app.call(Method::GET, &format!("{}/1", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(parent.body["reply_count"], 2);
    let no_thread = app.call(Method::GET, &format!("{}/99/replies", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(no_thread.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_replies_are_in_the_thread_index_and_threads_are_read_through_it() {
    use mongodb::bson::{Document, doc};
    let app = spawn_app().await;
    let (tenant, tokens, conversation) = a_thread(&app, 1).await;

    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));
    let indexes = db.collection::<Document>("messages").list_indexes().await.unwrap();
    let indexes: Vec<_> = futures_util::TryStreamExt::try_collect(indexes).await.unwrap();
    let replies = indexes.iter().find(|ix| ix.options.as_ref().and_then(|o| o.name.as_deref()) == Some("replies_1"));
    let options = replies.and_then(|ix| ix.options.as_ref()).expect("the replies_1 index");
    assert_eq!(options.partial_filter_expression, Some(doc! { "reply_to": { "$gt": 0 } }), "replies only");
    assert!(
        !indexes.iter().any(|ix| ix.options.as_ref().and_then(|o| o.name.as_deref())
            == Some("conversation_id_1_reply_to_1_seq_1")),
        "no index of every message's reply_to"
    );

    // The query `replies` makes is answered from the partial index (a seq is at least 1).
    let explain = db
        .run_command(doc! {
            "explain": {
                "find": "messages",
                "filter": { "conversation_id": &conversation, "reply_to": 1_i64, "seq": { "$gt": 0_i64 } },
                "sort": { "conversation_id": 1, "reply_to": 1, "seq": 1 },
                "limit": 51,
            },
            "verbosity": "queryPlanner",
        })
        .await
        .unwrap();
    let plan = explain.get_document("queryPlanner").unwrap().get_document("winningPlan").unwrap().to_string();
    assert!(plan.contains("replies_1"), "{plan}");
    let listed = app.call(Method::GET, &format!("{}/1/replies", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(listed.body["items"][0]["text"], "reply 0", "{}", listed.text);
}

/// A message's `_id` is its idempotency key, so no index of its own keeps repeats out.
#[tokio::test]
async fn a_message_is_keyed_by_conversation_sender_and_client_msg_id() {
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{Bson, Document, doc};
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    let body = json!({"client_msg_id": "keyed-1", "text": "once"});
    let sent = send(&app, &tokens[0], &conversation, body.clone()).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);

    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));
    let messages = db.collection::<Document>("messages");
    let stored = messages.find_one(doc! { "conversation_id": &conversation, "seq": 1_i64 }).await.unwrap().unwrap();
    let Some(Bson::Binary(key)) = stored.get("_id") else { panic!("keyed by a UUID: {stored}") };
    assert_eq!((key.subtype, key.bytes.len()), (BinarySubtype::Uuid, 16), "{stored}");
    assert_eq!(stored.get_str("id").unwrap(), sent.body["id"].as_str().unwrap());
    let fields: Vec<&str> = stored.keys().map(String::as_str).collect();
    let plain = [
        "_id",
        "id",
        "tenant_id",
        "conversation_id",
        "seq",
        "client_msg_id",
        "sender_id",
        "kind",
        "text",
        "created_at",
    ];
    assert_eq!(fields, plain, "a plain message stores nothing empty");
    let read = app.call(Method::GET, &format!("/v1/conversations/{conversation}/messages/1"), &tokens[1], None).await;
    let empties = json!({"attachments": [], "mentions": [], "metadata": {}, "reactions": [], "edit_history": []});
    for (field, empty) in empties.as_object().unwrap() {
        assert_eq!(&read.body[field], empty, "{field}: {}", read.text);
    }
    assert_eq!((read.body["reply_count"].as_i64(), read.body["reply_to"].is_null()), (Some(0), true), "{}", read.text);
    let mut names = messages.list_index_names().await.unwrap();
    names.sort();
    assert_eq!(names, ["_id_", "conversation_id_1_seq_1", "replies_1"]);

    let repeated = send(&app, &tokens[0], &conversation, body.clone()).await;
    assert_eq!(repeated.status, StatusCode::OK, "{}", repeated.text);
    assert_eq!(repeated.body["id"], sent.body["id"]);
    let by_other = send(&app, &tokens[1], &conversation, body).await;
    assert_eq!((by_other.status, &by_other.body["seq"]), (StatusCode::CREATED, &json!(2)), "{}", by_other.text);
    assert_eq!(messages.count_documents(doc! {}).await.unwrap(), 2);
}

#[tokio::test]
async fn edits_belong_to_the_author_and_keep_history() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    app.say(&tokens[0], &conversation, "first draft").await;
    let path = format!("{}/1", messages(&conversation));
    let not_author = app.call(Method::PATCH, &path, &tokens[1], Some(json!({"text": "hijack"}))).await;
    assert_eq!(not_author.status, StatusCode::FORBIDDEN);
    let edited = app.call(Method::PATCH, &path, &tokens[0], Some(json!({"text": "final words"}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(edited.body["text"], "final words");
    assert!(edited.body["edited_at"].is_string());
    assert_eq!(edited.body["edit_history"][0]["text"], "first draft");
    assert_eq!(edited.body["seq"], 1);

    let conversation_view = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), &tokens[1], None).await;
    assert_eq!(conversation_view.body["last_message"]["preview"], "final words");
    let old = app.call(Method::GET, "/v1/search/messages?q=draft", &tokens[1], None).await;
    assert_eq!(old.body["items"].as_array().unwrap().len(), 0);
    let new = app.call(Method::GET, "/v1/search/messages?q=FINAL", &tokens[1], None).await;
    assert_eq!(new.body["items"].as_array().unwrap().len(), 1);

    let blank = app.call(Method::PATCH, &path, &tokens[0], Some(json!({"text": " "}))).await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    app.call(Method::DELETE, &path, &tokens[0], None).await;
    let after_delete = app.call(Method::PATCH, &path, &tokens[0], Some(json!({"text": "again"}))).await;
    assert_eq!(after_delete.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deletes_leave_tombstones_and_follow_roles() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 3).await;
    app.say(&tokens[1], &conversation, "from member one").await;
    app.say(&tokens[2], &conversation, "from member two").await;
    let path = |seq: i64| format!("{}/{seq}", messages(&conversation));
    let by_peer = app.call(Method::DELETE, &path(1), &tokens[2], None).await;
    assert_eq!(by_peer.status, StatusCode::FORBIDDEN, "a plain member cannot delete another's message");
    assert_eq!(app.call(Method::DELETE, &path(2), &tokens[2], None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call(Method::DELETE, &path(1), &tokens[0], None).await.status,
        StatusCode::NO_CONTENT,
        "the owner may"
    );
    assert_eq!(
        app.call(Method::DELETE, &path(1), &tokens[0], None).await.status,
        StatusCode::NO_CONTENT,
        "twice is fine"
    );

    let history = app.call(Method::GET, &messages(&conversation), &tokens[1], None).await;
    let items = history.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "tombstones keep their seq");
    for item in items {
        assert_eq!(item["deleted"], true);
        assert!(item["text"].is_null());
    }
    let conversation_view = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), &tokens[1], None).await;
    assert_eq!(conversation_view.body["last_message"]["preview"], "");
    let next = app.say(&tokens[1], &conversation, "after the deletes").await;
    assert_eq!(next.body["seq"], 3);
}

#[tokio::test]
async fn reactions_count_once_per_user_and_emoji() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    app.say(&tokens[0], &conversation, "react to me").await;
    let reaction = |emoji: &str| format!("{}/1/reactions/{emoji}", messages(&conversation));
    for token in [&tokens[0], &tokens[0], &tokens[1]] {
        assert_eq!(app.call(Method::PUT, &reaction("👍"), token, None).await.status, StatusCode::NO_CONTENT);
    }
    app.call(Method::PUT, &reaction(":tada:"), &tokens[1], None).await;
    let view = app.call(Method::GET, &format!("{}/1", messages(&conversation)), &tokens[0], None).await;
    let reactions = view.body["reactions"].as_array().unwrap();
    let thumbs = reactions.iter().find(|r| r["emoji"] == "👍").unwrap();
    assert_eq!((thumbs["count"].as_i64(), thumbs["mine"].as_bool()), (Some(2), Some(true)));
    let tada = reactions.iter().find(|r| r["emoji"] == ":tada:").unwrap();
    assert_eq!((tada["count"].as_i64(), tada["mine"].as_bool()), (Some(1), Some(false)));

    assert_eq!(app.call(Method::DELETE, &reaction("👍"), &tokens[0], None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.call(Method::DELETE, &reaction("👍"), &tokens[0], None).await.status, StatusCode::NO_CONTENT);
    let history = app.call(Method::GET, &messages(&conversation), &tokens[1], None).await;
    let thumbs =
        history.body["items"][0]["reactions"].as_array().unwrap().iter().find(|r| r["emoji"] == "👍").unwrap().clone();
    assert_eq!((thumbs["count"].as_i64(), thumbs["mine"].as_bool()), (Some(1), Some(true)));
    for bad in ["a.b", "%24x", "%20"] {
        let reply = app.call(Method::PUT, &reaction(bad), &tokens[0], None).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let missing = app.call(Method::PUT, &format!("{}/9/reactions/x", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

/// Reactions racing the message's delete leave nothing behind: no count on the tombstone, no
/// stored reaction (whichever lands first).
#[tokio::test]
async fn reactions_racing_a_delete_leave_nothing_behind() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 4).await;
    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));
    for seq in 1..=25 {
        app.say(&tokens[0], &conversation, "going soon").await;
        let reaction = format!("{}/{seq}/reactions/👍", messages(&conversation));
        let message = format!("{}/{seq}", messages(&conversation));
        // One reaction is removed while the delete runs, too.
        let added = app.call(Method::PUT, &reaction, &tokens[3], None).await;
        assert_eq!(added.status, StatusCode::NO_CONTENT);
        let (a, b, c, deleted) = tokio::join!(
            app.call(Method::PUT, &reaction, &tokens[1], None),
            app.call(Method::PUT, &reaction, &tokens[2], None),
            app.call(Method::DELETE, &reaction, &tokens[3], None),
            app.call(Method::DELETE, &message, &tokens[0], None),
        );
        assert!(deleted.status.is_success(), "{}", deleted.text);
        for reply in [a, b, c] {
            assert!([StatusCode::NO_CONTENT, StatusCode::NOT_FOUND].contains(&reply.status), "{}", reply.text);
        }
        let filter = mongodb::bson::doc! { "conversation_id": &conversation, "seq": seq as i64 };
        let stored =
            db.collection::<mongodb::bson::Document>("messages").find_one(filter.clone()).await.unwrap().unwrap();
        let counts = stored.get_document("reaction_counts").unwrap();
        assert!(counts.values().all(|n| n.as_i64().or(n.as_i32().map(i64::from)) == Some(0)), "seq {seq}: {counts}");
        let left = db.collection::<mongodb::bson::Document>("reactions").count_documents(filter).await.unwrap();
        assert_eq!(left, 0, "seq {seq}: reactions left on a deleted message");
    }
}

/// `mine` is the reader's own, on exactly the messages they reacted to, in every window kind
/// (pages where nobody reacted skip the lookup, so mixed pages matter).
#[tokio::test]
async fn own_reactions_show_in_every_history_window() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    for n in 1..=8 {
        app.say(&tokens[0], &conversation, &format!("m{n}")).await;
    }
    let react = |seq: i64, token: &String| {
        let path = format!("{}/{seq}/reactions/👍", messages(&conversation));
        let (app, token) = (&app, token.clone());
        async move { assert_eq!(app.call(Method::PUT, &path, &token, None).await.status, StatusCode::NO_CONTENT) }
    };
    react(3, &tokens[1]).await;
    react(6, &tokens[1]).await;
    react(5, &tokens[0]).await;
    let mine_in = |query: &'static str| {
        let (app, token, path) = (&app, tokens[1].clone(), messages(&conversation));
        async move {
            let reply = app.call(Method::GET, &format!("{path}?{query}"), &token, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
            assert_eq!(reply.body["last_seq"], 8, "{query}");
            let items = reply.body["items"].as_array().unwrap().clone();
            let reacted = |flag: bool| -> Vec<i64> {
                let with = |m: &&Value| m["reactions"].as_array().unwrap().iter().any(|r| r["mine"] == flag);
                items.iter().filter(with).map(|m| m["seq"].as_i64().unwrap()).collect()
            };
            (reacted(true), reacted(false))
        }
    };
    assert_eq!(mine_in("limit=50").await, (vec![3, 6], vec![5]));
    assert_eq!(mine_in("before_seq=7&limit=3").await, (vec![6], vec![5]));
    assert_eq!(mine_in("after_seq=2&limit=2").await, (vec![3], vec![]));
    assert_eq!(mine_in("around_seq=4&limit=4").await, (vec![3], vec![5]));
    assert_eq!(mine_in("before_seq=3").await, (vec![], vec![]));
    let one = app.call(Method::GET, &format!("{}/6", messages(&conversation)), &tokens[1], None).await;
    assert_eq!(one.body["reactions"][0]["mine"], true);
    let other = app.call(Method::GET, &format!("{}/6", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(other.body["reactions"][0]["mine"], false);
}

#[tokio::test]
async fn admins_pin_messages() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    app.say(&tokens[1], &conversation, "pin me").await;
    let pin = format!("/v1/conversations/{conversation}/pins/1");
    assert_eq!(app.call(Method::PUT, &pin, &tokens[1], None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.call(Method::PUT, &pin, &tokens[0], None).await.status, StatusCode::NO_CONTENT);
    let pins = app.call(Method::GET, &format!("/v1/conversations/{conversation}/pins"), &tokens[1], None).await;
    assert_eq!(pins.body["items"][0]["seq"], 1);
    assert_eq!(pins.body["items"][0]["pinned"], true);
    let one = app.call(Method::GET, &format!("{}/1", messages(&conversation)), &tokens[1], None).await;
    assert_eq!(one.body["pinned"], true);
    assert_eq!(app.call(Method::DELETE, &pin, &tokens[0], None).await.status, StatusCode::NO_CONTENT);
    let pins = app.call(Method::GET, &format!("/v1/conversations/{conversation}/pins"), &tokens[1], None).await;
    assert!(pins.body["items"].as_array().unwrap().is_empty());
    let missing = app.call(Method::PUT, &format!("/v1/conversations/{conversation}/pins/9"), &tokens[0], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

async fn unread_of(app: &TestApp, token: &str) -> Value {
    let reply = app.call(Method::GET, "/v1/me/unread", token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

#[tokio::test]
async fn unread_counts_follow_reads_deletes_and_own_messages() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    for text in ["a1", "a2", "a3"] {
        app.say(alice, &conversation, text).await;
    }
    app.say(bob, &conversation, "b4").await;
    app.say(alice, &conversation, "a5").await;
    assert_eq!(unread_of(&app, bob).await["total_unread_count"], 4, "bob's own message is not unread");
    assert_eq!(unread_of(&app, alice).await["total_unread_count"], 1);

    let read = format!("/v1/conversations/{conversation}/read");
    let marked = app.call(Method::POST, &read, bob, Some(json!({"seq": 2}))).await;
    assert_eq!(marked.status, StatusCode::OK, "{}", marked.text);
    assert_eq!((marked.body["last_read_seq"].as_i64(), marked.body["unread_count"].as_i64()), (Some(2), Some(2)));
    let lower = app.call(Method::POST, &read, bob, Some(json!({"seq": 1}))).await;
    assert_eq!(lower.body["last_read_seq"], 2, "read marks never move back");

    app.call(Method::DELETE, &format!("{}/5", messages(&conversation)), alice, None).await;
    let summary = unread_of(&app, bob).await;
    assert_eq!(summary["total_unread_count"], 1, "a deleted message is not unread: {summary}");
    assert_eq!(summary["conversations"][0]["conversation_id"], conversation.as_str());

    let beyond = app.call(Method::POST, &read, bob, Some(json!({"seq": 1000}))).await;
    assert_eq!(beyond.body["last_read_seq"], 5, "a mark past the newest message stops at it");
    assert_eq!(unread_of(&app, bob).await["total_unread_count"], 0);
    assert!(unread_of(&app, bob).await["conversations"].as_array().unwrap().is_empty());

    let delivered = format!("/v1/conversations/{conversation}/delivered");
    let d = app.call(Method::POST, &delivered, alice, Some(json!({"seq": 3}))).await;
    assert_eq!((d.body["last_delivered_seq"].as_i64(), d.body["last_read_seq"].as_i64()), (Some(3), Some(0)));
    let d = app.call(Method::POST, &delivered, alice, Some(json!({"seq": 2}))).await;
    assert_eq!(d.body["last_delivered_seq"], 3);
    let negative = app.call(Method::POST, &read, alice, Some(json!({"seq": -1}))).await;
    assert_eq!(negative.status, StatusCode::UNPROCESSABLE_ENTITY);

    let second = app.conversation(bob, "group", &["user00"]).await;
    app.say(bob, &second, "x").await;
    app.say(bob, &second, "y").await;
    let summary = unread_of(&app, alice).await;
    assert_eq!(summary["total_unread_count"], 3, "1 in the first conversation + 2 in the second: {summary}");
    let me = app.call(Method::GET, "/v1/me/conversations", alice, None).await;
    let counts: Vec<(String, i64)> = me.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["membership"]["unread_count"].as_i64().unwrap()))
        .collect();
    assert_eq!(counts, [(second.clone(), 2), (conversation.clone(), 1)], "newest activity first");
}

#[tokio::test]
async fn search_finds_words_in_the_callers_conversations_only() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &tenant, 2).await;
    let outsider = app.user(&tenant, "outsider").await;
    let secret = app.conversation(&outsider, "group", &[]).await;
    app.say(&outsider, &secret, "Deploy the rocket tonight").await;
    app.say(&tokens[0], &conversation, "The Rocket launch is at noon").await;
    app.say(&tokens[1], &conversation, "rocket science, again").await;
    app.say(&tokens[1], &conversation, "nothing to see").await;
    app.say(&tokens[0], &conversation, "ROCKET LAUNCH delayed").await;

    let hits = |q: &str| {
        let (app, token) = (&app, tokens[1].clone());
        let q = q.to_string();
        async move {
            let reply = app.call(Method::GET, &format!("/v1/search/messages?q={q}"), &token, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            reply.body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect::<Vec<_>>()
        }
    };
    assert_eq!(hits("rocket").await, [4, 2, 1], "newest first, other people's conversations excluded");
    assert_eq!(hits("Rocket%20Launch").await, [4, 1], "all words must occur");
    assert_eq!(hits("launch%20tonight").await, Vec::<i64>::new());
    app.call(Method::DELETE, &format!("{}/4", messages(&conversation)), &tokens[0], None).await;
    assert_eq!(hits("rocket").await, [2, 1], "deleted messages are not found");

    let paged = app.collect_pages("/v1/search/messages?q=rocket&limit=1", &tokens[1], "after", 1).await;
    assert_eq!(paged.len(), 2);
    let scoped = app
        .call(Method::GET, &format!("/v1/search/messages?q=rocket&conversation_id={secret}"), &tokens[1], None)
        .await;
    assert_eq!(scoped.status, StatusCode::NOT_FOUND, "a conversation the caller cannot see");
    let empty = app.call(Method::GET, "/v1/search/messages?q=%20!!", &tokens[1], None).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn another_tenants_users_cannot_reach_messages() {
    let app = spawn_app().await;
    let a = app.chat_tenant().await;
    let b = app.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&app, &a, 2).await;
    app.say(&tokens[0], &conversation, "tenant A only").await;
    app.call(Method::PUT, &format!("{}/1/reactions/x", messages(&conversation)), &tokens[0], None).await;
    let intruder = app.user(&b, "user00").await;
    let base = messages(&conversation);
    let attempts = [
        (Method::GET, base.clone(), None),
        (Method::POST, base.clone(), Some(json!({"client_msg_id": "x", "text": "hi"}))),
        (Method::GET, format!("{base}/1"), None),
        (Method::PATCH, format!("{base}/1"), Some(json!({"text": "changed"}))),
        (Method::DELETE, format!("{base}/1"), None),
        (Method::GET, format!("{base}/1/replies"), None),
        (Method::PUT, format!("{base}/1/reactions/y"), None),
        (Method::DELETE, format!("{base}/1/reactions/x"), None),
        (Method::GET, format!("/v1/conversations/{conversation}/pins"), None),
        (Method::PUT, format!("/v1/conversations/{conversation}/pins/1"), None),
        (Method::POST, format!("/v1/conversations/{conversation}/read"), Some(json!({"seq": 1}))),
    ];
    for (method, path, body) in attempts {
        for token in [&intruder, &b.key] {
            let path = if token == &b.key { format!("{path}?user_id=user00") } else { path.clone() };
            let reply = app.call(method.clone(), &path, token, body.clone()).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}: {}", reply.text);
        }
    }
    let search = app.call(Method::GET, "/v1/search/messages?q=tenant", &intruder, None).await;
    assert!(search.body["items"].as_array().unwrap().is_empty());
    let intact = app.call(Method::GET, &format!("{base}/1"), &tokens[1], None).await;
    assert_eq!(intact.body["text"], "tenant A only");
    assert_eq!(intact.body["reactions"][0]["count"], 1);
    let conversation_view = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), &tokens[1], None).await;
    assert_eq!(conversation_view.body["last_seq"], 1);
}

/// History on a node holding cached copies for ten minutes still reports what changed on another
/// node at once: the conversation's head (from Redis, or MongoDB when Redis has none), its pins
/// and its privacy (forgotten through notices).
#[tokio::test]
async fn history_on_another_node_follows_sends_pins_and_privacy_at_once() {
    let long_cache = [("cache.ttl_ms", "600000".to_string())];
    let first = crate::helpers::spawn_app_with(&long_cache).await;
    let second = first.second_node_with(&long_cache).await;
    let tenant = first.chat_tenant().await;
    let (_, tokens, conversation) = group_of(&first, &tenant, 2).await;
    for n in 1..=10 {
        first.say(&tokens[0], &conversation, &format!("m{n}")).await;
    }
    let page = |query: &'static str| {
        let (second, token, path) = (&second, tokens[1].clone(), messages(&conversation));
        async move {
            let reply = second.call(Method::GET, &format!("{path}?{query}"), &token, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
            let body = reply.body;
            let seqs: Vec<i64> = body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
            let pinned: Vec<i64> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["pinned"] == true)
                .map(|m| m["seq"].as_i64().unwrap())
                .collect();
            (seqs, body["last_seq"].as_i64().unwrap(), body["has_more_after"].as_bool().unwrap(), pinned)
        }
    };
    assert_eq!(page("before_seq=3&limit=2").await, (vec![1, 2], 10, true, vec![]));

    let pin = format!("/v1/conversations/{conversation}/pins/1");
    assert_eq!(first.call(Method::PUT, &pin, &tokens[0], None).await.status, StatusCode::NO_CONTENT);
    for n in 11..=15 {
        first.say(&tokens[0], &conversation, &format!("m{n}")).await;
    }
    // The notice crosses Redis while the answer comes back; give it a moment, never ten minutes.
    let mut seen = page("before_seq=3&limit=2").await;
    for _ in 0..20 {
        if seen.3 == [1] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seen = page("before_seq=3&limit=2").await;
    }
    assert_eq!(seen, (vec![1, 2], 15, true, vec![1]));
    assert_eq!(page("limit=3").await, (vec![13, 14, 15], 15, false, vec![]));

    // Without a head in Redis, the page reads the conversation's counter instead.
    let client = deadpool_redis::redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let head = format!("{}t:{}:head:{conversation}", first.redis_prefix, tenant.id);
    let removed: i64 = deadpool_redis::redis::cmd("DEL").arg(&head).query_async(&mut redis).await.unwrap();
    assert_eq!(removed, 1, "the group commit recorded the head");
    assert_eq!(page("before_seq=3&limit=2").await, (vec![1, 2], 15, true, vec![1]));
    assert_eq!(page("after_seq=15").await, (vec![], 15, false, vec![]));

    // A public channel made private is closed to outsiders on every node at once.
    let outsider = first.user(&tenant, "outsider").await;
    let body = json!({"type": "channel", "name": "news", "members": []});
    let channel = first.call(Method::POST, "/v1/conversations", &tokens[0], Some(body)).await;
    assert_eq!(channel.status, StatusCode::CREATED, "{}", channel.text);
    let channel = channel.body["id"].as_str().unwrap().to_string();
    first.say(&tokens[0], &channel, "hello").await;
    let read = second.call(Method::GET, &messages(&channel), &outsider, None).await;
    assert_eq!(read.status, StatusCode::OK, "a public channel's history is open: {}", read.text);
    let private = json!({"private": true});
    let changed = first.call(Method::PATCH, &format!("/v1/conversations/{channel}"), &tokens[0], Some(private)).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let mut refused = second.call(Method::GET, &messages(&channel), &outsider, None).await;
    for _ in 0..20 {
        if refused.status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        refused = second.call(Method::GET, &messages(&channel), &outsider, None).await;
    }
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text);
}
