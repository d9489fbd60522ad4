//! Files: uploads, downloads, ranges, sharing, signed URLs, quotas, file messages.

use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::helpers::spawn_app;

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

#[tokio::test]
async fn a_small_file_round_trips_byte_for_byte() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let upload = app
        .send(
            app.request(Method::POST, "/v1/files?filename=dot.png")
                .bearer_auth(&alice)
                .header("content-type", "application/octet-stream")
                .body(PNG_1X1.to_vec()),
        )
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.text);
    assert_eq!(upload.body["mime"], "image/png", "sniffed type replaces the declared one");
    assert_eq!(upload.body["size"], PNG_1X1.len());
    assert_eq!(upload.body["sha256"], hex::encode(Sha256::digest(PNG_1X1)));
    assert_eq!((upload.body["width"].as_u64(), upload.body["height"].as_u64()), (Some(3), Some(2)));
    let id = upload.body["id"].as_str().unwrap();
    let download = app.client.get(format!("{}/v1/files/{id}", app.address)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["x-content-type-options"], "nosniff");
    assert!(download.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    assert_eq!(download.headers()["content-length"], PNG_1X1.len().to_string().as_str());
    assert_eq!(download.bytes().await.unwrap().as_ref(), PNG_1X1);
}
