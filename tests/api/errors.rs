use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn malformed_json_is_400_invalid_json_with_request_id() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.request(Method::POST, "/admin/v1/tenants")
                .bearer_auth(&app.operator_token)
                .header("content-type", "application/json")
                .body("{\"id\": \"acme\", "),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "invalid_json");
    let request_id = reply.body["error"]["request_id"].as_str().unwrap();
    assert!(!request_id.is_empty());
    assert_eq!(reply.headers["x-request-id"].to_str().unwrap(), request_id);
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_422_with_the_field() {
    let app = spawn_app().await;
    let wrong_type = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": 5}))).await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", wrong_type.text);
    assert_eq!(wrong_type.code(), "validation_failed");
    assert_eq!(wrong_type.body["error"]["details"]["fields"][0]["field"], "name");

    let missing = app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme"}))).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing.body["error"]["message"].as_str().unwrap().contains("name"));

    let unknown =
        app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": "A", "colour": 1}))).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn validator_failures_are_422_with_field_details() {
    let app = spawn_app().await;
    let reply =
        app.admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": "x".repeat(101)}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text);
    assert_eq!(reply.code(), "validation_failed");
    let field = &reply.body["error"]["details"]["fields"][0];
    assert_eq!(field["field"], "name");
    assert!(field["message"].is_string());
}

#[tokio::test]
async fn bad_query_and_path_parameters_are_400() {
    let app = spawn_app().await;
    for query in ["limit=abc", "limit=0", "limit=100000"] {
        let reply = app.admin(Method::GET, &format!("/admin/v1/tenants?{query}"), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_request");
    }
    let reply = app.admin(Method::GET, "/admin/v1/tenants/NOT_A_SLUG", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["details"]["param"], "tenant_id");
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_shape() {
    let app = spawn_app().await;
    let reply = app.send(app.request(Method::GET, "/v1/no-such-thing")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "route_not_found");
    assert!(!reply.body["error"]["request_id"].as_str().unwrap().is_empty());
    // A known path asked with a method it does not serve, and unknown paths under an id.
    for (method, path) in [
        (Method::PUT, "/v1/conversations/c1/messages"),
        (Method::POST, "/v1/users/u1/presence"),
        (Method::GET, "/v1/conversations/c1/no-such-thing"),
        (Method::GET, "/v1/sessions/s1/items/i1/nope"),
        (Method::DELETE, "/admin/v1/tenants/acme/api-keys"),
    ] {
        let reply = app.send(app.request(method.clone(), path)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}: {}", reply.text);
        assert_eq!(reply.code(), "route_not_found", "{method} {path}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_and_non_json_is_415() {
    let app = spawn_app().await;
    let limit = app.settings.http.max_json_body_bytes;
    let huge = json!({"id": "acme", "name": "x".repeat(limit)});
    let reply = app.admin(Method::POST, "/admin/v1/tenants", Some(huge)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.code(), "payload_too_large");

    let reply = app
        .send(
            app.request(Method::POST, "/admin/v1/tenants")
                .bearer_auth(&app.operator_token)
                .header("content-type", "text/plain")
                .body("id=acme"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.code(), "unsupported_media_type");
    let listed = app.admin(Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0, "nothing was created");
}
