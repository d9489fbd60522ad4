use std::time::Duration;

use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{Reply, spawn_app};

fn assert_unauthorized(reply: &Reply, reference: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], reference.body["error"]["code"]);
    assert_eq!(reply.body["error"]["message"], reference.body["error"]["message"]);
    assert_eq!(reply.body["error"].get("details"), reference.body["error"].get("details"));
}

#[tokio::test]
async fn issued_keys_have_the_documented_format_and_are_stored_hashed() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, meta) = app.issue_key(&tenant, None).await;
    let id = meta["id"].as_str().unwrap();
    assert!(key.starts_with(&format!("cfk_live_{id}_")), "{key}");
    assert_eq!(key.len(), "cfk_live_".len() + 16 + 1 + 32 + 6);
    assert_eq!(meta["prefix"], format!("cfk_live_{id}"));
    assert_eq!(meta["scopes"].as_array().unwrap().len(), 9);

    let stored = app
        .mongo()
        .await
        .database(&app.platform_db_name())
        .collection::<Document>("api_keys")
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("secret_hash").unwrap(), hex::encode(Sha256::digest(key.as_bytes())));
    let secret = &key[key.len() - 38..];
    assert!(!format!("{stored:?}").contains(secret), "no plaintext secret is stored");

    let listed = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert!(!listed.text.contains(secret));
    assert!(!listed.text.contains("hash"));
    let item = &listed.body["items"][0];
    for field in ["id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at", "revoked"] {
        assert!(item.get(field).is_some(), "missing {field}");
    }
}

#[tokio::test]
async fn use_is_recorded_in_last_used_at() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, meta) = app.issue_key(&tenant, None).await;
    assert!(meta["last_used_at"].is_null());
    app.call(Method::GET, "/v1/api-keys", &key, None).await;
    let mut seen = None;
    for _ in 0..50 {
        let listed = app.call(Method::GET, "/v1/api-keys", &key, None).await;
        if let Some(at) = listed.body["items"][0]["last_used_at"].as_str() {
            seen = Some(at.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.is_some(), "last_used_at was never written");
}

#[tokio::test]
async fn unknown_malformed_revoked_and_expired_keys_get_the_same_401() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (good, meta) = app.issue_key(&tenant, None).await;
    let reference = app.call(Method::GET, "/v1/api-keys", "garbage", None).await;
    assert_eq!(reference.code(), "unauthorized");

    let missing_header = app.send(app.request(Method::GET, "/v1/api-keys")).await;
    assert_unauthorized(&missing_header, &reference);
    let mut broken_checksum = good.clone();
    broken_checksum.pop();
    broken_checksum.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_unauthorized(&app.call(Method::GET, "/v1/api-keys", &broken_checksum, None).await, &reference);
    assert_unauthorized(&app.call(Method::GET, "/v1/api-keys", &app.operator_token, None).await, &reference);

    let body = json!({"name": "short-lived", "expires_at": (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339()});
    let short = app.call(Method::POST, "/v1/api-keys", &good, Some(body)).await;
    assert_eq!(short.status, StatusCode::CREATED, "{}", short.text);
    let short_key = short.body["key"].as_str().unwrap().to_string();
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &short_key, None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_unauthorized(&app.call(Method::GET, "/v1/api-keys", &short_key, None).await, &reference);

    let id = meta["id"].as_str().unwrap();
    let revoked = app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &good, None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_unauthorized(&app.call(Method::GET, "/v1/api-keys", &good, None).await, &reference);
}

#[tokio::test]
async fn expiry_must_be_in_the_future() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, _) = app.issue_key(&tenant, None).await;
    let body = json!({"name": "past", "expires_at": "2020-01-01T00:00:00Z"});
    let reply = app.call(Method::POST, "/v1/api-keys", &key, Some(body)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["error"]["details"]["fields"][0]["field"], "expires_at");
}

#[tokio::test]
async fn scopes_gate_key_management_and_cannot_be_escalated() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (reader, _) = app.issue_key(&tenant, Some(&["keys:read"])).await;
    let denied = app.call(Method::POST, "/v1/api-keys", &reader, Some(json!({"name": "x"}))).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.code(), "insufficient_scope");
    assert_eq!(denied.body["error"]["details"]["required_scope"], "keys:write");
    assert_eq!(app.call(Method::GET, "/v1/audit-log", &reader, None).await.code(), "insufficient_scope");

    let (writer, _) = app.issue_key(&tenant, Some(&["keys:read", "keys:write"])).await;
    let escalate =
        app.call(Method::POST, "/v1/api-keys", &writer, Some(json!({"name": "x", "scopes": ["audit:read"]}))).await;
    assert_eq!(escalate.status, StatusCode::FORBIDDEN);
    assert_eq!(escalate.code(), "insufficient_scope");
    let unknown =
        app.call(Method::POST, "/v1/api-keys", &writer, Some(json!({"name": "x", "scopes": ["keys:admin"]}))).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    let inherited = app.call(Method::POST, "/v1/api-keys", &writer, Some(json!({"name": "child"}))).await;
    assert_eq!(inherited.status, StatusCode::CREATED, "{}", inherited.text);
    assert_eq!(inherited.body["api_key"]["scopes"], json!(["keys:read", "keys:write"]));
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (old, meta) = app.issue_key(&tenant, None).await;
    let id = meta["id"].as_str().unwrap();
    let rotated = app.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &old, None).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new = rotated.body["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rotated.body["api_key"]["id"], id, "rotation keeps the key id");
    assert!(rotated.body["api_key"]["previous_secret_valid_until"].is_string());
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &new, None).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &old, None).await.status, StatusCode::OK, "old secret in grace");

    let no_grace =
        app.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &new, Some(json!({"grace_period_secs": 0}))).await;
    assert_eq!(no_grace.status, StatusCode::OK, "{}", no_grace.text);
    let newest = no_grace.body["key"].as_str().unwrap().to_string();
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &new, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &old, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &newest, None).await.status, StatusCode::OK);

    let too_long = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            &newest,
            Some(json!({"grace_period_secs": 999_999_999})),
        )
        .await;
    assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.call(Method::GET, "/v1/api-keys", &newest, None).await.status,
        StatusCode::OK,
        "a refused rotation changes nothing"
    );
}

