//! End users, their tokens and signing keys, relationships, acting for a user, and isolation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ChatTenant, Reply, TestApp, assert_error, assert_invalid, random_lower, spawn_app};

fn timestamp(value: &Value) -> DateTime<Utc> {
    value.as_str().expect("a timestamp string").parse().expect("an RFC 3339 timestamp")
}

async fn put_user(app: &TestApp, tenant: &ChatTenant, id: &str, body: Value) -> Reply {
    app.call(Method::PUT, &format!("/v1/users/{id}"), &tenant.key, Some(body)).await
}

async fn patch_user(app: &TestApp, tenant: &ChatTenant, id: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &format!("/v1/users/{id}"), &tenant.key, Some(body)).await
}

async fn get_user(app: &TestApp, token: &str, id: &str) -> Reply {
    app.call(Method::GET, &format!("/v1/users/{id}"), token, None).await
}

async fn mint(app: &TestApp, key: &str, id: &str, body: Option<Value>) -> Reply {
    app.call(Method::POST, &format!("/v1/users/{id}/tokens"), key, body).await
}

async fn me(app: &TestApp, token: &str) -> Reply {
    app.call(Method::GET, "/v1/me", token, None).await
}

/// The tenant's signing keys as `GET /v1/signing-keys` lists them (oldest first).
async fn signing_keys(app: &TestApp, key: &str) -> Vec<Value> {
    let reply = app.call(Method::GET, "/v1/signing-keys", key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().expect("items").clone()
}

/// Valid claims for `user` of `tenant`, expiring in ten minutes.
fn claims(tenant: &str, user: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({
        "iss": "confab",
        "aud": tenant,
        "sub": user,
        "iat": now,
        "exp": now + 600,
        "jti": format!("jti-{}", random_lower(16)),
    })
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().unwrap().remove(field);
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, secret: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("token encodes")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The claims of a token, read without verifying it.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url payload")).expect("JSON payload")
}

async fn relate(app: &TestApp, token: &str, other: &str, kind: &str) -> Reply {
    app.call(Method::PUT, &format!("/v1/me/relationships/{other}"), token, Some(json!({"type": kind}))).await
}

fn user_ids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|item| item["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn put_creates_a_user_then_replaces_every_field() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let full = json!({
        "display_name": "  Alice Liddell  ",
        "avatar_url": "https://cdn.example.com/alice.png",
        "kind": "bot",
        "custom": {"team": "red", "level": 3, "tags": ["a", "b"]},
        "settings": {"notifications": "mentions", "show_online": false, "read_receipts": false},
    });
    let created = put_user(&app, &tenant, "alice", full).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let user = &created.body;
    assert_eq!(user["id"], "alice");
    assert_eq!(user["display_name"], "Alice Liddell", "display names are trimmed");
    assert_eq!(user["avatar_url"], "https://cdn.example.com/alice.png");
    assert_eq!(user["kind"], "bot");
    assert_eq!(user["custom"], json!({"team": "red", "level": 3, "tags": ["a", "b"]}));
    assert_eq!(user["settings"], json!({"notifications": "mentions", "show_online": false, "read_receipts": false}));
    assert_eq!(user["active"], true);
    assert!(user["deactivated_at"].is_null());
    let created_at = timestamp(&user["created_at"]);
    eprintln!(
        "PROBE create={} get={}",
        user["created_at"],
        get_user(&app, &tenant.key, "alice").await.body["created_at"]
    );

    let replaced = put_user(&app, &tenant, "alice", json!({"display_name": "Alice L."})).await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    let user = &replaced.body;
    assert_eq!(user["display_name"], "Alice L.");
    assert!(user["avatar_url"].is_null(), "PUT replaces: an absent avatar is removed");
    assert_eq!(user["kind"], "human");
    assert_eq!(user["custom"], json!({}));
    assert_eq!(user["settings"], json!({"notifications": "all", "show_online": true, "read_receipts": true}));
    assert_eq!(
        timestamp(&user["created_at"]).timestamp_millis(),
        created_at.timestamp_millis(),
        "created_at is kept on replace"
    );
    assert!(timestamp(&user["updated_at"]) >= created_at);

    let read = get_user(&app, &tenant.key, "alice").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    for field in ["display_name", "avatar_url", "kind", "custom", "settings", "active", "created_at", "updated_at"] {
        assert_eq!(read.body[field], replaced.body[field], "{field}");
    }

    let defaulted = put_user(&app, &tenant, "bob@example.com", json!({})).await;
    assert_eq!(defaulted.status, StatusCode::CREATED, "{}", defaulted.text);
    assert_eq!(defaulted.body["display_name"], "bob@example.com", "the display name defaults to the id");
}

