use futures_util::TryStreamExt;
use mongodb::bson::Document;
use reqwest::{Method, StatusCode};
use serde_json::json;

use confab::tenancy::TENANT_COLLECTIONS;

use crate::helpers::spawn_app;

#[tokio::test]
async fn creating_a_tenant_provisions_its_database_with_every_index() {
    let app = spawn_app().await;
    let body = json!({"id": "acme", "name": "Acme Inc", "plan": "pro", "limits": {"max_users": 500}});
    let reply = app.admin(Method::POST, "/admin/v1/tenants", Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["id"], "acme");
    assert_eq!(reply.body["status"], "active");
    assert_eq!(reply.body["plan"], "pro");
    assert_eq!(reply.body["limits"]["max_users"], 500);
    assert_eq!(reply.body["limits"]["max_api_keys"], app.settings.tenants.default_limits.max_api_keys);
    assert_eq!(reply.body["database"], app.tenant_db_name("acme"));
    assert_eq!(reply.body["signing_key_ids"].as_array().unwrap().len(), 1);
    assert!(!reply.text.contains("secret"), "the signing secret never leaves the server");

    let client = app.mongo().await;
    let db = client.database(&app.tenant_db_name("acme"));
    let names = db.list_collection_names().await.unwrap();
    for spec in TENANT_COLLECTIONS {
        assert!(names.iter().any(|n| n == spec.name), "missing collection {}", spec.name);
        let indexes: Vec<String> = db.collection::<Document>(spec.name).list_index_names().await.unwrap();
        for index in spec.indexes {
            assert!(indexes.iter().any(|n| n == index.name), "missing index {} on {}", index.name, spec.name);
        }
    }
    let stored = client
        .database(&app.platform_db_name())
        .collection::<Document>("tenants")
        .find_one(mongodb::bson::doc! {"_id": "acme"})
        .await
        .unwrap()
        .expect("tenant record");
    let key = stored.get_array("signing_keys").unwrap()[0].as_document().unwrap();
    assert!(key.get_str("secret").unwrap().len() >= 43, "a 32-byte signing secret is stored");
}

#[tokio::test]
async fn invalid_tenant_ids_are_400_and_duplicates_409() {
    let app = spawn_app().await;
    for bad in ["../x", "A", "a.b", "$cmd", &"a".repeat(40), "ab", ""] {
        let reply = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": bad, "name": "X"}))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_request");
        assert_eq!(reply.body["error"]["details"]["fields"][0]["field"], "id");
    }
    let first = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": "Acme"}))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": "Other"}))).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "tenant_exists");
    let got = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(got.body["name"], "Acme", "the duplicate changed nothing");

    let databases = app.mongo().await.list_database_names().await.unwrap();
    let ours: Vec<_> = databases.iter().filter(|d| d.starts_with(&app.db_prefix)).collect();
    assert_eq!(ours.len(), 2, "only platform and acme databases exist: {ours:?}");
}

#[tokio::test]
async fn tenants_are_listed_in_pages() {
    let app = spawn_app().await;
    for id in ["tenant-c", "tenant-a", "tenant-b"] {
        let reply = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": id, "name": id}))).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let first = app.admin(Method::GET, "/admin/v1/tenants?limit=2", None).await;
    let ids: Vec<_> = first.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tenant-a", "tenant-b"]);
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = app.admin(Method::GET, &format!("/admin/v1/tenants?limit=2&after={cursor}"), None).await;
    let ids: Vec<_> = second.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tenant-c"]);
    assert!(second.body["next_cursor"].is_null());
}

#[tokio::test]
async fn patch_changes_name_plan_and_merges_limits() {
    let app = spawn_app().await;
    let id = app.create_tenant().await;
    let path = format!("/admin/v1/tenants/{id}");
    let before = app.admin(Method::GET, &path, None).await;
    let patch = json!({"name": "Renamed", "plan": "enterprise", "limits": {"requests_per_second": 5}});
    let after = app.admin(Method::PATCH, &path, Some(patch)).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    assert_eq!(after.body["name"], "Renamed");
    assert_eq!(after.body["plan"], "enterprise");
    assert_eq!(after.body["limits"]["requests_per_second"], 5);
    assert_eq!(after.body["limits"]["max_users"], before.body["limits"]["max_users"]);

    let bad = app.admin(Method::PATCH, &path, Some(json!({"limits": {"max_api_keys": 0}}))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["error"]["details"]["fields"][0]["field"], "limits.max_api_keys");
    let bad_status = app.admin(Method::PATCH, &path, Some(json!({"status": "deleting"}))).await;
    assert_eq!(bad_status.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unchanged = app.admin(Method::GET, &path, None).await;
    assert_eq!(unchanged.body["limits"], after.body["limits"]);
    assert_eq!(unchanged.body["status"], "active");

    let missing = app.admin(Method::PATCH, "/admin/v1/tenants/nobody", Some(json!({"name": "x"}))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_suspended_tenants_keys_get_403_until_reactivated() {
    let app = spawn_app().await;
    let id = app.create_tenant().await;
    let (key, _) = app.issue_key(&id, None).await;
    let path = format!("/admin/v1/tenants/{id}");
    let suspended = app.admin(Method::PATCH, &path, Some(json!({"status": "suspended"}))).await;
    assert_eq!(suspended.body["status"], "suspended");
    let refused = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "tenant_suspended");

    app.admin(Method::PATCH, &path, Some(json!({"status": "active"}))).await;
    let ok = app.call(Method::GET, "/v1/api-keys", &key, None).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn deleting_a_tenant_drops_its_database_and_keys() {
    let app = spawn_app().await;
    let id = app.create_tenant().await;
    let (key, _) = app.issue_key(&id, None).await;
    let path = format!("/admin/v1/tenants/{id}");
    let deleted = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    assert_eq!(app.admin(Method::GET, &path, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.admin(Method::DELETE, &path, None).await.status, StatusCode::NOT_FOUND);
    let listed = app.admin(Method::GET, "/admin/v1/tenants", None).await;
    assert!(listed.body["items"].as_array().unwrap().iter().all(|t| t["id"] != id.as_str()));
    let again = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": &id, "name": "Reborn"}))).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "ids of deleted tenants are never reused");
    assert_eq!(again.code(), "tenant_exists");
    assert_eq!(app.call(Method::GET, "/v1/api-keys", &key, None).await.status, StatusCode::UNAUTHORIZED);
    let client = app.mongo().await;
    let databases = client.list_database_names().await.unwrap();
    assert!(!databases.contains(&app.tenant_db_name(&id)), "{databases:?}");
    let audit = client.database(&app.platform_db_name()).collection::<Document>("audit_log");
    let actions: Vec<String> = audit
        .find(mongodb::bson::doc! {"tenant_id": &id})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|e| e.get_str("action").unwrap().to_string())
        .collect();
    assert_eq!(actions.last().map(String::as_str), Some("tenant.delete"), "{actions:?}");
}

#[tokio::test]
async fn operator_routes_need_the_operator_token() {
    let app = spawn_app().await;
    let id = app.create_tenant().await;
    let (tenant_key, _) = app.issue_key(&id, None).await;
    let none = app.send(app.request(Method::GET, "/admin/v1/tenants")).await;
    let wrong = app.call(Method::GET, "/admin/v1/tenants", "not-the-token", None).await;
    let key = app.call(Method::GET, "/admin/v1/tenants", &tenant_key, None).await;
    for reply in [&none, &wrong, &key] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code(), "unauthorized");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(none.body["error"]["message"], wrong.body["error"]["message"]);
}