#[tokio::test]
async fn revoked_keys_cannot_be_rotated_and_revoking_twice_is_harmless() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (admin, _) = app.issue_key(&tenant, None).await;
    let (_, victim) = app.issue_key(&tenant, None).await;
    let id = victim["id"].as_str().unwrap();
    assert_eq!(
        app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &admin, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &admin, None).await.status,
        StatusCode::NO_CONTENT
    );
    let rotate = app.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &admin, None).await;
    assert_eq!(rotate.status, StatusCode::CONFLICT);
    assert_eq!(rotate.code(), "api_key_revoked");
    let listed = app.call(Method::GET, "/v1/api-keys", &admin, None).await;
    let entry = listed.body["items"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!(entry["revoked"], true);
    assert!(entry["revoked_at"].is_string());
    let bad_id = app.call(Method::DELETE, "/v1/api-keys/NOT-AN-ID", &admin, None).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_tenant_key_limit_is_enforced() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(json!({"limits": {"max_api_keys": 2}})).await;
    let (key, _) = app.issue_key(&tenant, None).await;
    assert_eq!(
        app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": "2"}))).await.status,
        StatusCode::CREATED
    );
    let third = app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": "3"}))).await;
    assert_eq!(third.status, StatusCode::CONFLICT);
    assert_eq!(third.code(), "limit_reached");
    let listed = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn keys_are_listed_in_pages() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, _) = app.issue_key(&tenant, None).await;
    for n in 0..4 {
        app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": format!("k{n}")}))).await;
    }
    let seen: Vec<String> = app
        .collect_pages("/v1/api-keys?limit=2", &key, "after", 2)
        .await
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5));
}

#[tokio::test]
async fn requests_beyond_the_tenant_rate_limit_get_429() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(json!({"limits": {"requests_per_second": 3}})).await;
    let (key, _) = app.issue_key(&tenant, None).await;
    let mut limited = None;
    for _ in 0..12 {
        let reply = app.call(Method::GET, "/v1/api-keys", &key, None).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("the limit was enforced");
    assert_eq!(limited.code(), "rate_limited");
    assert_eq!(limited.headers["retry-after"], "1");

    let client = deadpool_redis::redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        deadpool_redis::redis::cmd("KEYS").arg(format!("{}*", app.redis_prefix)).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert!(key.starts_with(&format!("{}t:{tenant}:", app.redis_prefix)), "{key}");
    }
}

#[tokio::test]
async fn concurrent_key_creations_stay_within_the_limit_and_revoking_frees_a_slot() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(json!({"limits": {"max_api_keys": 3}})).await;
    let (key, _) = app.issue_key(&tenant, None).await;
    let attempts = (0..8).map(|n| app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": format!("c{n}")}))));
    let replies = futures_util::future::join_all(attempts).await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::CREATED).collect();
    assert_eq!(created.len(), 2, "one key existed; the limit is 3");
    assert!(replies.iter().filter(|r| r.status != StatusCode::CREATED).all(|r| r.code() == "limit_reached"));
    let listed = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 3);

    let victim = created[0].body["api_key"]["id"].as_str().unwrap();
    for _ in 0..2 {
        let revoked = app.call(Method::DELETE, &format!("/v1/api-keys/{victim}"), &key, None).await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    }
    let after = app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": "freed"}))).await;
    assert_eq!(after.status, StatusCode::CREATED, "revoking freed exactly one slot: {}", after.text);
    let full = app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": "over"}))).await;
    assert_eq!(full.code(), "limit_reached", "revoking twice freed only one slot");
}

#[tokio::test]
async fn unverified_tokens_do_not_spend_a_tenants_rate_limit() {
    use base64::Engine;
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(json!({"limits": {"requests_per_second": 3}})).await;
    let (key, _) = app.issue_key(&tenant, None).await;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let forged = format!("{}.{}.c2ln", b64(json!({"alg": "HS256", "kid": "nope"})), b64(json!({"aud": tenant})));
    for _ in 0..10 {
        let reply = app.call(Method::GET, "/v1/me", &forged, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
    let real = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(real.status, StatusCode::OK, "forged requests spent nothing: {}", real.text);
}
