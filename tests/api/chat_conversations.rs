//! Conversations and their members: creation, visibility, profile changes, roles, bans, the
//! caller's conversation list, server keys acting for users, and tenant isolation.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ChatTenant, Reply, TestApp, assert_error, assert_invalid, spawn_app};

/// `/v1/conversations/{id}{rest}`.
fn at(id: &str, rest: &str) -> String {
    format!("/v1/conversations/{id}{rest}")
}

fn assert_status(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.text);
}

/// Last activity timestamps have millisecond resolution: let the clock move before an action
/// whose effect on the activity order a test checks.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

async fn create(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(Method::POST, "/v1/conversations", token, Some(body)).await
}

async fn created(app: &TestApp, token: &str, body: Value) -> String {
    let reply = create(app, token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn get(app: &TestApp, token: &str, id: &str) -> Reply {
    app.call(Method::GET, &at(id, ""), token, None).await
}

/// The conversation as `token`'s holder sees it (asserting 200).
async fn view(app: &TestApp, token: &str, id: &str) -> Value {
    let reply = get(app, token, id).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

async fn patch(app: &TestApp, token: &str, id: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &at(id, ""), token, Some(body)).await
}

async fn add(app: &TestApp, token: &str, id: &str, users: &[&str]) -> Reply {
    app.call(Method::POST, &at(id, "/members"), token, Some(json!({ "user_ids": users }))).await
}

async fn remove(app: &TestApp, token: &str, id: &str, user: &str) -> Reply {
    app.call(Method::DELETE, &at(id, &format!("/members/{user}")), token, None).await
}

async fn set_member(app: &TestApp, token: &str, id: &str, user: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &at(id, &format!("/members/{user}")), token, Some(body)).await
}

async fn set_role(app: &TestApp, token: &str, id: &str, user: &str, role: &str) -> Reply {
    set_member(app, token, id, user, json!({ "role": role })).await
}

async fn ban(app: &TestApp, token: &str, id: &str, user: &str) -> Reply {
    app.call(Method::PUT, &at(id, &format!("/bans/{user}")), token, None).await
}

async fn unban(app: &TestApp, token: &str, id: &str, user: &str) -> Reply {
    app.call(Method::DELETE, &at(id, &format!("/bans/{user}")), token, None).await
}

async fn join(app: &TestApp, token: &str, id: &str) -> Reply {
    app.call(Method::POST, &at(id, "/join"), token, None).await
}

/// Members as `"user role"`, in the order served (asserting a single page).
async fn roster(app: &TestApp, token: &str, id: &str) -> Vec<String> {
    let reply = app.call(Method::GET, &at(id, "/members?limit=200"), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.body["next_cursor"].is_null());
    let items = reply.body["items"].as_array().expect("items");
    items.iter().map(|m| format!("{} {}", m["user_id"].as_str().unwrap(), m["role"].as_str().unwrap())).collect()
}

async fn member_count(app: &TestApp, token: &str, id: &str) -> u64 {
    view(app, token, id).await["member_count"].as_u64().expect("member_count")
}

/// The whole history, after checking its seqs run 1..=last_seq without gaps.
async fn history(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let reply = app.call(Method::GET, &at(id, "/messages?limit=200"), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let items = reply.body["items"].as_array().expect("items").clone();
    let seqs: Vec<i64> = items.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    let expected: Vec<i64> = (1..=items.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs are gapless from 1");
    assert_eq!(reply.body["last_seq"], json!(items.len()));
    items
}

/// The system messages of a history as `"event user_id"`.
fn system_events(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| {
            format!(
                "{} {}",
                m["metadata"]["event"].as_str().unwrap_or("?"),
                m["metadata"]["user_id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Ids of the caller's conversations in the order of a single page of `/v1/me/conversations`.
async fn my_conversation_ids(app: &TestApp, token: &str) -> Vec<String> {
    let reply = app.call(Method::GET, "/v1/me/conversations?limit=200", token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.body["next_cursor"].is_null());
    reply.body["items"].as_array().expect("items").iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

/// The caller's membership of `id` as listed in `/v1/me/conversations`.
async fn my_membership(app: &TestApp, token: &str, id: &str) -> Value {
    let reply = app.call(Method::GET, "/v1/me/conversations?limit=200", token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let items = reply.body["items"].as_array().expect("items");
    items.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("{id} not listed"))["membership"].clone()
}

#[tokio::test]
async fn a_direct_conversation_has_one_other_member_and_is_unique_per_pair() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;

    for members in [json!([]), json!(["alice"]), json!(["bob", "carol"])] {
        let reply = create(&app, &alice, json!({"type": "direct", "members": members})).await;
        assert_invalid(&reply, "members");
    }

    let first = create(&app, &alice, json!({"type": "direct", "members": ["bob"]})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let id = first.body["id"].as_str().unwrap().to_string();
    assert_eq!(first.body["type"], "direct");
    assert_eq!(first.body["member_count"], 2);
    assert_eq!(first.body["created_by"], "alice");
    assert_eq!(first.body["private"], false);
    assert_eq!(first.body["last_seq"], 0);
    assert_eq!(first.body["membership"]["role"], "member", "nobody owns a direct conversation");

    let again = create(&app, &alice, json!({"type": "direct", "members": ["bob"]})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["id"], id.as_str());
    let reverse = create(&app, &bob, json!({"type": "direct", "members": ["alice"]})).await;
    assert_eq!(reverse.status, StatusCode::OK, "{}", reverse.text);
    assert_eq!(reverse.body["id"], id.as_str());
    assert_eq!(reverse.body["member_count"], 2);
    assert_eq!(reverse.body["membership"]["role"], "member", "bob sees his own membership");
    assert_eq!(roster(&app, &alice, &id).await, ["alice member", "bob member"]);
    assert_eq!(my_conversation_ids(&app, &alice).await, [id.as_str()]);
    assert_eq!(my_conversation_ids(&app, &bob).await, [id.as_str()]);

    let other = create(&app, &carol, json!({"type": "direct", "members": ["alice"]})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    assert_ne!(other.body["id"], id.as_str(), "another pair, another conversation");

    // A direct conversation's profile and members are fixed.
    assert_error(&patch(&app, &alice, &id, json!({"name": "renamed"})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&add(&app, &alice, &id, &["carol"]).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove(&app, &alice, &id, "alice").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove(&app, &alice, &id, "bob").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&set_role(&app, &alice, &id, "bob", "owner").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&ban(&app, &alice, &id, "bob").await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(roster(&app, &bob, &id).await, ["alice member", "bob member"]);
    assert!(view(&app, &alice, &id).await["name"].is_null());
}

#[tokio::test]
async fn concurrent_creations_of_one_direct_conversation_return_one_id() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;

    let attempts = (0..10).map(|i| {
        let (token, other) = if i % 2 == 0 { (&alice, "bob") } else { (&bob, "alice") };
        create(&app, token, json!({"type": "direct", "members": [other]}))
    });
    let replies = futures_util::future::join_all(attempts).await;
    for reply in &replies {
        assert!(reply.status == StatusCode::CREATED || reply.status == StatusCode::OK, "{}", reply.text);
    }
    let ids: HashSet<&str> = replies.iter().map(|r| r.body["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replies.iter().filter(|r| r.status == StatusCode::CREATED).count(), 1, "exactly one creation");

    let id = ids.into_iter().next().unwrap().to_string();
    assert_eq!(roster(&app, &alice, &id).await, ["alice member", "bob member"]);
    assert_eq!(member_count(&app, &bob, &id).await, 2);
    assert_eq!(my_conversation_ids(&app, &alice).await, [id.as_str()]);
    assert_eq!(my_conversation_ids(&app, &bob).await, [id]);
}

#[tokio::test]
async fn a_group_makes_its_creator_owner_and_the_others_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    app.user(&tenant, "carol").await;

    let body = json!({
        "type": "group",
        "members": ["bob", "carol", "bob", "alice"],
        "name": "  Team  ",
        "description": "Where the team talks",
        "custom": {"colour": "teal"},
        "private": true,
    });
    let reply = create(&app, &alice, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let group = &reply.body;
    let id = group["id"].as_str().unwrap();
    assert_eq!(group["type"], "group");
    assert_eq!(group["name"], "Team");
    assert_eq!(group["description"], "Where the team talks");
    assert_eq!(group["custom"], json!({"colour": "teal"}));
    assert_eq!(group["private"], false, "only channels are private");
    assert_eq!(group["member_count"], 3, "duplicates and the creator count once");
    assert_eq!(group["max_members"], 1000, "the tenant's max_conversation_members");
    assert_eq!(group["created_by"], "alice");
    assert_eq!(group["last_seq"], 0);
    assert_eq!(group["membership"]["role"], "owner");
    assert_eq!(group["membership"]["unread_count"], 0);

    assert_eq!(roster(&app, &bob, id).await, ["alice owner", "bob member", "carol member"]);
    let seen_by_bob = view(&app, &bob, id).await;
    assert_eq!(seen_by_bob["membership"]["role"], "member");
    assert_eq!(seen_by_bob["member_count"], 3);
    assert!(history(&app, &bob, id).await.is_empty(), "creation posts no messages");
}

#[tokio::test]
async fn channels_are_public_unless_private() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let dave = app.user(&tenant, "dave").await;

    let public = create(&app, &alice, json!({"type": "channel", "members": ["bob"], "name": "general"})).await;
    assert_eq!(public.status, StatusCode::CREATED, "{}", public.text);
    assert_eq!(public.body["type"], "channel");
    assert_eq!(public.body["private"], false);
    assert_eq!(public.body["membership"]["role"], "owner");
    let public = public.body["id"].as_str().unwrap().to_string();

    let private =
        create(&app, &alice, json!({"type": "channel", "members": ["bob"], "name": "staff", "private": true})).await;
    assert_eq!(private.status, StatusCode::CREATED, "{}", private.text);
    assert_eq!(private.body["private"], true);
    let private = private.body["id"].as_str().unwrap().to_string();

    let seen = view(&app, &dave, &public).await;
    assert_eq!(seen["name"], "general");
    assert_eq!(seen["member_count"], 2);
    assert!(seen["membership"].is_null(), "a non-member has no membership: {seen}");

    assert_error(&get(&app, &dave, &private).await, StatusCode::NOT_FOUND, "not_found");
    let members = app.call(Method::GET, &at(&private, "/members"), &dave, None).await;
    assert_error(&members, StatusCode::NOT_FOUND, "not_found");
    let messages = app.call(Method::GET, &at(&private, "/messages"), &dave, None).await;
    assert_error(&messages, StatusCode::NOT_FOUND, "not_found");
    assert_error(&join(&app, &dave, &private).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(view(&app, &bob, &private).await["membership"]["role"], "member");
    assert!(my_conversation_ids(&app, &dave).await.is_empty());
}

#[tokio::test]
async fn creation_rejects_unknown_and_deactivated_members_and_oversized_rosters() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    app.user(&tenant, "carol").await;
    app.user(&tenant, "gone").await;
    let deactivated = app.call(Method::DELETE, "/v1/users/gone", &tenant.key, None).await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.text);

    let unknown = create(&app, &alice, json!({"type": "group", "members": ["bob", "ghost"]})).await;
    assert_invalid(&unknown, "members");
    assert_eq!(unknown.body["error"]["details"]["user_ids"], json!(["ghost"]));
    let inactive = create(&app, &alice, json!({"type": "group", "members": ["gone", "bob"]})).await;
    assert_invalid(&inactive, "members");
    assert_eq!(inactive.body["error"]["details"]["user_ids"], json!(["gone"]));
    let both = create(&app, &alice, json!({"type": "channel", "members": ["gone", "ghost", "carol"]})).await;
    assert_invalid(&both, "members");
    let named: HashSet<&str> = both.body["error"]["details"]["user_ids"]
        .as_array()
        .expect("user_ids")
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(named, HashSet::from(["gone", "ghost"]));
    let direct = create(&app, &alice, json!({"type": "direct", "members": ["gone"]})).await;
    assert_invalid(&direct, "members");
    assert_invalid(&create(&app, &alice, json!({"type": "group", "members": ["not valid!"]})).await, "members");

    let crowded = create(&app, &alice, json!({"type": "group", "members": ["bob", "carol"], "max_members": 2})).await;
    assert_invalid(&crowded, "members");
    for max in [0, 1, 1001] {
        let reply = create(&app, &alice, json!({"type": "group", "members": ["bob"], "max_members": max})).await;
        assert_invalid(&reply, "max_members");
    }
    assert!(my_conversation_ids(&app, &alice).await.is_empty(), "nothing was created");

    let exact = create(&app, &alice, json!({"type": "group", "members": ["bob", "carol"], "max_members": 3})).await;
    assert_eq!(exact.status, StatusCode::CREATED, "{}", exact.text);
    assert_eq!(exact.body["max_members"], 3);
    assert_eq!(exact.body["member_count"], 3);

    // A tenant with a lower cap.
    let small = app.create_tenant_with(json!({"limits": {"max_conversation_members": 4}})).await;
    let (key, _) = app.issue_key(&small, None).await;
    let small = ChatTenant { id: small, key };
    let owner = app.user(&small, "owner").await;
    for user in ["u1", "u2", "u3", "u4"] {
        app.user(&small, user).await;
    }
    let default = create(&app, &owner, json!({"type": "group", "members": ["u1"]})).await;
    assert_eq!(default.status, StatusCode::CREATED, "{}", default.text);
    assert_eq!(default.body["max_members"], 4);
    let above = create(&app, &owner, json!({"type": "group", "members": ["u1"], "max_members": 5})).await;
    assert_invalid(&above, "max_members");
    let too_many = create(&app, &owner, json!({"type": "group", "members": ["u1", "u2", "u3", "u4"]})).await;
    assert_invalid(&too_many, "members");
    let full = create(&app, &owner, json!({"type": "channel", "members": ["u1", "u2", "u3"]})).await;
    assert_eq!(full.status, StatusCode::CREATED, "{}", full.text);
    assert_eq!(full.body["member_count"], 4);
}

#[tokio::test]
async fn non_members_cannot_see_a_group_and_bad_ids_are_rejected() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let eve = app.user(&tenant, "eve").await;
    let group = app.conversation(&alice, "group", &["bob"]).await;
    assert_status(&app.say(&alice, &group, "secret plans").await, StatusCode::CREATED);

    assert_error(&get(&app, &eve, &group).await, StatusCode::NOT_FOUND, "not_found");
    let members = app.call(Method::GET, &at(&group, "/members"), &eve, None).await;
    assert_error(&members, StatusCode::NOT_FOUND, "not_found");
    let messages = app.call(Method::GET, &at(&group, "/messages"), &eve, None).await;
    assert_error(&messages, StatusCode::NOT_FOUND, "not_found");
    assert!(!messages.text.contains("secret"));
    assert_error(&app.say(&eve, &group, "let me in").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&join(&app, &eve, &group).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&patch(&app, &eve, &group, json!({"name": "mine"})).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&add(&app, &eve, &group, &["eve"]).await, StatusCode::NOT_FOUND, "not_found");
    assert!(my_conversation_ids(&app, &eve).await.is_empty());
    assert_eq!(view(&app, &bob, &group).await["last_seq"], 1);

    let missing = "01890a5d-ac96-774b-bcce-b302099a8057";
    assert_error(&get(&app, &alice, missing).await, StatusCode::NOT_FOUND, "not_found");
    let upper = group.to_uppercase();
    for bad in ["not-a-uuid", upper.as_str(), "0189"] {
        let reply = get(&app, &alice, bad).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(reply.body["error"]["details"]["param"], "conversation_id", "{}", reply.text);
        let members = app.call(Method::GET, &at(bad, "/members"), &alice, None).await;
        assert_error(&members, StatusCode::BAD_REQUEST, "invalid_request");
        let messages = app.call(Method::GET, &at(bad, "/messages"), &alice, None).await;
        assert_error(&messages, StatusCode::BAD_REQUEST, "invalid_request");
        assert_error(&join(&app, &alice, bad).await, StatusCode::BAD_REQUEST, "invalid_request");
        assert_error(&patch(&app, &alice, bad, json!({"name": "x"})).await, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn anyone_reads_a_public_channel_but_posts_only_after_joining() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let eve = app.user(&tenant, "eve").await;
    let channel = app.conversation(&alice, "channel", &["bob"]).await;
    assert_status(&app.say(&alice, &channel, "welcome all").await, StatusCode::CREATED);

    let seen = view(&app, &eve, &channel).await;
    assert!(seen["membership"].is_null(), "{seen}");
    let messages = history(&app, &eve, &channel).await;
    assert_eq!(messages[0]["text"], "welcome all");
    assert_eq!(roster(&app, &eve, &channel).await, ["alice owner", "bob member"]);

    assert_error(&app.say(&eve, &channel, "hi").await, StatusCode::FORBIDDEN, "not_a_member");
    let mute = set_member(&app, &eve, &channel, "eve", json!({"muted": true})).await;
    assert_error(&mute, StatusCode::FORBIDDEN, "not_a_member");
    let read = app.call(Method::POST, &at(&channel, "/read"), &eve, Some(json!({"seq": 1}))).await;
    assert_error(&read, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(&patch(&app, &eve, &channel, json!({"name": "x"})).await, StatusCode::FORBIDDEN, "not_a_member");
    assert!(my_conversation_ids(&app, &eve).await.is_empty());

    let joined = join(&app, &eve, &channel).await;
    assert_status(&joined, StatusCode::OK);
    assert_eq!(joined.body["user_id"], "eve");
    assert_eq!(joined.body["role"], "member");
    assert_eq!(joined.body["last_read_seq"], 1, "nothing from before joining is unread");
    assert_eq!(member_count(&app, &alice, &channel).await, 3);
    let again = join(&app, &eve, &channel).await;
    assert_status(&again, StatusCode::OK);
    assert_eq!(again.body["user_id"], "eve");
    assert_eq!(member_count(&app, &alice, &channel).await, 3, "joining twice counts once");

    let posted = app.say(&eve, &channel, "hi").await;
    assert_status(&posted, StatusCode::CREATED);
    assert_eq!(posted.body["seq"], 3);
    let seen = view(&app, &eve, &channel).await;
    assert_eq!(seen["membership"]["role"], "member");
    assert_eq!(my_conversation_ids(&app, &eve).await, [channel.as_str()]);
    let items = history(&app, &alice, &channel).await;
    assert_eq!(system_events(&items), ["member_joined eve"]);
    assert_eq!(items[1]["sender_id"], "eve");
    assert_eq!(roster(&app, &alice, &channel).await, ["alice owner", "bob member", "eve member"]);
}

#[tokio::test]
async fn owners_and_admins_change_the_profile_and_members_cannot() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let group = app.conversation(&alice, "group", &["bob", "carol"]).await;
    let before = view(&app, &alice, &group).await;
    tick().await;

    let changes = json!({
        "name": "Renamed",
        "description": "About us",
        "avatar_url": "https://example.com/a.png",
        "custom": {"topic": "rust"},
        "max_members": 10,
    });
    let changed = patch(&app, &alice, &group, changes).await;
    assert_status(&changed, StatusCode::OK);
    assert_eq!(changed.body["name"], "Renamed");
    assert_eq!(changed.body["description"], "About us");
    assert_eq!(changed.body["avatar_url"], "https://example.com/a.png");
    assert_eq!(changed.body["custom"], json!({"topic": "rust"}));
    assert_eq!(changed.body["max_members"], 10);
    assert_eq!(changed.body["membership"]["role"], "owner");
    assert_ne!(changed.body["updated_at"], before["updated_at"]);
    let seen = view(&app, &carol, &group).await;
    assert_eq!(seen["name"], "Renamed");
    assert_eq!(seen["custom"], json!({"topic": "rust"}));
    assert_eq!(seen["max_members"], 10);

    let refused = patch(&app, &carol, &group, json!({"name": "Carol's"})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&patch(&app, &carol, &group, json!({"max_members": 50})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(view(&app, &alice, &group).await["name"], "Renamed");

    assert_status(&set_role(&app, &alice, &group, "bob", "admin").await, StatusCode::OK);
    let by_admin = patch(&app, &bob, &group, json!({"description": null, "custom": {"topic": "go"}})).await;
    assert_status(&by_admin, StatusCode::OK);
    assert!(by_admin.body["description"].is_null(), "null clears");
    assert_eq!(by_admin.body["name"], "Renamed", "absent keeps");
    assert_eq!(by_admin.body["custom"], json!({"topic": "go"}));

    assert_invalid(&patch(&app, &alice, &group, json!({"max_members": 2})).await, "max_members");
    assert_invalid(&patch(&app, &alice, &group, json!({"max_members": 1001})).await, "max_members");
    assert_invalid(&patch(&app, &alice, &group, json!({"name": "   "})).await, "name");
    assert_invalid(&patch(&app, &alice, &group, json!({"avatar_url": "ftp://x"})).await, "avatar_url");
    assert_error(
        &patch(&app, &alice, &group, json!({"colour": "red"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(view(&app, &alice, &group).await["max_members"], 10, "refused changes change nothing");
    let exact = patch(&app, &alice, &group, json!({"max_members": 3})).await;
    assert_status(&exact, StatusCode::OK);
    assert_eq!(exact.body["max_members"], 3);
    assert_eq!(exact.body["member_count"], 3);

    let private = patch(&app, &alice, &group, json!({"private": true})).await;
    assert_status(&private, StatusCode::OK);
    assert_eq!(private.body["private"], false, "only channels are private");
}

#[tokio::test]
async fn a_channel_made_private_disappears_for_non_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let eve = app.user(&tenant, "eve").await;
    let channel = created(&app, &alice, json!({"type": "channel", "members": ["bob"], "max_members": 3})).await;
    assert!(view(&app, &eve, &channel).await["membership"].is_null());

    let hidden = patch(&app, &alice, &channel, json!({"private": true})).await;
    assert_status(&hidden, StatusCode::OK);
    assert_eq!(hidden.body["private"], true);
    assert_error(&get(&app, &eve, &channel).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&join(&app, &eve, &channel).await, StatusCode::NOT_FOUND, "not_found");

    let shown = patch(&app, &alice, &channel, json!({"private": false})).await;
    assert_status(&shown, StatusCode::OK);
    assert_eq!(shown.body["private"], false);
    assert_status(&join(&app, &eve, &channel).await, StatusCode::OK);
    assert_eq!(member_count(&app, &alice, &channel).await, 3);

    // Full: nobody else gets in, by joining or by being added.
    let frank = app.user(&tenant, "frank").await;
    assert_error(&join(&app, &frank, &channel).await, StatusCode::CONFLICT, "limit_reached");
    assert_error(&add(&app, &alice, &channel, &["frank"]).await, StatusCode::CONFLICT, "limit_reached");
    assert_status(&join(&app, &eve, &channel).await, StatusCode::OK);
    assert_eq!(member_count(&app, &alice, &channel).await, 3);
    assert_eq!(system_events(&history(&app, &alice, &channel).await), ["member_joined eve"]);
}

#[tokio::test]
async fn concurrent_joins_respect_max_members_and_keep_seqs_gapless() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(app.user(&tenant, &format!("u{i}")).await);
    }
    let channel = created(&app, &alice, json!({"type": "channel", "members": ["u0"], "max_members": 5})).await;

    let joins = futures_util::future::join_all(tokens[1..].iter().map(|t| join(&app, t, &channel)));
    let texts: Vec<String> = (0..5).map(|i| format!("msg {i}")).collect();
    let says = futures_util::future::join_all(texts.iter().map(|text| app.say(&alice, &channel, text)));
    let (joins, says) = tokio::join!(joins, says);
    assert_eq!(joins.iter().filter(|r| r.status == StatusCode::OK).count(), 3, "three free slots");
    for refused in joins.iter().filter(|r| r.status != StatusCode::OK) {
        assert_error(refused, StatusCode::CONFLICT, "limit_reached");
    }
    assert!(says.iter().all(|r| r.status == StatusCode::CREATED));

    assert_eq!(member_count(&app, &alice, &channel).await, 5);
    assert_eq!(roster(&app, &alice, &channel).await.len(), 5);
    let items = history(&app, &alice, &channel).await;
    assert_eq!(items.len(), 8, "five messages and three joins");
    assert_eq!(system_events(&items).len(), 3);
}

#[tokio::test]
async fn members_are_listed_in_user_id_order_page_by_page() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut others = Vec::new();
    for i in (0..11).rev() {
        let id = format!("m{i:02}");
        app.user(&tenant, &id).await;
        others.push(id);
    }
    let others_ref: Vec<&str> = others.iter().map(String::as_str).collect();
    let group = app.conversation(&alice, "group", &others_ref).await;
    let mut expected: Vec<String> = others.clone();
    expected.push("alice".into());
    expected.sort();

    let paged = app.collect_pages(&at(&group, "/members?limit=5"), &alice, "after", 5).await;
    let ids: Vec<&str> = paged.iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, expected);
    assert_eq!(paged[0]["role"], "owner");
    assert!(paged[1..].iter().all(|m| m["role"] == "member"));
    for member in &paged {
        assert!(member["joined_at"].is_string());
        assert_eq!(member["last_read_seq"], 0);
        assert_eq!(member["last_delivered_seq"], 0);
    }
    let one_by_one = app.collect_pages(&at(&group, "/members?limit=1"), &alice, "after", 1).await;
    assert_eq!(one_by_one, paged);
    let whole = roster(&app, &alice, &group).await;
    assert_eq!(whole.len(), 12);

    let bad = app.call(Method::GET, &at(&group, "/members?limit=0"), &alice, None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");
    let too_big = app.call(Method::GET, &at(&group, "/members?limit=201"), &alice, None).await;
    assert_error(&too_big, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn owners_and_admins_add_members_up_to_max_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    app.user(&tenant, "dave").await;
    let erin = app.user(&tenant, "erin").await;
    let group = created(&app, &alice, json!({"type": "group", "members": ["bob"], "max_members": 4})).await;

    assert_error(&add(&app, &bob, &group, &["carol"]).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&get(&app, &carol, &group).await, StatusCode::NOT_FOUND, "not_found");

    let added = add(&app, &alice, &group, &["carol", "bob"]).await;
    assert_status(&added, StatusCode::OK);
    let items = added.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "bob already is a member: {}", added.text);
    assert_eq!(items[0]["user_id"], "carol");
    assert_eq!(items[0]["role"], "member");
    assert_eq!(member_count(&app, &alice, &group).await, 3);
    assert_eq!(view(&app, &carol, &group).await["membership"]["role"], "member");

    let repeated = add(&app, &alice, &group, &["carol"]).await;
    assert_status(&repeated, StatusCode::OK);
    assert_eq!(repeated.body["items"], json!([]));
    assert_eq!(member_count(&app, &alice, &group).await, 3);

    assert_invalid(&add(&app, &alice, &group, &["ghost"]).await, "user_ids");
    assert_invalid(&add(&app, &alice, &group, &[]).await, "user_ids");

    assert_status(&set_role(&app, &alice, &group, "bob", "admin").await, StatusCode::OK);
    let by_admin = add(&app, &bob, &group, &["dave"]).await;
    assert_status(&by_admin, StatusCode::OK);
    assert_eq!(by_admin.body["items"][0]["user_id"], "dave");
    assert_eq!(member_count(&app, &alice, &group).await, 4);

    let full = add(&app, &alice, &group, &["erin"]).await;
    assert_error(&full, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(full.body["error"]["details"]["limit"], "max_members");
    assert_eq!(full.body["error"]["details"]["value"], 4);
    assert_eq!(member_count(&app, &alice, &group).await, 4);
    assert_error(&get(&app, &erin, &group).await, StatusCode::NOT_FOUND, "not_found");

    let items = history(&app, &carol, &group).await;
    assert_eq!(system_events(&items), ["member_added carol", "role_changed bob", "member_added dave"]);
    assert!(items.iter().all(|m| m["kind"] == "system"));
    assert_eq!(items[0]["metadata"]["by"], "alice");
    assert_eq!(items[0]["sender_id"], "alice");
    assert_eq!(items[1]["metadata"]["role"], "admin");
    assert_eq!(items[1]["metadata"]["by"], "alice");
    assert_eq!(items[2]["metadata"]["by"], "bob");
    assert_eq!(items[2]["sender_id"], "bob");
    assert_eq!(roster(&app, &alice, &group).await, ["alice owner", "bob admin", "carol member", "dave member"]);
}

#[tokio::test]
async fn removal_follows_the_role_hierarchy_and_members_may_leave() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let dave = app.user(&tenant, "dave").await;
    let erin = app.user(&tenant, "erin").await;
    let group = app.conversation(&alice, "group", &["bob", "carol", "dave", "erin"]).await;
    assert_status(&set_role(&app, &alice, &group, "bob", "admin").await, StatusCode::OK);
    assert_status(&set_role(&app, &alice, &group, "carol", "admin").await, StatusCode::OK);

    assert_error(&remove(&app, &dave, &group, "erin").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove(&app, &bob, &group, "carol").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove(&app, &bob, &group, "alice").await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(member_count(&app, &alice, &group).await, 5);

    assert_status(&remove(&app, &bob, &group, "dave").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &group).await, 4);
    assert_error(&get(&app, &dave, &group).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.say(&dave, &group, "still here?").await, StatusCode::NOT_FOUND, "not_found");
    assert!(my_conversation_ids(&app, &dave).await.is_empty());
    assert_error(&remove(&app, &bob, &group, "dave").await, StatusCode::NOT_FOUND, "not_found");

    assert_status(&remove(&app, &erin, &group, "erin").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &group).await, 3);
    assert_error(&get(&app, &erin, &group).await, StatusCode::NOT_FOUND, "not_found");

    assert_status(&remove(&app, &alice, &group, "carol").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &group).await, 2);
    assert_error(&get(&app, &carol, &group).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(roster(&app, &alice, &group).await, ["alice owner", "bob admin"]);

    let items = history(&app, &bob, &group).await;
    assert_eq!(
        system_events(&items),
        ["role_changed bob", "role_changed carol", "member_removed dave", "member_left erin", "member_removed carol"]
    );
    assert_eq!(items[2]["metadata"]["by"], "bob");
    assert_eq!(items[3]["sender_id"], "erin");
    assert_eq!(items[4]["metadata"]["by"], "alice");

    // A removed member can be added back.
    let back = add(&app, &alice, &group, &["dave"]).await;
    assert_status(&back, StatusCode::OK);
    assert_eq!(back.body["items"][0]["user_id"], "dave");
    assert_eq!(back.body["items"][0]["last_read_seq"], 5);
    assert_eq!(member_count(&app, &alice, &group).await, 3);
}

#[tokio::test]
async fn the_last_owner_hands_over_before_leaving() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let group = app.conversation(&alice, "group", &["bob", "carol"]).await;

    assert_error(&remove(&app, &alice, &group, "alice").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&set_role(&app, &alice, &group, "alice", "admin").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&set_role(&app, &alice, &group, "alice", "member").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&set_role(&app, &bob, &group, "bob", "owner").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&set_role(&app, &bob, &group, "carol", "admin").await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(roster(&app, &alice, &group).await, ["alice owner", "bob member", "carol member"]);

    assert_status(&set_role(&app, &alice, &group, "carol", "admin").await, StatusCode::OK);
    assert_error(&set_role(&app, &carol, &group, "bob", "owner").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&set_role(&app, &carol, &group, "carol", "owner").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&set_role(&app, &carol, &group, "bob", "admin").await, StatusCode::FORBIDDEN, "forbidden");
    let unknown = set_role(&app, &alice, &group, "alice", "superuser").await;
    assert_error(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    let promoted = set_role(&app, &alice, &group, "bob", "owner").await;
    assert_status(&promoted, StatusCode::OK);
    assert_eq!(promoted.body["user_id"], "bob");
    assert_eq!(promoted.body["role"], "owner");
    let same = set_role(&app, &alice, &group, "bob", "owner").await;
    assert_status(&same, StatusCode::OK);

    assert_status(&remove(&app, &alice, &group, "alice").await, StatusCode::NO_CONTENT);
    assert_error(&get(&app, &alice, &group).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(roster(&app, &bob, &group).await, ["bob owner", "carol admin"]);

    assert_error(&remove(&app, &bob, &group, "bob").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&set_role(&app, &bob, &group, "bob", "admin").await, StatusCode::CONFLICT, "last_owner");
    assert_status(&remove(&app, &bob, &group, "carol").await, StatusCode::NO_CONTENT);
    assert_status(&remove(&app, &bob, &group, "bob").await, StatusCode::NO_CONTENT);
    assert_error(&get(&app, &bob, &group).await, StatusCode::NOT_FOUND, "not_found");

    // Two owners: either may step down.
    let other = app.conversation(&alice, "group", &["bob"]).await;
    assert_status(&set_role(&app, &alice, &other, "bob", "owner").await, StatusCode::OK);
    let stepped_down = set_role(&app, &alice, &other, "alice", "member").await;
    assert_status(&stepped_down, StatusCode::OK);
    assert_eq!(stepped_down.body["role"], "member");
    assert_error(&set_role(&app, &bob, &other, "bob", "member").await, StatusCode::CONFLICT, "last_owner");
    let items = history(&app, &alice, &other).await;
    assert_eq!(system_events(&items), ["role_changed bob", "role_changed alice"]);
    assert_eq!(items[0]["metadata"]["role"], "owner");
    assert_eq!(items[1]["metadata"]["role"], "member");
}

#[tokio::test]
async fn members_mute_and_pin_only_for_themselves() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let group = app.conversation(&alice, "group", &["bob"]).await;

    let own = set_member(&app, &bob, &group, "bob", json!({"muted": true, "pinned": true})).await;
    assert_status(&own, StatusCode::OK);
    assert_eq!(own.body["user_id"], "bob");
    assert_eq!(own.body["role"], "member");
    let mine = view(&app, &bob, &group).await["membership"].clone();
    assert_eq!(mine["muted"], true);
    assert_eq!(mine["pinned"], true);
    let listed = my_membership(&app, &bob, &group).await;
    assert_eq!(listed["muted"], true);
    assert_eq!(listed["pinned"], true);
    let alices = view(&app, &alice, &group).await["membership"].clone();
    assert_eq!(alices["muted"], false, "preferences are per member");
    assert_eq!(alices["pinned"], false);

    assert_error(
        &set_member(&app, &bob, &group, "alice", json!({"muted": true})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &set_member(&app, &alice, &group, "bob", json!({"muted": false})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &set_member(&app, &alice, &group, "bob", json!({"pinned": false})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(view(&app, &alice, &group).await["membership"]["muted"], false);

    let unmuted = set_member(&app, &bob, &group, "bob", json!({"muted": false})).await;
    assert_status(&unmuted, StatusCode::OK);
    let mine = view(&app, &bob, &group).await["membership"].clone();
    assert_eq!(mine["muted"], false);
    assert_eq!(mine["pinned"], true, "absent keeps");
    assert!(history(&app, &alice, &group).await.is_empty(), "preferences post no system messages");
}

#[tokio::test]
async fn membership_changes_are_recorded_as_gapless_system_messages() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    app.user(&tenant, "dave").await;
    let eve = app.user(&tenant, "eve").await;
    let channel = app.conversation(&alice, "channel", &["bob", "carol"]).await;

    assert_eq!(app.say(&alice, &channel, "hello").await.body["seq"], 1);
    assert_status(&add(&app, &alice, &channel, &["dave"]).await, StatusCode::OK);
    assert_eq!(member_count(&app, &alice, &channel).await, 4);
    assert_status(&set_role(&app, &alice, &channel, "bob", "admin").await, StatusCode::OK);
    assert_status(&join(&app, &eve, &channel).await, StatusCode::OK);
    assert_eq!(member_count(&app, &alice, &channel).await, 5);
    let said = app.say(&bob, &channel, "hi").await;
    assert_status(&said, StatusCode::CREATED);
    assert_eq!(said.body["seq"], 5);
    assert_status(&remove(&app, &bob, &channel, "dave").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 4);
    assert_status(&remove(&app, &carol, &channel, "carol").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 3);
    assert_status(&ban(&app, &alice, &channel, "eve").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 2);

    let items = history(&app, &bob, &channel).await;
    assert_eq!(items.len(), 8);
    let kinds: Vec<&str> = items.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["text", "system", "system", "system", "text", "system", "system", "system"]);
    assert_eq!(
        system_events(&items),
        [
            "member_added dave",
            "role_changed bob",
            "member_joined eve",
            "member_removed dave",
            "member_left carol",
            "member_banned eve",
        ]
    );
    let senders: Vec<&str> = items.iter().map(|m| m["sender_id"].as_str().unwrap()).collect();
    assert_eq!(senders, ["alice", "alice", "alice", "eve", "bob", "bob", "carol", "alice"]);
    for (seq, by) in [(2, "alice"), (3, "alice"), (6, "bob"), (8, "alice")] {
        assert_eq!(items[seq - 1]["metadata"]["by"], by, "seq {seq}");
    }
    for system in items.iter().filter(|m| m["kind"] == "system") {
        assert!(system["text"].as_str().is_some_and(|t| !t.is_empty()), "{system}");
    }

    let path = format!("/v1/conversations/{channel}");
    let seen = app.get_until(&path, &alice, |v| v["last_message"]["seq"] == 8).await.body;
    assert_eq!(seen["last_seq"], 8);
    assert_eq!(seen["last_message"]["seq"], 8);
    assert_eq!(seen["last_message"]["kind"], "system");
    assert_eq!(roster(&app, &alice, &channel).await, ["alice owner", "bob admin"]);
}

#[tokio::test]
async fn bans_remove_and_keep_users_out_until_lifted() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let dave = app.user(&tenant, "dave").await;
    let channel = app.conversation(&alice, "channel", &["bob", "carol"]).await;

    assert_error(&ban(&app, &carol, &channel, "bob").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&unban(&app, &carol, &channel, "bob").await, StatusCode::FORBIDDEN, "forbidden");
    assert_invalid(&ban(&app, &alice, &channel, "alice").await, "user_id");
    assert_error(&ban(&app, &alice, &channel, "ghost").await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(member_count(&app, &alice, &channel).await, 3);

    assert_status(&ban(&app, &alice, &channel, "bob").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 2);
    assert_eq!(roster(&app, &alice, &channel).await, ["alice owner", "carol member"]);
    assert!(view(&app, &bob, &channel).await["membership"].is_null(), "a public channel stays readable");
    assert!(my_conversation_ids(&app, &bob).await.is_empty());
    assert_error(&app.say(&bob, &channel, "let me back").await, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(&join(&app, &bob, &channel).await, StatusCode::FORBIDDEN, "forbidden");
    let re_add = add(&app, &alice, &channel, &["bob"]).await;
    assert_error(&re_add, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(re_add.body["error"]["details"]["user_id"], "bob");
    assert_eq!(member_count(&app, &alice, &channel).await, 2);

    assert_status(&ban(&app, &alice, &channel, "bob").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 2, "banning twice changes nothing");

    // A pre-emptive ban of someone who never joined.
    assert_status(&ban(&app, &alice, &channel, "dave").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 2);
    assert_error(&join(&app, &dave, &channel).await, StatusCode::FORBIDDEN, "forbidden");

    let items = history(&app, &carol, &channel).await;
    assert_eq!(system_events(&items), ["member_banned bob", "member_banned dave"]);

    assert_status(&unban(&app, &alice, &channel, "bob").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &channel).await, 2, "unbanning does not re-add");
    let rejoined = join(&app, &bob, &channel).await;
    assert_status(&rejoined, StatusCode::OK);
    assert_eq!(rejoined.body["role"], "member");
    assert_eq!(member_count(&app, &alice, &channel).await, 3);
    assert_status(&app.say(&bob, &channel, "back").await, StatusCode::CREATED);
    assert_status(&unban(&app, &alice, &channel, "dave").await, StatusCode::NO_CONTENT);
    let added = add(&app, &alice, &channel, &["dave"]).await;
    assert_status(&added, StatusCode::OK);
    assert_eq!(added.body["items"][0]["user_id"], "dave");
    assert_eq!(member_count(&app, &alice, &channel).await, 4);

    // In a group: admins ban plain members, not other admins or the owner; bans hide the group.
    let group = app.conversation(&alice, "group", &["bob", "carol", "dave"]).await;
    assert_status(&set_role(&app, &alice, &group, "bob", "admin").await, StatusCode::OK);
    assert_status(&set_role(&app, &alice, &group, "carol", "admin").await, StatusCode::OK);
    assert_error(&ban(&app, &bob, &group, "carol").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&ban(&app, &bob, &group, "alice").await, StatusCode::FORBIDDEN, "forbidden");
    assert_status(&ban(&app, &bob, &group, "dave").await, StatusCode::NO_CONTENT);
    assert_eq!(member_count(&app, &alice, &group).await, 3);
    assert_error(&get(&app, &dave, &group).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&add(&app, &alice, &group, &["dave"]).await, StatusCode::FORBIDDEN, "forbidden");
    assert_status(&unban(&app, &bob, &group, "dave").await, StatusCode::NO_CONTENT);
    assert_status(&add(&app, &alice, &group, &["dave"]).await, StatusCode::OK);
    assert_eq!(view(&app, &dave, &group).await["membership"]["role"], "member");
    assert_eq!(member_count(&app, &alice, &group).await, 4);
    let events = system_events(&history(&app, &alice, &group).await);
    assert_eq!(events, ["role_changed bob", "role_changed carol", "member_banned dave", "member_added dave"]);
}

#[tokio::test]
async fn my_conversations_follow_last_activity_with_unread_counts() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        tick().await;
        ids.push(app.conversation(&alice, "group", &["bob"]).await);
    }
    let (g1, g2, g3) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    assert_eq!(my_conversation_ids(&app, &alice).await, [g3, g2, g1]);
    assert_eq!(my_conversation_ids(&app, &bob).await, [g3, g2, g1]);

    tick().await;
    assert_status(&app.say_recorded(&bob, g1, "first").await, StatusCode::CREATED);
    assert_eq!(my_conversation_ids(&app, &alice).await, [g1, g3, g2]);
    assert_eq!(my_conversation_ids(&app, &bob).await, [g1, g3, g2]);
    assert_eq!(my_membership(&app, &alice, g1).await["unread_count"], 1);
    assert_eq!(my_membership(&app, &bob, g1).await["unread_count"], 0, "your own messages are read");
    assert_eq!(my_membership(&app, &alice, g3).await["unread_count"], 0);

    tick().await;
    assert_status(&app.say_recorded(&alice, g2, "one").await, StatusCode::CREATED);
    assert_status(&app.say_recorded(&alice, g2, "second").await, StatusCode::CREATED);
    assert_eq!(my_conversation_ids(&app, &bob).await, [g2, g1, g3]);
    assert_eq!(my_membership(&app, &bob, g2).await["unread_count"], 2);
    assert_eq!(my_membership(&app, &alice, g2).await["unread_count"], 0);

    let page = app.call(Method::GET, "/v1/me/conversations", &bob, None).await;
    let first = &page.body["items"][0];
    assert_eq!(first["id"], g2);
    assert_eq!(first["last_seq"], 2);
    assert_eq!(first["last_message"]["preview"], "second");
    assert_eq!(first["last_message"]["sender_id"], "alice");
    assert_eq!(first["membership"]["role"], "member");

    let read = app.call(Method::POST, &at(g2, "/read"), &bob, Some(json!({"seq": 1}))).await;
    assert_status(&read, StatusCode::OK);
    assert_eq!(read.body["unread_count"], 1);
    assert_eq!(my_membership(&app, &bob, g2).await["unread_count"], 1);
    assert_eq!(my_membership(&app, &bob, g2).await["last_read_seq"], 1);
    assert_status(&app.call(Method::POST, &at(g2, "/read"), &bob, Some(json!({"seq": 2}))).await, StatusCode::OK);
    assert_eq!(my_membership(&app, &bob, g2).await["unread_count"], 0);
    assert_eq!(my_conversation_ids(&app, &bob).await, [g2, g1, g3], "reading is not activity");

    tick().await;
    assert_status(&add(&app, &alice, g3, &["bob"]).await, StatusCode::OK);
    assert_eq!(my_conversation_ids(&app, &alice).await, [g2, g1, g3], "re-adding a member posts nothing");
    assert!(history(&app, &alice, g3).await.is_empty());
}

#[tokio::test]
async fn my_conversations_pages_cover_every_conversation_once() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(app.conversation(&alice, "group", &["bob"]).await);
    }
    mine.push(app.conversation(&alice, "direct", &["bob"]).await);
    mine.push(app.conversation(&carol, "channel", &["alice"]).await);
    let not_mine = app.conversation(&bob, "group", &["carol"]).await;
    for (i, (token, id)) in
        [(&bob, &mine[1]), (&bob, &mine[4]), (&carol, &mine[6]), (&bob, &mine[1])].into_iter().enumerate()
    {
        tick().await;
        assert_status(&app.say_recorded(token, id, &format!("message {i}")).await, StatusCode::CREATED);
    }

    let whole = my_conversation_ids(&app, &alice).await;
    assert_eq!(whole.len(), 7);
    assert_eq!(whole[..3].to_vec(), vec![mine[1].clone(), mine[6].clone(), mine[4].clone()]);
    for limit in [1, 2, 3, 7] {
        let paged = app.collect_pages(&format!("/v1/me/conversations?limit={limit}"), &alice, "after", limit).await;
        let ids: Vec<String> = paged.iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, whole, "limit {limit}");
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 7);
        assert!(!ids.contains(&not_mine));
        let times: Vec<chrono::DateTime<chrono::FixedOffset>> = paged
            .iter()
            .map(|c| chrono::DateTime::parse_from_rfc3339(c["last_activity_at"].as_str().unwrap()).unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "most recently active first");
        assert!(paged.iter().all(|c| c["membership"].is_object()));
    }
    let expected: HashSet<&String> = mine.iter().collect();
    assert_eq!(whole.iter().collect::<HashSet<_>>(), expected);
    let unread: u64 = app
        .collect_pages("/v1/me/conversations?limit=2", &alice, "after", 2)
        .await
        .iter()
        .map(|c| c["membership"]["unread_count"].as_u64().unwrap())
        .sum();
    assert_eq!(unread, 4);

    let exact = app.call(Method::GET, "/v1/me/conversations?limit=7", &alice, None).await;
    assert!(exact.body["next_cursor"].is_null(), "{}", exact.text);
    let bad = app.call(Method::GET, "/v1/me/conversations?after=garbage", &alice, None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");
    let zero = app.call(Method::GET, "/v1/me/conversations?limit=0", &alice, None).await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn a_server_key_acts_with_exactly_the_named_users_permissions() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let key = tenant.key.clone();
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    app.user(&tenant, "carol").await;
    app.user(&tenant, "eve").await;

    let reply = create(&app, &key, json!({"type": "group", "members": ["bob"], "name": "Team"})).await;
    assert_invalid(&reply, "user_id");
    let reply = app
        .call(
            Method::POST,
            "/v1/conversations?user_id=alice",
            &key,
            Some(json!({"type": "group", "members": ["bob"], "name": "Team"})),
        )
        .await;
    assert_status(&reply, StatusCode::CREATED);
    assert_eq!(reply.body["created_by"], "alice");
    assert_eq!(reply.body["membership"]["role"], "owner");
    let group = reply.body["id"].as_str().unwrap().to_string();
    let as_user = |user: &str, rest: &str| format!("{}?user_id={user}", at(&group, rest));

    assert_invalid(&get(&app, &key, &group).await, "user_id");
    assert_invalid(&patch(&app, &key, &group, json!({"name": "x"})).await, "user_id");
    assert_invalid(&app.call(Method::GET, "/v1/me/conversations", &key, None).await, "user_id");

    let as_bob = app.call(Method::GET, &as_user("bob", ""), &key, None).await;
    assert_status(&as_bob, StatusCode::OK);
    assert_eq!(as_bob.body["membership"]["role"], "member");
    let refused = app.call(Method::PATCH, &as_user("bob", ""), &key, Some(json!({"name": "Bob's"}))).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let refused = app.call(Method::POST, &as_user("bob", "/members"), &key, Some(json!({"user_ids": ["carol"]}))).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let refused = app.call(Method::PUT, &as_user("bob", "/bans/alice"), &key, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let refused = app.call(Method::PATCH, &as_user("bob", "/members/alice"), &key, Some(json!({"muted": true}))).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let as_eve = app.call(Method::GET, &as_user("eve", ""), &key, None).await;
    assert_error(&as_eve, StatusCode::NOT_FOUND, "not_found");
    let as_ghost = app.call(Method::GET, &as_user("ghost", ""), &key, None).await;
    assert_error(&as_ghost, StatusCode::NOT_FOUND, "not_found");
    app.user(&tenant, "gone").await;
    assert_status(&app.call(Method::DELETE, "/v1/users/gone", &key, None).await, StatusCode::OK);
    let as_gone = app.call(Method::GET, &as_user("gone", ""), &key, None).await;
    assert_error(&as_gone, StatusCode::FORBIDDEN, "user_deactivated");
    assert_eq!(view(&app, &alice, &group).await["name"], "Team");

    let allowed = app.call(Method::PATCH, &as_user("alice", ""), &key, Some(json!({"name": "Renamed"}))).await;
    assert_status(&allowed, StatusCode::OK);
    assert_eq!(allowed.body["name"], "Renamed");
    let added = app.call(Method::POST, &as_user("alice", "/members"), &key, Some(json!({"user_ids": ["carol"]}))).await;
    assert_status(&added, StatusCode::OK);
    let sent = app
        .call(
            Method::POST,
            &as_user("bob", "/messages"),
            &key,
            Some(json!({"client_msg_id": "k-1", "text": "from bob"})),
        )
        .await;
    assert_status(&sent, StatusCode::CREATED);
    assert_eq!(sent.body["sender_id"], "bob");
    let muted = app.call(Method::PATCH, &as_user("bob", "/members/bob"), &key, Some(json!({"muted": true}))).await;
    assert_status(&muted, StatusCode::OK);
    let mine = app.call(Method::GET, "/v1/me/conversations?user_id=bob", &key, None).await;
    assert_status(&mine, StatusCode::OK);
    assert_eq!(mine.body["items"][0]["id"], group.as_str());
    assert_eq!(mine.body["items"][0]["membership"]["muted"], true);

    let items = history(&app, &alice, &group).await;
    assert_eq!(system_events(&items), ["member_added carol"]);
    assert_eq!(items[0]["metadata"]["by"], "alice");
    assert_eq!(items[1]["sender_id"], "bob");

    // A key's scopes still apply on top of the user's permissions.
    let (reader, _) = app.issue_key(&tenant.id, Some(&["chat:read"])).await;
    assert_status(&app.call(Method::GET, &as_user("alice", ""), &reader, None).await, StatusCode::OK);
    let denied = app.call(Method::PATCH, &as_user("alice", ""), &reader, Some(json!({"name": "Nope"}))).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(view(&app, &alice, &group).await["name"], "Renamed");
}

#[tokio::test]
async fn another_tenant_cannot_reach_a_conversation_by_id() {
    let app = spawn_app().await;
    let a = app.chat_tenant().await;
    let a_alice = app.user(&a, "alice").await;
    app.user(&a, "bob").await;
    app.user(&a, "carol").await;
    let group = app.conversation(&a_alice, "group", &["bob"]).await;
    let channel = app.conversation(&a_alice, "channel", &["bob"]).await;
    for id in [&group, &channel] {
        assert_status(&app.say_recorded(&a_alice, id, "tenant A only").await, StatusCode::CREATED);
    }
    let before: Vec<(Value, Vec<String>, Vec<Value>)> = {
        let mut snapshots = Vec::new();
        for id in [&group, &channel] {
            snapshots.push((
                view(&app, &a_alice, id).await,
                roster(&app, &a_alice, id).await,
                history(&app, &a_alice, id).await,
            ));
        }
        snapshots
    };

    // Tenant B has users with the same ids.
    let b = app.chat_tenant().await;
    let b_alice = app.user(&b, "alice").await;
    app.user(&b, "bob").await;
    let b_own = app.conversation(&b_alice, "channel", &["bob"]).await;
    let foreign = create(&app, &b_alice, json!({"type": "group", "members": ["carol"]})).await;
    assert_invalid(&foreign, "members");
    assert_eq!(foreign.body["error"]["details"]["user_ids"], json!(["carol"]), "carol exists only in tenant A");
    assert_invalid(&add(&app, &b_alice, &b_own, &["carol"]).await, "user_ids");
    let callers = [(b_alice.clone(), String::new()), (b.key.clone(), "?user_id=alice".to_string())];

    for id in [&group, &channel] {
        for (token, query) in &callers {
            let routes: Vec<(Method, &str, Option<Value>)> = vec![
                (Method::GET, "", None),
                (Method::PATCH, "", Some(json!({"name": "hacked"}))),
                (Method::GET, "/members", None),
                (Method::POST, "/members", Some(json!({"user_ids": ["bob"]}))),
                (Method::DELETE, "/members/bob", None),
                (Method::DELETE, "/members/alice", None),
                (Method::PATCH, "/members/bob", Some(json!({"role": "owner"}))),
                (Method::PATCH, "/members/alice", Some(json!({"muted": true}))),
                (Method::PUT, "/bans/bob", None),
                (Method::DELETE, "/bans/bob", None),
                (Method::POST, "/join", None),
                (Method::POST, "/read", Some(json!({"seq": 1}))),
                (Method::POST, "/delivered", Some(json!({"seq": 1}))),
                (Method::GET, "/messages", None),
                (Method::POST, "/messages", Some(json!({"client_msg_id": "x-1", "text": "intrusion"}))),
            ];
            for (method, rest, body) in routes {
                let path = format!("{}{query}", at(id, rest));
                let reply = app.call(method.clone(), &path, token, body).await;
                assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
                assert!(!reply.text.contains("tenant A only"), "{method} {path}: {}", reply.text);
            }
        }
    }

    for (i, id) in [&group, &channel].into_iter().enumerate() {
        let (view_before, roster_before, history_before) = &before[i];
        let after = view(&app, &a_alice, id).await;
        for field in ["name", "member_count", "last_seq", "last_message", "updated_at", "max_members"] {
            assert_eq!(after[field], view_before[field], "{field} of {id}");
        }
        assert_eq!(after["membership"], view_before["membership"]);
        assert_eq!(&roster(&app, &a_alice, id).await, roster_before);
        assert_eq!(&history(&app, &a_alice, id).await, history_before);
    }
    assert_eq!(my_conversation_ids(&app, &b_alice).await, [b_own]);
}

/// `PATCH .../members/{user}` answers with the member at that path, never the caller's own.
#[tokio::test]
async fn patching_another_member_without_changes_describes_that_member() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let group = app.conversation(&alice, "group", &["bob"]).await;

    let reply = set_member(&app, &alice, &group, "bob", json!({})).await;
    assert_status(&reply, StatusCode::OK);
    assert_eq!(reply.body["user_id"], "bob", "the member named in the path: {}", reply.text);
    assert_eq!(reply.body["role"], "member");
    let ghost = set_member(&app, &alice, &group, "ghost", json!({})).await;
    assert_error(&ghost, StatusCode::NOT_FOUND, "not_found");
}

/// A request that loses the race to create a direct conversation gets the winner's, and still
/// sees itself as a member of it.
#[tokio::test]
async fn racing_direct_creations_each_report_the_callers_membership() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    for round in 0..5 {
        let peer = format!("peer{round}");
        let peer_token = app.user(&tenant, &peer).await;
        let attempts = (0..10).map(|i| {
            let (token, other) = if i % 2 == 0 { (&alice, peer.as_str()) } else { (&peer_token, "alice") };
            create(&app, token, json!({"type": "direct", "members": [other]}))
        });
        for reply in futures_util::future::join_all(attempts).await {
            assert!(reply.status.is_success(), "{}", reply.text);
            assert_eq!(reply.body["membership"]["role"], "member", "round {round}: {}", reply.text);
        }
    }
}

/// Owners `o0..o3` of a new group that also has the plain member `carol`.
async fn group_of_four_owners(app: &TestApp, owners: &[String]) -> String {
    let group = app.conversation(&owners[0], "group", &["o1", "o2", "o3", "carol"]).await;
    for owner in ["o1", "o2", "o3"] {
        assert_status(&set_role(app, &owners[0], &group, owner, "owner").await, StatusCode::OK);
    }
    group
}

async fn owner_count(app: &TestApp, token: &str, id: &str) -> usize {
    roster(app, token, id).await.iter().filter(|m| m.ends_with(" owner")).count()
}

/// "The last owner cannot leave or step down while others remain" must hold when several owners
/// act at the same time.
#[tokio::test]
async fn owners_stepping_down_at_once_cannot_leave_a_conversation_without_owner() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let mut owners = Vec::new();
    for i in 0..4 {
        owners.push(app.user(&tenant, &format!("o{i}")).await);
    }
    let carol = app.user(&tenant, "carol").await;
    let app = &app;
    for round in 0..5 {
        let group = group_of_four_owners(app, &owners).await;
        let leaving = owners.iter().enumerate().map(|(i, token)| {
            let path = at(&group, &format!("/members/o{i}"));
            async move { app.call(Method::DELETE, &path, token, None).await }
        });
        let replies = futures_util::future::join_all(leaving).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(owner_count(app, &carol, &group).await, 1, "round {round}: simultaneous leaves {statuses:?}");
        let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != StatusCode::NO_CONTENT).collect();
        assert_eq!(refused.len(), 1, "round {round}: {statuses:?}");
        assert_error(refused[0], StatusCode::CONFLICT, "last_owner");

        let group = group_of_four_owners(app, &owners).await;
        let demotions = owners.iter().enumerate().map(|(i, token)| {
            let path = at(&group, &format!("/members/o{i}"));
            async move { app.call(Method::PATCH, &path, token, Some(json!({"role": "member"}))).await }
        });
        let replies = futures_util::future::join_all(demotions).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(owner_count(app, &carol, &group).await, 1, "round {round}: simultaneous demotions {statuses:?}");
    }
}