#[tokio::test]
async fn malformed_user_ids_in_the_path_are_bad_requests() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let too_long = "a".repeat(129);
    for bad in ["a b", "$x", "-x", ".x", too_long.as_str()] {
        let put = put_user(&app, &tenant, bad, json!({})).await;
        assert_error(&put, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(put.body["error"]["details"]["param"], "user_id", "{}", put.text);
        assert_error(&get_user(&app, &tenant.key, bad).await, StatusCode::BAD_REQUEST, "invalid_request");
        let patch = patch_user(&app, &tenant, bad, json!({"display_name": "x"})).await;
        assert_error(&patch, StatusCode::BAD_REQUEST, "invalid_request");
        let delete = app.call(Method::DELETE, &format!("/v1/users/{bad}"), &tenant.key, None).await;
        assert_error(&delete, StatusCode::BAD_REQUEST, "invalid_request");
        assert_error(&mint(&app, &tenant.key, bad, None).await, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let longest = "a".repeat(128);
    for good in [longest.as_str(), "auth0:12345", "_x", "@handle", "A-b.c=d"] {
        let put = put_user(&app, &tenant, good, json!({"display_name": "Someone"})).await;
        assert_eq!(put.status, StatusCode::CREATED, "{good}: {}", put.text);
        assert_eq!(put.body["id"], good);
    }
    let listed = app.call(Method::GET, "/v1/users", &tenant.key, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 5, "{}", listed.text);
}

#[tokio::test]
async fn custom_data_must_be_a_small_safe_object_and_bad_data_is_never_stored() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let max = app.settings.chat.max_custom_data_bytes;
    assert_eq!(max, 4096);
    // `{"blob":"…"}` is 11 bytes of JSON around the string.
    let at_limit = json!({"blob": "x".repeat(max - 11)});
    let over_limit = json!({"blob": "x".repeat(max - 10)});
    let bad = [
        json!([1, 2]),
        json!("text"),
        json!(7),
        json!({"$where": "1"}),
        json!({"a.b": 1}),
        json!({"outer": {"$inc": 1}}),
        json!({"list": [{"x.y": 1}]}),
        json!({"": 1}),
        over_limit.clone(),
    ];
    for custom in &bad {
        let put = put_user(&app, &tenant, "carol", json!({"custom": custom})).await;
        assert_invalid(&put, "custom");
    }
    assert_error(&get_user(&app, &tenant.key, "carol").await, StatusCode::NOT_FOUND, "not_found");

    let stored = put_user(&app, &tenant, "carol", json!({"display_name": "Carol", "custom": at_limit})).await;
    assert_eq!(stored.status, StatusCode::CREATED, "exactly {max} bytes is allowed: {}", stored.text);
    let good = json!({"plan": "gold", "nested": {"ok": [1, {"deep": true}]}});
    let stored = put_user(&app, &tenant, "carol", json!({"display_name": "Carol", "custom": good})).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    for custom in &bad {
        let put = put_user(&app, &tenant, "carol", json!({"display_name": "Changed", "custom": custom})).await;
        assert_invalid(&put, "custom");
        let patch = patch_user(&app, &tenant, "carol", json!({"display_name": "Changed", "custom": custom})).await;
        assert_invalid(&patch, "custom");
    }
    let read = get_user(&app, &tenant.key, "carol").await;
    assert_eq!(read.body["display_name"], "Carol", "a rejected request changes nothing");
    assert_eq!(read.body["custom"], good);
    assert_eq!(read.body["updated_at"], stored.body["updated_at"]);
}

#[tokio::test]
async fn profile_fields_are_validated() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    for url in ["ftp://example.com/a.png", "javascript:alert(1)", "example.com/a.png", "", long_url.as_str()] {
        let put = put_user(&app, &tenant, "dan", json!({"avatar_url": url})).await;
        assert_invalid(&put, "avatar_url");
    }
    let long_name = "n".repeat(app.settings.chat.max_name_chars + 1);
    for name in ["", "   ", "\t\n", long_name.as_str()] {
        let put = put_user(&app, &tenant, "dan", json!({"display_name": name})).await;
        assert_invalid(&put, "display_name");
    }
    let put = put_user(&app, &tenant, "dan", json!({"kind": "robot"})).await;
    assert_invalid(&put, "kind");
    let put = put_user(&app, &tenant, "dan", json!({"nickname": "d"})).await;
    assert_error(&put, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let put = put_user(&app, &tenant, "dan", json!({"settings": {"notifications": "loud"}})).await;
    assert_error(&put, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_error(&get_user(&app, &tenant.key, "dan").await, StatusCode::NOT_FOUND, "not_found");

    let created = put_user(&app, &tenant, "dan", json!({"display_name": "Dan", "avatar_url": "http://x.test/d"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_invalid(&patch_user(&app, &tenant, "dan", json!({"display_name": "  "})).await, "display_name");
    assert_invalid(&patch_user(&app, &tenant, "dan", json!({"avatar_url": "nope"})).await, "avatar_url");
    let read = get_user(&app, &tenant.key, "dan").await;
    assert_eq!(read.body["display_name"], "Dan");
    assert_eq!(read.body["avatar_url"], "http://x.test/d");
}

#[tokio::test]
async fn a_tenant_cannot_create_more_users_than_its_limit() {
    let app = spawn_app().await;
    let id = app.create_tenant_with(json!({"limits": {"max_users": 2}})).await;
    let (key, _) = app.issue_key(&id, None).await;
    let tenant = ChatTenant { id, key };
    assert_eq!(put_user(&app, &tenant, "u1", json!({})).await.status, StatusCode::CREATED);
    assert_eq!(put_user(&app, &tenant, "u2", json!({})).await.status, StatusCode::CREATED);
    let third = put_user(&app, &tenant, "u3", json!({})).await;
    assert_error(&third, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(third.body["error"]["details"]["limit"], "max_users", "{}", third.text);
    assert_eq!(third.body["error"]["details"]["value"], 2, "{}", third.text);
    assert_error(&get_user(&app, &tenant.key, "u3").await, StatusCode::NOT_FOUND, "not_found");

    let replaced = put_user(&app, &tenant, "u1", json!({"display_name": "Still fine"})).await;
    assert_eq!(replaced.status, StatusCode::OK, "replacing an existing user is not a new user: {}", replaced.text);
}

#[tokio::test]
async fn the_user_limit_holds_when_users_are_created_concurrently() {
    let app = spawn_app().await;
    let id = app.create_tenant_with(json!({"limits": {"max_users": 2}})).await;
    let (key, _) = app.issue_key(&id, None).await;
    let tenant = ChatTenant { id, key };
    let attempts = (0..8).map(|i| {
        let (app, tenant) = (&app, &tenant);
        async move { put_user(app, tenant, &format!("c{i}"), json!({})).await }
    });
    let replies = futures_util::future::join_all(attempts).await;
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_error(reply, StatusCode::CONFLICT, "limit_reached");
    }
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let stored = app.call(Method::GET, "/v1/users", &tenant.key, None).await;
    let stored = stored.body["items"].as_array().unwrap().len();
    assert!(created <= 2 && stored <= 2, "max_users is 2, yet {created} creates succeeded and {stored} users exist");
}

#[tokio::test]
async fn a_user_with_a_long_id_can_be_created_without_a_display_name() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    // Ids may be 128 characters, display names 100; the name defaults to the id.
    let id = "a".repeat(128);
    let put = put_user(&app, &tenant, &id, json!({})).await;
    assert_eq!(put.status, StatusCode::CREATED, "a valid id and an empty body: {}", put.text);
    assert_eq!(put.body["id"], id.as_str());
}

#[tokio::test]
async fn timestamps_in_create_responses_match_what_later_reads_return() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let created = put_user(&app, &tenant, "alice", json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let read = get_user(&app, &tenant.key, "alice").await;
    assert_eq!(
        read.body["created_at"], created.body["created_at"],
        "the stored created_at differs from the one served"
    );
    assert_eq!(read.body["updated_at"], created.body["updated_at"]);

    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let related = relate(&app, &alice, "bob", "friend").await;
    let listed = app.call(Method::GET, "/v1/me/relationships", &alice, None).await;
    assert_eq!(listed.body["items"][0]["created_at"], related.body["created_at"]);
}

#[tokio::test]
async fn users_are_readable_one_at_a_time_and_in_batches() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    app.user(&tenant, "carol").await;

    let by_key = get_user(&app, &tenant.key, "bob").await;
    assert_eq!(by_key.status, StatusCode::OK, "{}", by_key.text);
    assert_eq!(by_key.body["id"], "bob");
    let by_user = get_user(&app, &alice, "bob").await;
    assert_eq!(by_user.status, StatusCode::OK, "{}", by_user.text);
    assert_eq!(by_user.body, by_key.body);
    assert_error(&get_user(&app, &tenant.key, "zzz").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&get_user(&app, &alice, "zzz").await, StatusCode::NOT_FOUND, "not_found");

    for token in [&tenant.key, &alice] {
        let batch = app.call(Method::GET, "/v1/users?ids=carol,zzz,alice", token, None).await;
        assert_eq!(batch.status, StatusCode::OK, "{}", batch.text);
        let items = batch.body["items"].as_array().unwrap();
        assert_eq!(user_ids(items), ["alice", "carol"], "unknown ids are left out");
        assert!(batch.body["next_cursor"].is_null());
    }
    let bad = app.call(Method::GET, "/v1/users?ids=alice,a%20b", &tenant.key, None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");
    let max = app.settings.chat.max_batch_ids;
    let many = (0..=max).map(|i| format!("u{i}")).collect::<Vec<_>>().join(",");
    let too_many = app.call(Method::GET, &format!("/v1/users?ids={many}"), &tenant.key, None).await;
    assert_error(&too_many, StatusCode::BAD_REQUEST, "invalid_request");

    let (no_users_scope, _) = app.issue_key(&tenant.id, Some(&["keys:read", "chat:read"])).await;
    let denied = get_user(&app, &no_users_scope, "bob").await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "users:read");
    let denied = app.call(Method::GET, "/v1/users?ids=bob", &no_users_scope, None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    let (reader, _) = app.issue_key(&tenant.id, Some(&["users:read"])).await;
    assert_eq!(get_user(&app, &reader, "bob").await.status, StatusCode::OK);
    let denied = put_user(&app, &ChatTenant { id: tenant.id.clone(), key: reader }, "bob", json!({})).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "users:write");

    let by_token = app.call(Method::PUT, "/v1/users/bob", &alice, Some(json!({"display_name": "Hacked"}))).await;
    assert_error(&by_token, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(get_user(&app, &tenant.key, "bob").await.body["display_name"], "bob");
}

#[tokio::test]
async fn users_are_listed_by_display_name_prefix_case_insensitively_in_pages() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let people = [
        ("u1", "Alfred"),
        ("u2", "ALICE"),
        ("u3", "alan"),
        ("u4", "Albert"),
        ("u5", "Bob"),
        ("u6", "Carla"),
        ("u7", "Alan"),
        ("u8", "Al"),
        ("u9", "Zed Al"),
    ];
    for (id, name) in people {
        let put = put_user(&app, &tenant, id, json!({"display_name": name})).await;
        assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);
    }
    // Display name order, case-insensitive, ties broken by id ("alan" u3 and "Alan" u7 straddle a page).
    let expected = ["u8", "u3", "u7", "u4", "u1", "u2"];
    for prefix in ["al", "AL", "aL"] {
        let path = format!("/v1/users?name_prefix={prefix}&limit=2");
        let first = app.call(Method::GET, &path, &tenant.key, None).await;
        assert_eq!(user_ids(first.body["items"].as_array().unwrap()), ["u8", "u3"]);
        assert!(first.body["next_cursor"].is_string(), "{}", first.text);
        let items = app.collect_pages(&path, &tenant.key, "after", 2).await;
        assert_eq!(user_ids(&items), expected, "prefix {prefix}");
    }
    let alice = app.user(&tenant, "u0").await;
    let items = app.collect_pages("/v1/users?name_prefix=ali&limit=1", &alice, "after", 1).await;
    assert_eq!(user_ids(&items), ["u2"]);
    let items = app.collect_pages("/v1/users?name_prefix=nobody&limit=5", &alice, "after", 5).await;
    assert!(items.is_empty());

    let everyone = app.collect_pages("/v1/users?limit=4", &tenant.key, "after", 4).await;
    assert_eq!(user_ids(&everyone), ["u8", "u3", "u7", "u4", "u1", "u2", "u5", "u6", "u0", "u9"]);

    let max = app.settings.http.max_page_size;
    for limit in [0, max + 1] {
        let reply = app.call(Method::GET, &format!("/v1/users?limit={limit}"), &tenant.key, None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let full = json!({
        "display_name": "Erin",
        "avatar_url": "https://cdn.example.com/erin.png",
        "kind": "bot",
        "custom": {"a": 1},
        "settings": {"notifications": "none", "show_online": false, "read_receipts": true},
    });
    let created = put_user(&app, &tenant, "erin", full).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let before = get_user(&app, &tenant.key, "erin").await.body;

    let renamed = patch_user(&app, &tenant, "erin", json!({"display_name": "Erin Brockovich"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.body["display_name"], "Erin Brockovich");
    for field in ["avatar_url", "kind", "custom", "settings", "active", "created_at"] {
        assert_eq!(renamed.body[field], before[field], "{field} is untouched");
    }
    assert!(timestamp(&renamed.body["updated_at"]) >= timestamp(&before["updated_at"]));
    let found = app.call(Method::GET, "/v1/users?name_prefix=erin%20b", &tenant.key, None).await;
    assert_eq!(user_ids(found.body["items"].as_array().unwrap()), ["erin"], "{}", found.text);

    let cleared = patch_user(&app, &tenant, "erin", json!({"avatar_url": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert!(cleared.body["avatar_url"].is_null(), "null clears the avatar");
    assert_eq!(cleared.body["display_name"], "Erin Brockovich");
    assert_eq!(cleared.body["kind"], "bot");

    let body = json!({"kind": "human", "custom": {"b": 2}, "settings": {"notifications": "mentions"}});
    let changed = patch_user(&app, &tenant, "erin", body).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["kind"], "human");
    assert_eq!(changed.body["custom"], json!({"b": 2}), "custom is replaced as a whole");
    assert_eq!(
        changed.body["settings"],
        json!({"notifications": "mentions", "show_online": true, "read_receipts": true})
    );
    assert!(changed.body["avatar_url"].is_null());
    assert_eq!(changed.body["display_name"], "Erin Brockovich");

    let unchanged = patch_user(&app, &tenant, "erin", json!({})).await;
    assert_eq!(unchanged.status, StatusCode::OK, "{}", unchanged.text);
    for field in ["display_name", "avatar_url", "kind", "custom", "settings"] {
        assert_eq!(unchanged.body[field], changed.body[field], "{field}");
    }
    let avatar = patch_user(&app, &tenant, "erin", json!({"avatar_url": "https://cdn.example.com/new.png"})).await;
    assert_eq!(avatar.body["avatar_url"], "https://cdn.example.com/new.png");
    assert_eq!(get_user(&app, &tenant.key, "erin").await.body, avatar.body);

    let missing = patch_user(&app, &tenant, "nobody", json!({"display_name": "X"})).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    assert_error(&get_user(&app, &tenant.key, "nobody").await, StatusCode::NOT_FOUND, "not_found");
    let unknown_field = patch_user(&app, &tenant, "erin", json!({"id": "other"})).await;
    assert_error(&unknown_field, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn deactivated_users_cannot_act_until_reactivated() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let frank = app.user(&tenant, "frank").await;
    let grace = app.user(&tenant, "grace").await;
    assert_eq!(me(&app, &frank).await.status, StatusCode::OK);

    let deactivated = app.call(Method::DELETE, "/v1/users/frank", &tenant.key, None).await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.text);
    assert_eq!(deactivated.body["id"], "frank");
    assert_eq!(deactivated.body["active"], false);
    let deactivated_at = timestamp(&deactivated.body["deactivated_at"]);
    let again = app.call(Method::DELETE, "/v1/users/frank", &tenant.key, None).await;
    assert_eq!(again.status, StatusCode::OK, "deactivating twice is harmless: {}", again.text);
    assert_eq!(timestamp(&again.body["deactivated_at"]).timestamp_millis(), deactivated_at.timestamp_millis());

    assert_error(&me(&app, &frank).await, StatusCode::FORBIDDEN, "user_deactivated");
    let conversations = app.call(Method::GET, "/v1/me/conversations", &frank, None).await;
    assert_error(&conversations, StatusCode::FORBIDDEN, "user_deactivated");
    assert_error(&mint(&app, &tenant.key, "frank", None).await, StatusCode::FORBIDDEN, "user_deactivated");
    let acting = app.call(Method::GET, "/v1/me?user_id=frank", &tenant.key, None).await;
    assert_error(&acting, StatusCode::FORBIDDEN, "user_deactivated");
    let read = get_user(&app, &grace, "frank").await;
    assert_eq!(read.status, StatusCode::OK, "a deactivated user is still visible: {}", read.text);
    assert_eq!(read.body["active"], false);
    let direct = app
        .call(Method::POST, "/v1/conversations", &grace, Some(json!({"type": "direct", "members": ["frank"]})))
        .await;
    assert_error(&direct, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    let reactivated = app.call(Method::POST, "/v1/users/frank/reactivate", &tenant.key, None).await;
    assert_eq!(reactivated.status, StatusCode::OK, "{}", reactivated.text);
    assert_eq!(reactivated.body["active"], true);
    assert!(reactivated.body["deactivated_at"].is_null());
    let fresh = mint(&app, &tenant.key, "frank", None).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.text);
    let profile = me(&app, fresh.body["token"].as_str().unwrap()).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.text);
    assert_eq!(profile.body["id"], "frank");
    assert_eq!(app.call(Method::GET, "/v1/me?user_id=frank", &tenant.key, None).await.status, StatusCode::OK);

    for (method, path) in [(Method::DELETE, "/v1/users/nobody"), (Method::POST, "/v1/users/nobody/reactivate")] {
        assert_error(&app.call(method, path, &tenant.key, None).await, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn tokens_are_minted_for_existing_users_with_bounded_lifetimes() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let bob = app.user(&tenant, "bob").await;
    put_user(&app, &tenant, "alice", json!({"display_name": "Alice"})).await;

    let before = Utc::now().timestamp();
    let minted = mint(&app, &tenant.key, "alice", None).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.text);
    let token = minted.body["token"].as_str().unwrap();
    let expires_at = timestamp(&minted.body["expires_at"]).timestamp();
    let ttl = app.settings.auth.user_token_default_ttl_secs as i64;
    assert!((before + ttl..=Utc::now().timestamp() + ttl).contains(&expires_at), "{}", minted.text);
    let claims = payload(token);
    assert_eq!(claims["iss"], app.settings.auth.jwt_issuer.as_str());
    assert_eq!(claims["aud"], tenant.id.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["exp"], expires_at);
    assert!(claims["iat"].as_i64().unwrap() >= before);
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), signing_keys(&app, &tenant.key).await[0]["kid"].as_str());

    let profile = me(&app, token).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.text);
    assert_eq!(profile.body["id"], "alice");
    assert_eq!(profile.body["display_name"], "Alice");

    let second = mint(&app, &tenant.key, "alice", Some(json!({"ttl_secs": 60}))).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    let second_claims = payload(second.body["token"].as_str().unwrap());
    assert_ne!(second_claims["jti"], claims["jti"], "every token has its own jti");
    let lifetime = second_claims["exp"].as_i64().unwrap() - second_claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 60);

    let max = app.settings.auth.user_token_max_ttl_secs;
    assert_eq!(max, 2_592_000);
    let longest = mint(&app, &tenant.key, "alice", Some(json!({"ttl_secs": max}))).await;
    assert_eq!(longest.status, StatusCode::CREATED, "{}", longest.text);
    for ttl in [json!(0), json!(max + 1)] {
        assert_invalid(&mint(&app, &tenant.key, "alice", Some(json!({"ttl_secs": ttl}))).await, "ttl_secs");
    }
    for ttl in [json!(-1), json!("60"), json!(1.5)] {
        let reply = mint(&app, &tenant.key, "alice", Some(json!({"ttl_secs": ttl}))).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    assert_error(&mint(&app, &tenant.key, "nobody", None).await, StatusCode::NOT_FOUND, "not_found");

    let (reader, _) = app.issue_key(&tenant.id, Some(&["users:read"])).await;
    let denied = mint(&app, &reader, "alice", None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "users:write");
    assert_error(&mint(&app, &bob, "alice", None).await, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn a_tenant_can_mint_its_own_tokens_with_its_signing_key() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let keys = signing_keys(&app, &tenant.key).await;
    assert_eq!(keys.len(), 1, "a new tenant has one signing key");
    let (kid, secret) = (keys[0]["kid"].as_str().unwrap(), keys[0]["secret"].as_str().unwrap());
    assert!(!kid.is_empty() && secret.len() >= 32, "{keys:?}");
    timestamp(&keys[0]["created_at"]);

    let own = sign(Algorithm::HS256, Some(kid), &claims(&tenant.id, "alice"), secret);
    let profile = me(&app, &own).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.text);
    assert_eq!(profile.body["id"], "alice");
    let listed = app.call(Method::GET, "/v1/me/conversations", &own, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);

    let (no_keys_write, _) = app.issue_key(&tenant.id, Some(&["keys:read", "users:read", "users:write"])).await;
    let denied = app.call(Method::GET, "/v1/signing-keys", &no_keys_write, None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "keys:write");
    assert!(!denied.text.contains(secret));
    let by_user = app.call(Method::GET, "/v1/signing-keys", &alice, None).await;
    assert_error(&by_user, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(!by_user.text.contains(secret));
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_all_get_the_same_401() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let other = app.chat_tenant().await;
    app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    app.user(&other, "alice").await;
    let key = &signing_keys(&app, &tenant.key).await[0];
    let (kid, secret) = (key["kid"].as_str().unwrap(), key["secret"].as_str().unwrap());
    let other_key = &signing_keys(&app, &other.key).await[0];
    let (other_kid, other_secret) = (other_key["kid"].as_str().unwrap(), other_key["secret"].as_str().unwrap());
    let a = tenant.id.as_str();
    let good = claims(a, "alice");
    let now = Utc::now().timestamp();

    let control = sign(Algorithm::HS256, Some(kid), &good, secret);
    assert_eq!(me(&app, &control).await.status, StatusCode::OK, "the untampered token works");
    let reference = me(&app, "garbage").await;
    assert_error(&reference, StatusCode::UNAUTHORIZED, "unauthorized");

    let valid_parts: Vec<&str> = control.split('.').collect();
    let tampered = format!("{}.{}.{}", valid_parts[0], b64(&with(good.clone(), "sub", json!("bob"))), valid_parts[2]);
    let none_header = json!({"alg": "none", "kid": kid, "typ": "JWT"});
    let attacks: Vec<(&str, String)> = vec![
        ("tenant A audience signed with tenant B's key", sign(Algorithm::HS256, Some(other_kid), &good, other_secret)),
        ("tenant A kid but tenant B's secret", sign(Algorithm::HS256, Some(kid), &good, other_secret)),
        (
            "expired",
            sign(
                Algorithm::HS256,
                Some(kid),
                &with(with(good.clone(), "exp", json!(now - 120)), "iat", json!(now - 600)),
                secret,
            ),
        ),
        (
            "issued in the future",
            sign(Algorithm::HS256, Some(kid), &with(good.clone(), "iat", json!(now + 3600)), secret),
        ),
        ("wrong issuer", sign(Algorithm::HS256, Some(kid), &with(good.clone(), "iss", json!("someone-else")), secret)),
        ("no issuer", sign(Algorithm::HS256, Some(kid), &without(good.clone(), "iss"), secret)),
        (
            "audience of another tenant",
            sign(Algorithm::HS256, Some(kid), &with(good.clone(), "aud", json!(other.id)), secret),
        ),
        (
            "audience of no tenant",
            sign(Algorithm::HS256, Some(kid), &with(good.clone(), "aud", json!("t-nosuchone")), secret),
        ),
        ("audience as a list", sign(Algorithm::HS256, Some(kid), &with(good.clone(), "aud", json!([a])), secret)),
        ("alg none, no signature", format!("{}.{}.", b64(&none_header), b64(&good))),
        ("alg none, old signature", format!("{}.{}.{}", b64(&none_header), b64(&good), valid_parts[2])),
        ("HS512 with the right secret", sign(Algorithm::HS512, Some(kid), &good, secret)),
        ("HS384 with the right secret", sign(Algorithm::HS384, Some(kid), &good, secret)),
        ("no jti", sign(Algorithm::HS256, Some(kid), &without(good.clone(), "jti"), secret)),
        ("no iat", sign(Algorithm::HS256, Some(kid), &without(good.clone(), "iat"), secret)),
        ("no exp", sign(Algorithm::HS256, Some(kid), &without(good.clone(), "exp"), secret)),
        ("no sub", sign(Algorithm::HS256, Some(kid), &without(good.clone(), "sub"), secret)),
        ("unknown user", sign(Algorithm::HS256, Some(kid), &with(good.clone(), "sub", json!("nobody")), secret)),
        ("malformed user id", sign(Algorithm::HS256, Some(kid), &with(good.clone(), "sub", json!("$where")), secret)),
        ("unknown kid", sign(Algorithm::HS256, Some("not-a-kid"), &good, secret)),
        ("no kid", sign(Algorithm::HS256, None, &good, secret)),
        ("payload changed after signing", tampered),
        ("signature cut off", format!("{}.{}.", valid_parts[0], valid_parts[1])),
        ("three garbage parts", "a.b.c".to_string()),
        ("a server key's shape", "cfk_live_x".to_string()),
    ];
    for (name, token) in &attacks {
        let reply = me(&app, token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}: {}", reply.text);
        assert_eq!(reply.body["error"]["code"], reference.body["error"]["code"], "{name}");
        assert_eq!(reply.body["error"]["message"], reference.body["error"]["message"], "{name}");
        assert_eq!(reply.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{name}");
    }
    let no_header = app.send(app.request(Method::GET, "/v1/me")).await;
    assert_error(&no_header, StatusCode::UNAUTHORIZED, "unauthorized");
    let empty = app.send(app.request(Method::GET, "/v1/me").header("authorization", "Bearer ")).await;
    assert_error(&empty, StatusCode::UNAUTHORIZED, "unauthorized");

    // A tenant-B token for the same user id is simply a tenant-B token: it reaches B's user only.
    let b_token = sign(Algorithm::HS256, Some(other_kid), &claims(&other.id, "alice"), other_secret);
    let b_alice = me(&app, &b_token).await;
    assert_eq!(b_alice.status, StatusCode::OK, "{}", b_alice.text);
    let b_conversation = app.conversation(&b_token, "group", &[]).await;
    let from_a = app.call(Method::GET, &format!("/v1/conversations/{b_conversation}"), &control, None).await;
    assert_error(&from_a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn rotating_the_signing_key_keeps_older_tokens_valid() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let before = app.user(&tenant, "alice").await;
    let old = signing_keys(&app, &tenant.key).await.remove(0);
    let old_kid = old["kid"].as_str().unwrap();
    let self_minted_before =
        sign(Algorithm::HS256, Some(old_kid), &claims(&tenant.id, "alice"), old["secret"].as_str().unwrap());

    let path = format!("/admin/v1/tenants/{}/signing-keys/rotate", tenant.id);
    let rotated = app.admin(Method::POST, &path, None).await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    let new_kid = rotated.body["kid"].as_str().unwrap();
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(new_kid, old_kid);
    assert_ne!(new_secret, old["secret"].as_str().unwrap());

    let keys = signing_keys(&app, &tenant.key).await;
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [old_kid, new_kid], "oldest first");
    assert_eq!(keys[1]["secret"], new_secret);

    for token in [&before, &self_minted_before] {
        let profile = me(&app, token).await;
        assert_eq!(profile.status, StatusCode::OK, "a token signed before the rotation still works: {}", profile.text);
    }
    let minted = mint(&app, &tenant.key, "alice", None).await;
    let after = minted.body["token"].as_str().unwrap();
    assert_eq!(jsonwebtoken::decode_header(after).unwrap().kid.as_deref(), Some(new_kid), "new tokens use the new key");
    assert_eq!(me(&app, after).await.status, StatusCode::OK);
    let self_minted_after = sign(Algorithm::HS256, Some(new_kid), &claims(&tenant.id, "alice"), new_secret);
    assert_eq!(me(&app, &self_minted_after).await.status, StatusCode::OK);
    let mismatched =
        sign(Algorithm::HS256, Some(new_kid), &claims(&tenant.id, "alice"), old["secret"].as_str().unwrap());
    assert_error(&me(&app, &mismatched).await, StatusCode::UNAUTHORIZED, "unauthorized");

    let by_tenant = app.call(Method::POST, &path, &tenant.key, None).await;
    assert_error(&by_tenant, StatusCode::UNAUTHORIZED, "unauthorized");
    let unknown = app.admin(Method::POST, "/admin/v1/tenants/t-nosuchone/signing-keys/rotate", None).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(signing_keys(&app, &tenant.key).await.len(), 2);
}

#[tokio::test]
async fn relationships_can_be_set_listed_filtered_and_removed() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    for other in ["carol", "dave", "erin"] {
        app.user(&tenant, other).await;
    }
    let wanted = [("bob", "friend"), ("carol", "friend"), ("dave", "friend"), ("bob", "mute"), ("erin", "block")];
    for (other, kind) in wanted {
        let put = relate(&app, &alice, other, kind).await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.text);
        assert_eq!(put.body["user_id"], other);
        assert_eq!(put.body["type"], kind);
        timestamp(&put.body["created_at"]);
    }
    let first = relate(&app, &alice, "erin", "block").await;
    let repeat = relate(&app, &alice, "erin", "block").await;
    assert_eq!(repeat.status, StatusCode::OK, "{}", repeat.text);
    assert_eq!(repeat.body["created_at"], first.body["created_at"], "relating twice keeps the first");

    let pairs = |items: &[Value]| {
        let mut pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (i["user_id"].as_str().unwrap().to_string(), i["type"].as_str().unwrap().to_string()))
            .collect();
        pairs.sort();
        pairs
    };
    let mut expected: Vec<(String, String)> = wanted.iter().map(|(o, k)| (o.to_string(), k.to_string())).collect();
    expected.sort();
    let all = app.collect_pages("/v1/me/relationships?limit=2", &alice, "after", 2).await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(pairs(&all), expected);
    let friends = app.collect_pages("/v1/me/relationships?type=friend&limit=2", &alice, "after", 2).await;
    let names: Vec<&str> = friends.iter().map(|i| i["user_id"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3);
    assert!(["bob", "carol", "dave"].iter().all(|n| names.contains(n)), "{names:?}");
    assert!(friends.iter().all(|i| i["type"] == "friend"));
    let blocks = app.collect_pages("/v1/me/relationships?type=block&limit=2", &alice, "after", 2).await;
    assert_eq!(pairs(&blocks), [("erin".to_string(), "block".to_string())]);
    let bad_type = app.call(Method::GET, "/v1/me/relationships?type=enemy", &alice, None).await;
    assert_error(&bad_type, StatusCode::BAD_REQUEST, "invalid_request");
    let bobs = app.call(Method::GET, "/v1/me/relationships", &bob, None).await;
    assert_eq!(bobs.body["items"], json!([]), "relationships are one-sided: {}", bobs.text);

    assert_invalid(&relate(&app, &alice, "alice", "friend").await, "user_id");
    assert_error(&relate(&app, &alice, "nobody", "block").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&relate(&app, &alice, "carol", "enemy").await, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_error(&relate(&app, &alice, "a b", "block").await, StatusCode::BAD_REQUEST, "invalid_request");

    let removed = app.call(Method::DELETE, "/v1/me/relationships/bob?type=mute", &alice, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let left = app.collect_pages("/v1/me/relationships?limit=10", &alice, "after", 10).await;
    let bob_kinds: Vec<&str> =
        left.iter().filter(|i| i["user_id"] == "bob").map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(bob_kinds, ["friend"], "only the mute was removed");
    app.call(Method::PUT, "/v1/me/relationships/bob", &alice, Some(json!({"type": "block"}))).await;
    let removed = app.call(Method::DELETE, "/v1/me/relationships/bob", &alice, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let left = app.collect_pages("/v1/me/relationships?limit=10", &alice, "after", 10).await;
    assert!(left.iter().all(|i| i["user_id"] != "bob"), "every relationship with bob is gone: {left:?}");
    assert_eq!(left.len(), 3);
    let nothing = app.call(Method::DELETE, "/v1/me/relationships/bob", &alice, None).await;
    assert_eq!(nothing.status, StatusCode::NO_CONTENT, "removing nothing is fine: {}", nothing.text);
}

#[tokio::test]
async fn a_block_stops_direct_messages_from_the_blocked_user_only() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let existing = app.conversation(&alice, "direct", &["bob"]).await;
    let group = app.conversation(&alice, "group", &["bob"]).await;
    assert_eq!(app.say(&alice, &existing, "hi bob").await.status, StatusCode::CREATED);

    let blocked = app.call(Method::PUT, "/v1/me/relationships/alice", &bob, Some(json!({"type": "block"}))).await;
    assert_eq!(blocked.status, StatusCode::OK, "{}", blocked.text);

    assert_error(&app.say(&alice, &existing, "are you there?").await, StatusCode::FORBIDDEN, "blocked");
    let bob_says = app.say(&bob, &existing, "I can still talk").await;
    assert_eq!(bob_says.status, StatusCode::CREATED, "the blocker can still post: {}", bob_says.text);
    let body = json!({"type": "direct", "members": ["bob"]});
    let direct = app.call(Method::POST, "/v1/conversations", &alice, Some(body)).await;
    assert_error(&direct, StatusCode::FORBIDDEN, "blocked");
    let group_post = app.say(&alice, &group, "group chat still works").await;
    assert_eq!(group_post.status, StatusCode::CREATED, "blocks apply to direct conversations: {}", group_post.text);
    let fresh = app.conversation(&carol, "direct", &["bob"]).await;
    assert_eq!(app.say(&carol, &fresh, "hello").await.status, StatusCode::CREATED, "others are not affected");
    let history = app.call(Method::GET, &format!("/v1/conversations/{existing}/messages"), &bob, None).await;
    let texts: Vec<&str> =
        history.body["items"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert!(!texts.contains(&"are you there?"), "{texts:?}");

    let muted = app.call(Method::PUT, "/v1/me/relationships/alice", &bob, Some(json!({"type": "mute"}))).await;
    assert_eq!(muted.status, StatusCode::OK);
    let unblocked = app.call(Method::DELETE, "/v1/me/relationships/alice?type=block", &bob, None).await;
    assert_eq!(unblocked.status, StatusCode::NO_CONTENT, "{}", unblocked.text);
    let again = app.say(&alice, &existing, "back again").await;
    assert_eq!(again.status, StatusCode::CREATED, "after the unblock alice can post: {}", again.text);
    let reopened = app.conversation(&alice, "direct", &["bob"]).await;
    assert_eq!(reopened, existing, "the same direct conversation is returned");
}

#[tokio::test]
async fn server_keys_act_only_for_a_named_existing_user_within_their_scopes() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    app.user(&tenant, "alice").await;

    let unnamed = me(&app, &tenant.key).await;
    assert_invalid(&unnamed, "user_id");
    let unknown = app.call(Method::GET, "/v1/me?user_id=nobody", &tenant.key, None).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    let malformed = app.call(Method::GET, "/v1/me?user_id=%24where", &tenant.key, None).await;
    assert_invalid(&malformed, "user_id");
    let named = app.call(Method::GET, "/v1/me?user_id=alice", &tenant.key, None).await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.text);
    assert_eq!(named.body["id"], "alice");

    let (users_only, _) = app.issue_key(&tenant.id, Some(&["users:read", "users:write"])).await;
    let denied = app.call(Method::GET, "/v1/me/conversations?user_id=alice", &users_only, None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "chat:read");
    let (chat_reader, _) = app.issue_key(&tenant.id, Some(&["chat:read"])).await;
    let allowed = app.call(Method::GET, "/v1/me/conversations?user_id=alice", &chat_reader, None).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text);
    let relationships = app.call(Method::GET, "/v1/me/relationships?user_id=alice", &chat_reader, None).await;
    assert_eq!(relationships.status, StatusCode::OK, "{}", relationships.text);
    let body = json!({"type": "friend"});
    let write = app.call(Method::PUT, "/v1/me/relationships/bob?user_id=alice", &chat_reader, Some(body)).await;
    assert_error(&write, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(write.body["error"]["details"]["required_scope"], "chat:write");

    app.user(&tenant, "bob").await;
    let body = json!({"type": "friend"});
    let acted = app.call(Method::PUT, "/v1/me/relationships/bob?user_id=alice", &tenant.key, Some(body)).await;
    assert_eq!(acted.status, StatusCode::OK, "{}", acted.text);
    let listed = app.call(Method::GET, "/v1/me/relationships?user_id=alice", &tenant.key, None).await;
    assert_eq!(listed.body["items"][0]["user_id"], "bob", "{}", listed.text);
}

#[tokio::test]
async fn a_key_without_user_or_chat_scopes_cannot_read_profiles_through_me() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    app.user(&tenant, "alice").await;
    let (keys_only, _) = app.issue_key(&tenant.id, Some(&["keys:read", "audit:read"])).await;
    assert_error(&get_user(&app, &keys_only, "alice").await, StatusCode::FORBIDDEN, "insufficient_scope");
    let profile = app.call(Method::GET, "/v1/me?user_id=alice", &keys_only, None).await;
    assert_error(&profile, StatusCode::FORBIDDEN, "insufficient_scope");
    assert!(profile.body.get("display_name").is_none(), "no profile is served: {}", profile.text);
}

#[tokio::test]
async fn another_tenants_key_cannot_see_or_change_a_tenants_users() {
    let app = spawn_app().await;
    let a = app.chat_tenant().await;
    let b = app.chat_tenant().await;
    let body = json!({"display_name": "Alice of A", "custom": {"tenant": "a"}});
    assert_eq!(put_user(&app, &a, "alice", body).await.status, StatusCode::CREATED);
    let a_token = mint(&app, &a.key, "alice", None).await.body["token"].as_str().unwrap().to_string();
    let original = get_user(&app, &a.key, "alice").await.body;
    let b_bob = app.user(&b, "bob").await;

    assert_error(&get_user(&app, &b.key, "alice").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&get_user(&app, &b_bob, "alice").await, StatusCode::NOT_FOUND, "not_found");
    let batch = app.call(Method::GET, "/v1/users?ids=alice", &b.key, None).await;
    assert_eq!(batch.body["items"], json!([]), "{}", batch.text);
    let listed = app.call(Method::GET, "/v1/users?name_prefix=alice", &b.key, None).await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.text);
    let patch = patch_user(&app, &b, "alice", json!({"display_name": "Pwned"})).await;
    assert_error(&patch, StatusCode::NOT_FOUND, "not_found");
    let delete = app.call(Method::DELETE, "/v1/users/alice", &b.key, None).await;
    assert_error(&delete, StatusCode::NOT_FOUND, "not_found");
    let reactivate = app.call(Method::POST, "/v1/users/alice/reactivate", &b.key, None).await;
    assert_error(&reactivate, StatusCode::NOT_FOUND, "not_found");
    assert_error(&mint(&app, &b.key, "alice", None).await, StatusCode::NOT_FOUND, "not_found");
    let acting = app.call(Method::GET, "/v1/me?user_id=alice", &b.key, None).await;
    assert_error(&acting, StatusCode::NOT_FOUND, "not_found");
    let relate = app.call(Method::PUT, "/v1/me/relationships/alice", &b_bob, Some(json!({"type": "block"}))).await;
    assert_error(&relate, StatusCode::NOT_FOUND, "not_found");

    // PUT with B's key creates B's own "alice", which A never sees.
    let b_alice = put_user(&app, &b, "alice", json!({"display_name": "Alice of B"})).await;
    assert_eq!(b_alice.status, StatusCode::CREATED, "{}", b_alice.text);
    assert_eq!(get_user(&app, &a.key, "alice").await.body, original, "tenant A's user is unchanged");
    let a_me = me(&app, &a_token).await;
    assert_eq!(a_me.status, StatusCode::OK, "{}", a_me.text);
    assert_eq!(a_me.body["display_name"], "Alice of A");
    assert_eq!(a_me.body["active"], true);
    let b_token = mint(&app, &b.key, "alice", None).await.body["token"].as_str().unwrap().to_string();
    assert_eq!(me(&app, &b_token).await.body["display_name"], "Alice of B");
}
