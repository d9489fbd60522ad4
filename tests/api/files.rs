//! Files: uploads, downloads, ranges, sharing, signed URLs, quotas, file messages.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    ChatTenant, Reply, ServeProcess, TestApp, assert_error, assert_invalid, random_lower, spawn_app, spawn_app_with,
};

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// A minimal PDF: `%PDF-` is what the sniffer goes by.
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";

/// A zip archive's local file header magic followed by filler.
const ZIP: &[u8] = b"PK\x03\x04\x14\x00\x00\x00\x08\x00zip filler bytes that do not matter here";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `POST /v1/files` with a raw body; `query` pairs are URL-encoded (add `filename` yourself).
async fn upload_with(app: &TestApp, token: &str, query: &[(&str, &str)], mime: &str, bytes: Vec<u8>) -> Reply {
    let mut builder = app.request(Method::POST, "/v1/files").query(query).bearer_auth(token).body(bytes);
    if !mime.is_empty() {
        builder = builder.header("content-type", mime);
    }
    app.send(builder).await
}

async fn upload(app: &TestApp, token: &str, filename: &str, mime: &str, bytes: &[u8]) -> Reply {
    upload_with(app, token, &[("filename", filename)], mime, bytes.to_vec()).await
}

/// Uploads and asserts 201; returns the file view.
async fn uploaded(app: &TestApp, token: &str, filename: &str, mime: &str, bytes: &[u8]) -> Value {
    let reply = upload(app, token, filename, mime, bytes).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

/// Uploads and returns just the new file's id.
async fn uploaded_id(app: &TestApp, token: &str, filename: &str, bytes: &[u8]) -> String {
    uploaded(app, token, filename, "text/plain", bytes).await["id"].as_str().unwrap().to_string()
}

/// `POST /v1/files` with a body of unknown length (chunked transfer encoding).
async fn upload_streamed(app: &TestApp, token: &str, filename: &str, chunks: Vec<Vec<u8>>) -> Reply {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    app.send(
        app.request(Method::POST, "/v1/files")
            .query(&[("filename", filename)])
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(reqwest::Body::wrap_stream(stream)),
    )
    .await
}

/// A `multipart/form-data` body with a text field before the `file` part.
fn multipart(boundary: &str, filename: &str, mime: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nnot the file\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// A response with its raw bytes.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("<absent>")
    }

    fn code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        body["error"]["code"].as_str().unwrap_or("<no error code>").to_string()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.code(), code, "{}", self.text());
    }
}

/// `GET path` with an optional bearer token and `Range` header.
async fn fetch(app: &TestApp, token: Option<&str>, path: &str, range: Option<&str>) -> Fetched {
    let mut builder = app.request(Method::GET, path);
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(range) = range {
        builder = builder.header("range", range);
    }
    let response = builder.send().await.expect("request reaches confab");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body reads").to_vec();
    Fetched { status, headers, bytes }
}

async fn download(app: &TestApp, token: &str, id: &str) -> Fetched {
    fetch(app, Some(token), &format!("/v1/files/{id}"), None).await
}

/// Asserts the holder of `token` can download file `id` and gets `expected`.
async fn assert_readable(app: &TestApp, token: &str, id: &str, expected: &[u8]) {
    let got = download(app, token, id).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.bytes, expected);
}

/// Asserts file `id` looks nonexistent to the holder of `token` (download and metadata).
async fn assert_hidden(app: &TestApp, token: &str, id: &str) {
    download(app, token, id).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let metadata = app.call(Method::GET, &format!("/v1/files/{id}/metadata"), token, None).await;
    assert_error(&metadata, StatusCode::NOT_FOUND, "not_found");
}

/// A well-formed file id that no file has.
fn uuid_like() -> String {
    "0190c3a2-7b1e-7cde-8f00-0123456789ab".to_string()
}

/// `(storage_bytes, file_count)` from `/v1/usage`.
async fn usage(app: &TestApp, key: &str) -> (i64, i64) {
    let reply = app.call(Method::GET, "/v1/usage", key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    (reply.body["storage_bytes"].as_i64().unwrap(), reply.body["file_count"].as_i64().unwrap())
}

/// Ids of the caller's own uploads, following every page.
async fn my_file_ids(app: &TestApp, token: &str) -> Vec<String> {
    let items = app.collect_pages("/v1/files?limit=2", token, "after", 2).await;
    items.iter().map(|f| f["id"].as_str().unwrap().to_string()).collect()
}

/// A tenant with a storage quota and a server key with every scope.
async fn quota_tenant(app: &TestApp, quota: u64) -> ChatTenant {
    let id = app.create_tenant_with(json!({ "limits": { "storage_quota_bytes": quota } })).await;
    let (key, _) = app.issue_key(&id, None).await;
    ChatTenant { id, key }
}

async fn patch_file(app: &TestApp, token: &str, id: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &format!("/v1/files/{id}"), token, Some(body)).await
}

async fn delete_file(app: &TestApp, token: &str, id: &str) -> Reply {
    app.call(Method::DELETE, &format!("/v1/files/{id}"), token, None).await
}

async fn sign(app: &TestApp, token: &str, id: &str, body: Option<Value>) -> Reply {
    app.call(Method::POST, &format!("/v1/files/{id}/url"), token, body).await
}

/// A signed URL for file `id` (asserting 201).
async fn signed_url(app: &TestApp, token: &str, id: &str, ttl: Option<u64>) -> (String, DateTime<Utc>) {
    let reply = sign(app, token, id, ttl.map(|t| json!({ "expires_in_secs": t }))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let url = reply.body["url"].as_str().unwrap().to_string();
    let expires_at = reply.body["expires_at"].as_str().unwrap().parse().unwrap();
    (url, expires_at)
}

fn param<'a>(url: &'a str, name: &str) -> &'a str {
    let (_, query) = url.split_once('?').unwrap();
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name)).map(|(_, v)| v).unwrap()
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={value}"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Sleeps until the wall clock has passed `at`.
async fn sleep_past(at: DateTime<Utc>) {
    let left = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
}

async fn send_files(app: &TestApp, token: &str, conversation: &str, kind: &str, file_ids: &[&str]) -> Reply {
    let body = json!({ "client_msg_id": format!("c-{}", random_lower(12)), "kind": kind, "file_ids": file_ids });
    app.call(Method::POST, &format!("/v1/conversations/{conversation}/messages"), token, Some(body)).await
}

/// A text message with files attached (`file_ids` work with any kind). Used where a test is
/// about the files rather than the message kind, so that it does not depend on how `file` /
/// `image` kinds are validated (see `a_file_message_shares_the_upload_with_the_conversation`).
async fn send_caption(app: &TestApp, token: &str, conversation: &str, text: &str, file_ids: &[&str]) -> Reply {
    let body = json!({ "client_msg_id": format!("c-{}", random_lower(12)), "text": text, "file_ids": file_ids });
    app.call(Method::POST, &format!("/v1/conversations/{conversation}/messages"), token, Some(body)).await
}

fn assert_attachment(attachment: &Value, id: &str, name: &str, mime: &str, size: usize) {
    assert_eq!(attachment["file_id"], id, "{attachment}");
    assert_eq!(attachment["name"], name, "{attachment}");
    assert_eq!(attachment["mime"], mime, "{attachment}");
    assert_eq!(attachment["size"], size, "{attachment}");
    assert_eq!(attachment["url"], format!("/v1/files/{id}"), "{attachment}");
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

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
    assert_eq!(download.headers()["content-type"], "image/png");
    assert_eq!(download.headers()["etag"], format!("\"{}\"", sha256_hex(PNG_1X1)).as_str());
    assert_eq!(download.bytes().await.unwrap().as_ref(), PNG_1X1);
}

#[tokio::test]
async fn a_raw_upload_round_trips_with_safe_headers_and_a_sanitised_name() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    // Every byte value, so nothing on the way may treat the body as text.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let sha = sha256_hex(&bytes);

    let file = uploaded(&app, &alice, "../../etc/passwd", "application/octet-stream", &bytes).await;
    assert_eq!(file["filename"], "passwd", "the path is dropped");
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["sha256"], sha);
    assert_eq!(file["uploader_id"], "alice");
    assert_eq!(file["sharing"], "private");
    assert_eq!(file["encryption"], "none");
    let id = file["id"].as_str().unwrap();
    assert_eq!(file["url"], format!("/v1/files/{id}"));

    let got = download(&app, &alice, id).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes.len(), bytes.len());
    assert!(got.bytes == bytes, "downloaded bytes differ from the upload");
    assert_eq!(sha256_hex(&got.bytes), sha);
    assert_eq!(got.header("content-length"), bytes.len().to_string());
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(got.header("etag"), format!("\"{sha}\""));
    assert_eq!(got.header("accept-ranges"), "bytes");
    let disposition = got.header("content-disposition");
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(disposition.contains("filename=\"passwd\""), "{disposition}");
    assert!(!disposition.contains(".."), "{disposition}");

    let metadata = app.call(Method::GET, &format!("/v1/files/{id}/metadata"), &alice, None).await;
    assert_eq!(metadata.status, StatusCode::OK, "{}", metadata.text);
    assert_eq!(metadata.body["sha256"], sha);
    assert_eq!(metadata.body["size"], bytes.len());
    assert_eq!(metadata.body["filename"], "passwd");
    assert_eq!(my_file_ids(&app, &alice).await, vec![id.to_string()]);

    // Quotes, control characters and Windows paths go too; non-ASCII names survive in filename*.
    let odd = uploaded(&app, &alice, "C:\\temp\\\"quoted\"\nname.txt", "text/plain", b"odd").await;
    assert_eq!(odd["filename"], "quotedname.txt");
    let unicode = uploaded(&app, &alice, "résumé.txt", "text/plain", b"cv").await;
    assert_eq!(unicode["filename"], "résumé.txt");
    let got = download(&app, &alice, unicode["id"].as_str().unwrap()).await;
    let disposition = got.header("content-disposition");
    assert!(disposition.contains("filename=\"r_sum_.txt\""), "{disposition}");
    assert!(disposition.contains("filename*=UTF-8''r%C3%A9sum%C3%A9.txt"), "{disposition}");

    // A raw upload needs a name.
    let nameless = upload_with(&app, &alice, &[], "text/plain", b"x".to_vec()).await;
    assert_invalid(&nameless, "filename");
}

#[tokio::test]
async fn a_multipart_upload_round_trips() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut bytes = PDF.to_vec();
    // Binary content, including CRLFs and dashes, inside the part.
    bytes.extend((0..=255u8).cycle().take(100_000));
    bytes.extend_from_slice(b"\r\n--not-the-boundary\r\n");
    let boundary = "confab-test-boundary-7f3a9c";
    let body = multipart(boundary, "../reports/q3.pdf", "application/octet-stream", &bytes);
    let reply = app
        .send(
            app.request(Method::POST, "/v1/files")
                .bearer_auth(&alice)
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .body(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["filename"], "q3.pdf");
    assert_eq!(reply.body["mime"], "application/pdf");
    assert_eq!(reply.body["size"], bytes.len());
    assert_eq!(reply.body["sha256"], sha256_hex(&bytes));
    let id = reply.body["id"].as_str().unwrap();
    let got = download(&app, &alice, id).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.bytes == bytes, "multipart bytes did not round-trip");
    assert_eq!(got.header("content-type"), "application/pdf");
    assert!(got.header("content-disposition").contains("filename=\"q3.pdf\""));

    // A form without a `file` part is refused and stores nothing.
    let no_file =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}--\r\n");
    let reply = app
        .send(
            app.request(Method::POST, "/v1/files")
                .bearer_auth(&alice)
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .body(no_file),
        )
        .await;
    assert_invalid(&reply, "file");
    assert_eq!(my_file_ids(&app, &alice).await, vec![id.to_string()]);
}

#[tokio::test]
async fn a_zero_byte_file_round_trips() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let file = uploaded(&app, &alice, "empty.txt", "text/plain", b"").await;
    assert_eq!(file["size"], 0);
    assert_eq!(file["sha256"], sha256_hex(b""));
    assert_eq!(file["mime"], "text/plain");
    let id = file["id"].as_str().unwrap();
    let got = download(&app, &alice, id).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-length"), "0");
    assert!(got.bytes.is_empty());
    assert_eq!(got.header("etag"), format!("\"{}\"", sha256_hex(b"")));
    // No byte of an empty file can be served.
    let range = fetch(&app, Some(&alice), &format!("/v1/files/{id}"), Some("bytes=0-")).await;
    range.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable");
    assert_eq!(range.header("content-range"), "bytes */0");
    // Streamed with no bytes at all, too.
    let streamed = upload_streamed(&app, &alice, "empty2.txt", vec![]).await;
    assert_eq!(streamed.status, StatusCode::CREATED, "{}", streamed.text);
    assert_eq!(streamed.body["size"], 0);
    assert_readable(&app, &alice, streamed.body["id"].as_str().unwrap(), b"").await;
    assert_eq!(my_file_ids(&app, &alice).await.len(), 2);
    // Empty files take no space but are files: they are counted.
    assert_eq!(usage(&app, &tenant.key).await, (0, 2));
}

#[tokio::test]
async fn a_server_key_uploads_and_reads_on_behalf_of_a_user() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let no_user = upload(&app, &tenant.key, "a.txt", "text/plain", b"server").await;
    assert_invalid(&no_user, "user_id");
    let reply = upload_with(
        &app,
        &tenant.key,
        &[("filename", "a.txt"), ("user_id", "alice")],
        "text/plain",
        b"server".to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["uploader_id"], "alice");
    let id = reply.body["id"].as_str().unwrap();
    assert_readable(&app, &alice, id, b"server").await;
    assert_eq!(my_file_ids(&app, &alice).await, vec![id.to_string()]);
    // A key without files:write cannot upload.
    let (read_only, _) = app.issue_key(&tenant.id, Some(&["files:read"])).await;
    let refused =
        upload_with(&app, &read_only, &[("filename", "b.txt"), ("user_id", "alice")], "text/plain", b"no".to_vec())
            .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(my_file_ids(&app, &alice).await, vec![id.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// A large file through a separate `confab serve` process
// ---------------------------------------------------------------------------------------------

const LARGE_CHUNK: usize = 1 << 20;
const LARGE_CHUNKS: u64 = 120;
const LARGE_SIZE: u64 = LARGE_CHUNK as u64 * LARGE_CHUNKS;
/// The peak resident memory `confab serve` may reach while moving `LARGE_SIZE` bytes (measured:
/// about 41 MiB for a debug build, of which about 37 MiB before the first upload).
const LARGE_PEAK_LIMIT_KIB: u64 = 100 * 1024;
/// How much the peak may grow over the one before the transfer (measured: about 5 MiB).
const LARGE_GROWTH_LIMIT_KIB: u64 = 48 * 1024;
const LARGE_HEADER: &[u8] = b"confab large file test\n";

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Byte `i` of the generated large file: a text header (so the sniffer finds nothing), then noise.
fn large_byte(i: u64) -> u8 {
    if (i as usize) < LARGE_HEADER.len() {
        return LARGE_HEADER[i as usize];
    }
    splitmix64(i / 8).to_le_bytes()[(i % 8) as usize]
}

/// Chunk `n` of the generated large file.
fn large_chunk(n: u64) -> Vec<u8> {
    let start = n * LARGE_CHUNK as u64;
    let mut chunk = Vec::with_capacity(LARGE_CHUNK);
    for block in start / 8..(start + LARGE_CHUNK as u64) / 8 {
        chunk.extend_from_slice(&splitmix64(block).to_le_bytes());
    }
    if n == 0 {
        chunk[..LARGE_HEADER.len()].copy_from_slice(LARGE_HEADER);
    }
    chunk
}

#[tokio::test]
async fn a_large_file_streams_through_bounded_server_memory() {
    let server = ServeProcess::start(&[("CONFAB__FILES__MAX_FILE_BYTES", "209715200")]).await;
    let app = &server.app;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let baseline_kib = server.peak_rss_kib();

    // Upload: chunks are generated as the client asks for them and hashed on the way out.
    let sent = Arc::new(Mutex::new(Sha256::new()));
    let hashing = sent.clone();
    let body = futures_util::stream::iter(0..LARGE_CHUNKS).map(move |n| {
        let chunk = large_chunk(n);
        hashing.lock().unwrap().update(&chunk);
        Ok::<_, std::io::Error>(chunk)
    });
    let started = Instant::now();
    let upload = app
        .send(
            app.request(Method::POST, "/v1/files")
                .query(&[("filename", "big.bin")])
                .bearer_auth(&alice)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    let upload_time = started.elapsed();
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.text);
    let sent_sha = hex::encode(sent.lock().unwrap().clone().finalize());
    assert_eq!(upload.body["size"], LARGE_SIZE);
    assert_eq!(upload.body["sha256"], sent_sha);
    assert_eq!(upload.body["mime"], "application/octet-stream");
    let id = upload.body["id"].as_str().unwrap().to_string();
    assert_eq!(usage(app, &tenant.key).await, (LARGE_SIZE as i64, 1));

    // Download, hashing chunk by chunk.
    let started = Instant::now();
    let response = app.request(Method::GET, &format!("/v1/files/{id}")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], LARGE_SIZE.to_string().as_str());
    let mut stream = response.bytes_stream();
    let mut received = Sha256::new();
    let mut length = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("download chunk");
        length += chunk.len() as u64;
        received.update(&chunk);
    }
    let download_time = started.elapsed();
    assert_eq!(length, LARGE_SIZE);
    assert_eq!(hex::encode(received.finalize()), sent_sha);

    // A range from the middle that straddles storage chunk boundaries.
    let (start, end) = (LARGE_SIZE / 2 - 300_001, LARGE_SIZE / 2 + 299_999);
    let ranged = fetch(app, Some(&alice), &format!("/v1/files/{id}"), Some(&format!("bytes={start}-{end}"))).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.header("content-range"), format!("bytes {start}-{end}/{LARGE_SIZE}"));
    let expected: Vec<u8> = (start..=end).map(large_byte).collect();
    assert!(ranged.bytes == expected, "the middle range has the wrong bytes");
    let tail = fetch(app, Some(&alice), &format!("/v1/files/{id}"), Some("bytes=-10")).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes, (LARGE_SIZE - 10..LARGE_SIZE).map(large_byte).collect::<Vec<_>>());

    let peak_kib = server.peak_rss_kib();
    println!(
        "large file: {} MiB; confab serve peak RSS {} KiB (baseline {} KiB); upload {:?}, download {:?}",
        LARGE_SIZE >> 20,
        peak_kib,
        baseline_kib,
        upload_time,
        download_time
    );
    assert!(
        peak_kib < LARGE_PEAK_LIMIT_KIB,
        "confab serve peaked at {peak_kib} KiB while moving a {} KiB file",
        LARGE_SIZE / 1024
    );
    assert!(
        peak_kib.saturating_sub(baseline_kib) < LARGE_GROWTH_LIMIT_KIB,
        "confab serve grew by {} KiB while moving a {} KiB file",
        peak_kib - baseline_kib,
        LARGE_SIZE / 1024
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn files_over_the_size_limit_are_refused_and_leave_nothing_behind() {
    let app = spawn_app_with(&[("files.max_file_bytes", "1000".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let kept = uploaded_id(&app, &alice, "exact.txt", &[b'a'; 1000]).await;
    assert_eq!(usage(&app, &tenant.key).await, (1000, 1));

    // Content-Length known up front.
    let known = upload(&app, &alice, "big.txt", "text/plain", &[b'b'; 1001]).await;
    assert_error(&known, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(known.body["error"]["details"]["limit_bytes"], 1000);
    let much = upload(&app, &alice, "bigger.txt", "text/plain", &[b'b'; 50_000]).await;
    assert_error(&much, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Unknown length: the limit is found while streaming.
    let streamed = upload_streamed(&app, &alice, "chunked.txt", vec![vec![b'c'; 400]; 5]).await;
    assert_error(&streamed, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let one_over = upload_streamed(&app, &alice, "chunked.txt", vec![vec![b'c'; 500], vec![b'c'; 501]]).await;
    assert_error(&one_over, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // A multipart part is measured by its own bytes.
    let boundary = "limit-boundary";
    let body = multipart(boundary, "form.txt", "text/plain", &[b'd'; 1500]);
    let form = app
        .send(
            app.request(Method::POST, "/v1/files")
                .bearer_auth(&alice)
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .body(body),
        )
        .await;
    assert_error(&form, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    assert_eq!(my_file_ids(&app, &alice).await, vec![kept.clone()]);
    assert_eq!(usage(&app, &tenant.key).await, (1000, 1));
    // The size limit is exactly inclusive for streamed bodies as well.
    let fits = upload_streamed(&app, &alice, "chunked.txt", vec![vec![b'e'; 500], vec![b'e'; 500]]).await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.text);
    assert_eq!(usage(&app, &tenant.key).await, (2000, 2));
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing_behind() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'a'; 100_000]), Ok(vec![b'b'; 100_000]), Err(std::io::Error::other("client gave up"))];
    let result = app
        .request(Method::POST, "/v1/files")
        .query(&[("filename", "cut.txt")])
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    assert!(result.is_err() || !result.unwrap().status().is_success(), "an interrupted upload must not succeed");
    // The server notices the broken body on its own time: wait for the reservation to go back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = usage(&app, &tenant.key).await;
        if now == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "usage stayed at {now:?} after an interrupted upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(my_file_ids(&app, &alice).await.is_empty());
}

#[tokio::test]
async fn the_storage_quota_is_enforced_and_deleting_frees_it() {
    let app = spawn_app().await;
    let tenant = quota_tenant(&app, 5000).await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let quota = app.call(Method::GET, "/v1/usage", &tenant.key, None).await;
    assert_eq!(quota.body["storage_quota_bytes"], 5000);
    assert_eq!(usage(&app, &tenant.key).await, (0, 0));

    let big = uploaded_id(&app, &alice, "big.txt", &[b'a'; 3000]).await;
    assert_eq!(usage(&app, &tenant.key).await, (3000, 1));

    // The quota is the tenant's, whoever uploads, and however the length is announced.
    let over = upload(&app, &bob, "over.txt", "text/plain", &[b'b'; 3000]).await;
    assert_error(&over, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(over.body["error"]["details"]["limit"], "storage_quota_bytes");
    let streamed = upload_streamed(&app, &bob, "over.txt", vec![vec![b'b'; 1000]; 3]).await;
    assert_error(&streamed, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(usage(&app, &tenant.key).await, (3000, 1));
    assert!(my_file_ids(&app, &bob).await.is_empty());

    // Exactly up to the quota fits; one byte more does not.
    let small = uploaded_id(&app, &bob, "small.txt", &[b'c'; 2000]).await;
    assert_eq!(usage(&app, &tenant.key).await, (5000, 2));
    let byte = upload(&app, &alice, "byte.txt", "text/plain", b"x").await;
    assert_error(&byte, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(my_file_ids(&app, &alice).await, vec![big.clone()]);
    assert_eq!(usage(&app, &tenant.key).await, (5000, 2));

    // Deleting frees the space for a later upload.
    let deleted = delete_file(&app, &alice, &big).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(usage(&app, &tenant.key).await, (2000, 1));
    let again = delete_file(&app, &alice, &big).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(usage(&app, &tenant.key).await, (2000, 1), "a second delete frees nothing");
    let later = uploaded_id(&app, &alice, "later.txt", &[b'd'; 3000]).await;
    assert_eq!(usage(&app, &tenant.key).await, (5000, 2));
    assert_eq!(my_file_ids(&app, &alice).await, vec![later]);
    assert_eq!(my_file_ids(&app, &bob).await, vec![small]);
}

#[tokio::test]
async fn concurrent_uploads_cannot_overshoot_the_quota() {
    let app = spawn_app().await;
    let tenant = quota_tenant(&app, 5000).await;
    let alice = app.user(&tenant, "alice").await;

    let known = (0..6).map(|i| {
        let (app, alice) = (&app, &alice);
        async move { upload(app, alice, &format!("k{i}.txt"), "text/plain", &[b'k'; 2000]).await }
    });
    let replies = futures_util::future::join_all(known).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_error(reply, StatusCode::CONFLICT, "limit_reached");
    }
    assert_eq!(created, 2, "two 2000-byte files fit a 5000-byte quota");
    assert_eq!(usage(&app, &tenant.key).await, (4000, 2));
    assert_eq!(my_file_ids(&app, &alice).await.len(), 2);

    // Bodies of unknown length race for the remaining 1000 bytes.
    let streamed = (0..6).map(|i| {
        let (app, alice) = (&app, &alice);
        async move { upload_streamed(app, alice, &format!("s{i}.txt"), vec![vec![b's'; 300]; 2]).await }
    });
    let replies = futures_util::future::join_all(streamed).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_error(reply, StatusCode::CONFLICT, "limit_reached");
    }
    assert!(created <= 1, "{created} 600-byte uploads fit in 1000 bytes");
    let (bytes, count) = usage(&app, &tenant.key).await;
    assert!(bytes <= 5000, "usage {bytes} overshot the quota");
    assert_eq!((bytes, count), (4000 + 600 * created as i64, 2 + created as i64));
    assert_eq!(my_file_ids(&app, &alice).await.len(), 2 + created);
}

#[tokio::test]
async fn types_outside_the_tenant_allow_list_are_refused() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let patched = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{}", tenant.id),
            Some(json!({"allowed_mime_types": ["image/*"]})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);

    // The sniffed type decides, whatever the client declares.
    let pdf = upload(&app, &alice, "doc.png", "image/png", PDF).await;
    assert_error(&pdf, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_eq!(pdf.body["error"]["details"]["mime"], "application/pdf");
    let zip = upload(&app, &alice, "archive.jpg", "image/jpeg", ZIP).await;
    assert_error(&zip, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_eq!(zip.body["error"]["details"]["mime"], "application/zip");
    let text = upload(&app, &alice, "notes.txt", "text/plain", b"plain words").await;
    assert_error(&text, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let streamed = upload_streamed(&app, &alice, "doc.png", vec![PDF.to_vec()]).await;
    assert_error(&streamed, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert!(my_file_ids(&app, &alice).await.is_empty());
    assert_eq!(usage(&app, &tenant.key).await, (0, 0));

    // An image is still welcome, even declared as something else.
    let png = uploaded(&app, &alice, "dot.bin", "application/pdf", PNG_1X1).await;
    assert_eq!(png["mime"], "image/png");
    assert_eq!(usage(&app, &tenant.key).await, (PNG_1X1.len() as i64, 1));
}

#[tokio::test]
async fn the_sniffed_type_replaces_a_declared_type_that_disagrees() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;

    let pdf = uploaded(&app, &alice, "picture.png", "image/png", PDF).await;
    assert_eq!(pdf["mime"], "application/pdf");
    let got = download(&app, &alice, pdf["id"].as_str().unwrap()).await;
    assert_eq!(got.header("content-type"), "application/pdf");

    // A PNG declared as HTML is served as a PNG, never as HTML.
    let png = uploaded(&app, &alice, "page.html", "text/html", PNG_1X1).await;
    assert_eq!(png["mime"], "image/png");
    let got = download(&app, &alice, png["id"].as_str().unwrap()).await;
    assert_eq!(got.header("content-type"), "image/png");

    // Bytes with no signature keep the declared type, without parameters.
    let text = uploaded(&app, &alice, "notes.txt", "Text/Plain; charset=utf-8", b"hello").await;
    assert_eq!(text["mime"], "text/plain");
    // Undeclared and unrecognisable is octet-stream.
    let anything = uploaded(&app, &alice, "blob", "", b"\x01\x02\x03").await;
    assert_eq!(anything["mime"], "application/octet-stream");
    // HTML bytes declared as HTML are not on the default list.
    let html = upload(&app, &alice, "x.html", "text/html", b"<html><script>alert(1)</script></html>").await;
    assert_error(&html, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn usage_reflects_uploads_and_deletes() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let reply = app.call(Method::GET, "/v1/usage", &tenant.key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["storage_bytes"], 0);
    assert_eq!(reply.body["file_count"], 0);
    assert_eq!(reply.body["storage_quota_bytes"], 10_737_418_240u64);

    let a = uploaded_id(&app, &alice, "a.txt", &[b'a'; 1234]).await;
    let b = uploaded_id(&app, &bob, "b.txt", &[b'b'; 4321]).await;
    let _c = uploaded_id(&app, &bob, "c.txt", b"").await;
    assert_eq!(usage(&app, &tenant.key).await, (5555, 3));
    assert_eq!(delete_file(&app, &alice, &a).await.status, StatusCode::NO_CONTENT);
    assert_eq!(usage(&app, &tenant.key).await, (4321, 2));
    // A server key with files:write deletes anyone's file.
    assert_eq!(delete_file(&app, &tenant.key, &b).await.status, StatusCode::NO_CONTENT);
    assert_eq!(usage(&app, &tenant.key).await, (0, 1));

    // Usage is for server keys with files:read.
    let (chat_only, _) = app.issue_key(&tenant.id, Some(&["chat:read"])).await;
    assert_error(
        &app.call(Method::GET, "/v1/usage", &chat_only, None).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    );
    let (files_read, _) = app.issue_key(&tenant.id, Some(&["files:read"])).await;
    assert_eq!(usage(&app, &files_read).await, (0, 1));
    let as_user = app.call(Method::GET, "/v1/usage", &alice, None).await;
    assert_error(&as_user, StatusCode::UNAUTHORIZED, "unauthorized");
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn single_ranges_are_served_partially_and_others_whole_or_refused() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let id = uploaded_id(&app, &alice, "digits.txt", b"0123456789").await;
    let path = format!("/v1/files/{id}");

    for (range, content_range, bytes) in [
        ("bytes=0-3", "bytes 0-3/10", &b"0123"[..]),
        ("bytes=5-", "bytes 5-9/10", b"56789"),
        ("bytes=-4", "bytes 6-9/10", b"6789"),
        ("bytes=8-100", "bytes 8-9/10", b"89"),
        ("bytes=9-9", "bytes 9-9/10", b"9"),
        ("bytes=-100", "bytes 0-9/10", b"0123456789"),
    ] {
        let got = fetch(&app, Some(&alice), &path, Some(range)).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}: {}", got.text());
        assert_eq!(got.header("content-range"), content_range, "{range}");
        assert_eq!(got.header("content-length"), bytes.len().to_string(), "{range}");
        assert_eq!(got.bytes, bytes, "{range}");
        assert_eq!(got.header("content-type"), "text/plain");
    }

    // Valid ranges that start past the end, or a zero-length suffix, match no byte.
    for range in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
        let got = fetch(&app, Some(&alice), &path, Some(range)).await;
        got.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable");
        assert_eq!(got.header("content-range"), "bytes */10", "{range}");
    }

    // Multiple ranges, and ranges in other units, are ignored: the whole file, 200.
    for range in ["bytes=0-1,4-5", "items=0-3"] {
        let got = fetch(&app, Some(&alice), &path, Some(range)).await;
        assert_eq!(got.status, StatusCode::OK, "{range}");
        assert_eq!(got.bytes, b"0123456789", "{range}");
        assert_eq!(got.header("content-range"), "<absent>", "{range}");
    }

    // Signed URLs honour ranges too.
    let (url, _) = signed_url(&app, &alice, &id, None).await;
    let got = fetch(&app, None, &url, Some("bytes=2-4")).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.header("content-range"), "bytes 2-4/10");
    assert_eq!(got.bytes, b"234");
}

// ---------------------------------------------------------------------------------------------
// Signed URLs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn signed_urls_work_without_credentials_until_they_expire() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let other_tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let id = uploaded_id(&app, &alice, "secret.txt", b"for your eyes only").await;
    let other = uploaded_id(&app, &alice, "other.txt", b"another file").await;

    // Minted first so that its second has passed by the end of the test.
    let (short, short_expiry) = signed_url(&app, &alice, &id, Some(1)).await;

    let before = Utc::now();
    let reply = sign(&app, &alice, &id, None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let url = reply.body["url"].as_str().unwrap().to_string();
    let expires_at: DateTime<Utc> = reply.body["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = (expires_at - before).num_seconds();
    assert!((3598..=3601).contains(&ttl), "default lifetime is an hour, got {ttl} s");
    assert!(url.starts_with(&format!("/v1/files/{id}/content?")), "{url}");
    assert_eq!(param(&url, "tenant"), tenant.id);
    assert_eq!(param(&url, "expires"), expires_at.timestamp().to_string());

    let got = fetch(&app, None, &url, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.bytes, b"for your eyes only");
    assert_eq!(got.header("content-disposition"), "attachment; filename=\"secret.txt\"; filename*=UTF-8''secret.txt");
    assert_eq!(got.header("x-content-type-options"), "nosniff");

    // A server key with files:read may mint one; a user who cannot read the file may not.
    let by_key = sign(&app, &tenant.key, &id, Some(json!({"expires_in_secs": 60}))).await;
    assert_eq!(by_key.status, StatusCode::CREATED, "{}", by_key.text);
    assert_error(&sign(&app, &bob, &id, None).await, StatusCode::NOT_FOUND, "not_found");

    // Lifetimes are 1 s to the configured maximum.
    assert_invalid(&sign(&app, &alice, &id, Some(json!({"expires_in_secs": 0}))).await, "expires_in_secs");
    assert_invalid(&sign(&app, &alice, &id, Some(json!({"expires_in_secs": 604_801}))).await, "expires_in_secs");
    assert_eq!(sign(&app, &alice, &id, Some(json!({"expires_in_secs": 604_800}))).await.status, StatusCode::CREATED);

    // Tampering in any part of the URL invalidates it.
    let signature = param(&url, "signature");
    let flipped = format!("{}{}", if signature.starts_with('A') { 'B' } else { 'A' }, &signature[1..]);
    let tampered = [
        with_param(&url, "signature", &flipped),
        with_param(&url, "signature", "not-base64!"),
        with_param(&url, "signature", ""),
        url.replace(&id, &other),
        with_param(&url, "tenant", &other_tenant.id),
        with_param(&url, "expires", &(expires_at.timestamp() + 3600).to_string()),
    ];
    for bad in &tampered {
        fetch(&app, None, bad, None).await.assert_error(StatusCode::FORBIDDEN, "invalid_signature");
    }
    // The other tenant's users and files were not touched by any of this.
    assert_eq!(usage(&app, &other_tenant.key).await, (0, 0));

    // Expired.
    sleep_past(short_expiry).await;
    fetch(&app, None, &short, None).await.assert_error(StatusCode::GONE, "url_expired");
    // An expired URL with a forged signature is still just forged.
    let forged = with_param(&short, "signature", &flipped);
    fetch(&app, None, &forged, None).await.assert_error(StatusCode::FORBIDDEN, "invalid_signature");

    // A deleted file's URL finds nothing.
    assert_eq!(delete_file(&app, &alice, &id).await.status, StatusCode::NO_CONTENT);
    fetch(&app, None, &url, None).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let other_url = signed_url(&app, &alice, &other, None).await.0;
    assert_eq!(fetch(&app, None, &other_url, None).await.bytes, b"another file");
}

// ---------------------------------------------------------------------------------------------
// Sharing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_files_are_for_the_uploader_and_server_keys() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let id = uploaded_id(&app, &alice, "diary.txt", b"dear diary").await;

    assert_readable(&app, &alice, &id, b"dear diary").await;
    // Others cannot tell the file exists.
    assert_hidden(&app, &bob, &id).await;
    assert_error(&sign(&app, &bob, &id, None).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&patch_file(&app, &bob, &id, json!({"sharing": "public"})).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&delete_file(&app, &bob, &id).await, StatusCode::NOT_FOUND, "not_found");
    assert!(my_file_ids(&app, &bob).await.is_empty());
    // An unknown id looks the same.
    let unknown = uuid_like();
    assert_hidden(&app, &alice, &unknown).await;
    let malformed = download(&app, &alice, "not-a-uuid").await;
    assert!(malformed.status.is_client_error(), "{}", malformed.text());

    // Server keys with files:read read everything; others are refused on scope.
    assert_readable(&app, &tenant.key, &id, b"dear diary").await;
    let (files_read, _) = app.issue_key(&tenant.id, Some(&["files:read"])).await;
    assert_readable(&app, &files_read, &id, b"dear diary").await;
    let (chat_only, _) = app.issue_key(&tenant.id, Some(&["chat:read", "chat:write"])).await;
    download(&app, &chat_only, &id).await.assert_error(StatusCode::FORBIDDEN, "insufficient_scope");
    // Reading is not changing.
    let patch = patch_file(&app, &files_read, &id, json!({"sharing": "public"})).await;
    assert_error(&patch, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_error(&delete_file(&app, &files_read, &id).await, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_hidden(&app, &bob, &id).await;

    // The uploader may change it.
    let public = patch_file(&app, &alice, &id, json!({"sharing": "public"})).await;
    assert_eq!(public.status, StatusCode::OK, "{}", public.text);
    assert_eq!(public.body["sharing"], "public");
    assert_readable(&app, &bob, &id, b"dear diary").await;
    // A server key with files:write may, too.
    let private = patch_file(&app, &tenant.key, &id, json!({"sharing": "private"})).await;
    assert_eq!(private.status, StatusCode::OK, "{}", private.text);
    assert_hidden(&app, &bob, &id).await;
    assert_readable(&app, &alice, &id, b"dear diary").await;

    assert_invalid(&patch_file(&app, &alice, &id, json!({"sharing": "everyone"})).await, "sharing");
    let unknown_field = patch_file(&app, &alice, &id, json!({"sharing": "public", "owner": "bob"})).await;
    assert!(unknown_field.status.is_client_error(), "{}", unknown_field.text);
    assert_hidden(&app, &bob, &id).await;
}

#[tokio::test]
async fn conversation_files_are_for_the_conversation_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let elsewhere = app.conversation(&carol, "group", &["bob"]).await;

    let reply = upload_with(
        &app,
        &alice,
        &[("filename", "plan.txt"), ("sharing", "conversation"), ("conversation_id", &chat)],
        "text/plain",
        b"the plan".to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["sharing"], "conversation");
    assert_eq!(reply.body["conversation_ids"], json!([chat]));
    let id = reply.body["id"].as_str().unwrap().to_string();
    assert_readable(&app, &bob, &id, b"the plan").await;
    let metadata = app.call(Method::GET, &format!("/v1/files/{id}/metadata"), &bob, None).await;
    assert_eq!(metadata.status, StatusCode::OK, "{}", metadata.text);
    assert_hidden(&app, &carol, &id).await;
    // A member who is not the uploader reads but may not change or delete.
    assert_error(&patch_file(&app, &bob, &id, json!({"sharing": "public"})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&delete_file(&app, &bob, &id).await, StatusCode::FORBIDDEN, "forbidden");
    assert_hidden(&app, &carol, &id).await;

    // Sharing with a conversation needs one, and the uploader's membership in it.
    let missing =
        upload_with(&app, &alice, &[("filename", "x.txt"), ("sharing", "conversation")], "text/plain", b"x".into())
            .await;
    assert_invalid(&missing, "conversation_id");
    let not_mine = upload_with(
        &app,
        &alice,
        &[("filename", "x.txt"), ("sharing", "conversation"), ("conversation_id", &elsewhere)],
        "text/plain",
        b"x".to_vec(),
    )
    .await;
    assert_error(&not_mine, StatusCode::NOT_FOUND, "not_found");
    let patch = patch_file(&app, &alice, &id, json!({"sharing": "conversation", "conversation_id": elsewhere})).await;
    assert_error(&patch, StatusCode::NOT_FOUND, "not_found");
    assert_invalid(&patch_file(&app, &alice, &id, json!({"sharing": "conversation"})).await, "conversation_id");
    assert_hidden(&app, &carol, &id).await;
    assert_eq!(my_file_ids(&app, &alice).await, vec![id.clone()]);

    // Adding a member grants access; removing one takes it away.
    let added = app
        .call(Method::POST, &format!("/v1/conversations/{chat}/members"), &alice, Some(json!({"user_ids": ["carol"]})))
        .await;
    assert!(added.status.is_success(), "{}", added.text);
    assert_readable(&app, &carol, &id, b"the plan").await;
    let removed = app.call(Method::DELETE, &format!("/v1/conversations/{chat}/members/bob"), &alice, None).await;
    assert!(removed.status.is_success(), "{}", removed.text);
    assert_hidden(&app, &bob, &id).await;
    assert_readable(&app, &carol, &id, b"the plan").await;

    // Making it private again shuts out the members.
    let private = patch_file(&app, &alice, &id, json!({"sharing": "private"})).await;
    assert_eq!(private.status, StatusCode::OK, "{}", private.text);
    assert_hidden(&app, &carol, &id).await;
    assert_readable(&app, &alice, &id, b"the plan").await;

    // Sharing an existing file with a conversation by PATCH.
    let later = uploaded_id(&app, &carol, "later.txt", b"later").await;
    assert_hidden(&app, &bob, &later).await;
    let shared =
        patch_file(&app, &carol, &later, json!({"sharing": "conversation", "conversation_id": elsewhere})).await;
    assert_eq!(shared.status, StatusCode::OK, "{}", shared.text);
    assert_eq!(shared.body["conversation_ids"], json!([elsewhere]));
    assert_readable(&app, &bob, &later, b"later").await;
    assert_hidden(&app, &alice, &later).await;
}

#[tokio::test]
async fn public_files_are_for_every_user_of_the_tenant_until_the_share_expires() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;

    let forever =
        upload_with(&app, &alice, &[("filename", "p.txt"), ("sharing", "public")], "text/plain", b"pub".into()).await;
    assert_eq!(forever.status, StatusCode::CREATED, "{}", forever.text);
    assert_eq!(forever.body["sharing"], "public");
    let forever = forever.body["id"].as_str().unwrap().to_string();
    assert_readable(&app, &bob, &forever, b"pub").await;
    assert_readable(&app, &carol, &forever, b"pub").await;
    // Any reader may mint a signed URL for it.
    let (url, _) = signed_url(&app, &bob, &forever, Some(60)).await;
    assert_eq!(fetch(&app, None, &url, None).await.bytes, b"pub");
    assert_error(&delete_file(&app, &bob, &forever).await, StatusCode::FORBIDDEN, "forbidden");

    // Shares that have already ended are refused.
    let past = (Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let late = upload_with(
        &app,
        &alice,
        &[("filename", "late.txt"), ("sharing", "public"), ("expires_at", &past)],
        "text/plain",
        b"late".to_vec(),
    )
    .await;
    assert_invalid(&late, "expires_at");
    assert_invalid(
        &patch_file(&app, &alice, &forever, json!({"sharing": "public", "expires_at": past})).await,
        "expires_at",
    );
    assert_eq!(my_file_ids(&app, &alice).await, vec![forever.clone()]);
    assert_readable(&app, &bob, &forever, b"pub").await;

    // A share with an end lapses back to private when it passes.
    let until = Utc::now() + chrono::Duration::milliseconds(1500);
    let brief = upload_with(
        &app,
        &alice,
        &[("filename", "brief.txt"), ("sharing", "public"), ("expires_at", &until.to_rfc3339())],
        "text/plain",
        b"brief".to_vec(),
    )
    .await;
    assert_eq!(brief.status, StatusCode::CREATED, "{}", brief.text);
    let brief = brief.body["id"].as_str().unwrap().to_string();
    let patched_until = Utc::now() + chrono::Duration::milliseconds(1500);
    let patched = patch_file(&app, &alice, &forever, json!({"sharing": "public", "expires_at": patched_until})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert!(patched.body["sharing_expires_at"].is_string(), "{}", patched.text);
    assert_readable(&app, &bob, &brief, b"brief").await;
    assert_readable(&app, &carol, &forever, b"pub").await;

    sleep_past(until.max(patched_until)).await;
    assert_hidden(&app, &bob, &brief).await;
    assert_hidden(&app, &carol, &forever).await;
    assert_readable(&app, &alice, &brief, b"brief").await;
    assert_readable(&app, &alice, &forever, b"pub").await;
    assert_readable(&app, &tenant.key, &forever, b"pub").await;

    // Sharing again without an end restores access.
    let again = patch_file(&app, &alice, &forever, json!({"sharing": "public"})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(again.body["sharing_expires_at"].is_null(), "{}", again.text);
    assert_readable(&app, &carol, &forever, b"pub").await;
}

// ---------------------------------------------------------------------------------------------
// File messages
// ---------------------------------------------------------------------------------------------

/// `file`, `image`, `video` and `audio` messages need attachments "or `file_ids`"
/// (SendMessageRequest docs): uploaded files are the attachments.
#[tokio::test]
async fn file_and_image_messages_carry_their_uploads_as_attachments() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let image = uploaded_id(&app, &alice, "dot.png", PNG_1X1).await;
    let report = uploaded_id(&app, &alice, "report.pdf", PDF).await;
    assert_hidden(&app, &bob, &image).await;

    let sent = send_files(&app, &alice, &chat, "image", &[&image]).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["kind"], "image");
    assert_eq!(sent.body["attachments"].as_array().map(Vec::len), Some(1), "{}", sent.text);
    assert_attachment(&sent.body["attachments"][0], &image, "dot.png", "image/png", PNG_1X1.len());
    let sent = send_files(&app, &alice, &chat, "file", &[&report]).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_attachment(&sent.body["attachments"][0], &report, "report.pdf", "application/pdf", PDF.len());

    // The conversation's members can now download them; others still cannot.
    assert_readable(&app, &bob, &image, PNG_1X1).await;
    assert_readable(&app, &bob, &report, PDF).await;
    assert_hidden(&app, &carol, &image).await;
    // With neither attachments nor files, a file message is refused.
    assert_invalid(&send_files(&app, &alice, &chat, "image", &[]).await, "attachments");
}

#[tokio::test]
async fn files_attached_to_a_message_become_readable_by_its_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let image = uploaded_id(&app, &alice, "dot.png", PNG_1X1).await;
    let notes = uploaded_id(&app, &alice, "notes.txt", b"meeting notes").await;
    assert_hidden(&app, &bob, &image).await;

    let sent = send_caption(&app, &alice, &chat, "two files", &[&image, &notes]).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    let attachments = sent.body["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2, "{}", sent.text);
    assert_attachment(&attachments[0], &image, "dot.png", "image/png", PNG_1X1.len());
    assert_attachment(&attachments[1], &notes, "notes.txt", "text/plain", 13);
    // History shows the same attachments.
    let history = app.call(Method::GET, &format!("/v1/conversations/{chat}/messages"), &bob, None).await;
    let message = history.body["items"].as_array().unwrap().iter().find(|m| m["text"] == "two files").cloned();
    assert_eq!(message.expect("the message")["attachments"], sent.body["attachments"]);

    assert_readable(&app, &bob, &image, PNG_1X1).await;
    assert_readable(&app, &bob, &notes, b"meeting notes").await;
    assert_eq!(fetch(&app, Some(&bob), attachments[0]["url"].as_str().unwrap(), None).await.bytes, PNG_1X1);
    assert_hidden(&app, &carol, &image).await;
    let metadata = app.call(Method::GET, &format!("/v1/files/{image}/metadata"), &alice, None).await;
    assert_eq!(metadata.body["sharing"], "conversation");
    assert_eq!(metadata.body["conversation_ids"], json!([chat]));
    // Still the uploader's alone to change.
    assert_error(&delete_file(&app, &bob, &image).await, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn file_messages_take_only_the_senders_own_existing_uploads() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let alices = uploaded_id(&app, &alice, "a.txt", b"alice's").await;
    let bobs = uploaded_id(&app, &bob, "b.txt", b"bob's").await;

    // Attaching someone else's upload would be a way to read it: refused, and nothing shared.
    let theft = send_caption(&app, &bob, &chat, "look", &[&alices]).await;
    assert_error(&theft, StatusCode::FORBIDDEN, "forbidden");
    let mixed = send_caption(&app, &bob, &chat, "look", &[&bobs, &alices]).await;
    assert_error(&mixed, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.call(Method::GET, &format!("/v1/files/{alices}/metadata"), &alice, None).await.body["sharing"],
        "private"
    );
    assert_hidden(&app, &bob, &alices).await;
    assert_hidden(&app, &alice, &bobs).await;

    let unknown = send_caption(&app, &alice, &chat, "ghost", &[&uuid_like()]).await;
    assert_invalid(&unknown, "file_ids");
    let malformed = send_caption(&app, &alice, &chat, "bad", &["../etc/passwd"]).await;
    assert_invalid(&malformed, "file_ids");
    // Another tenant's upload does not exist here.
    let other = app.chat_tenant().await;
    let zed = app.user(&other, "zed").await;
    let foreign = uploaded_id(&app, &zed, "z.txt", b"zed").await;
    assert_invalid(&send_caption(&app, &alice, &chat, "foreign", &[&foreign]).await, "file_ids");

    let history = app.call(Method::GET, &format!("/v1/conversations/{chat}/messages"), &bob, None).await;
    let items = history.body["items"].as_array().unwrap();
    assert!(items.iter().all(|m| m["attachments"].as_array().is_none_or(|a| a.is_empty())), "{}", history.text);
}

/// Uploaded files are attachments, so `chat.max_attachments` (10) bounds them too.
#[tokio::test]
async fn a_message_takes_at_most_max_attachments_files() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(uploaded_id(&app, &alice, &format!("{i}.txt"), b"x").await);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ten = send_caption(&app, &alice, &chat, "ten", &ids[..10]).await;
    assert_eq!(ten.status, StatusCode::CREATED, "{}", ten.text);
    assert_eq!(ten.body["attachments"].as_array().map(Vec::len), Some(10));
    let eleven = send_caption(&app, &alice, &chat, "eleven", &ids).await;
    assert_eq!(eleven.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", eleven.text);
    assert_eq!(eleven.code(), "validation_failed", "{}", eleven.text);
}

#[tokio::test]
async fn a_deleted_file_stays_listed_on_its_message_but_answers_404() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let chat = app.conversation(&alice, "group", &["bob"]).await;
    let id = uploaded_id(&app, &alice, "notes.txt", b"meeting notes").await;
    let sent = send_caption(&app, &alice, &chat, "notes attached", &[&id]).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_readable(&app, &bob, &id, b"meeting notes").await;

    assert_eq!(delete_file(&app, &alice, &id).await.status, StatusCode::NO_CONTENT);
    let history = app.call(Method::GET, &format!("/v1/conversations/{chat}/messages"), &bob, None).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let message =
        history.body["items"].as_array().unwrap().iter().find(|m| m["text"] == "notes attached").expect("the message");
    assert_attachment(&message["attachments"][0], &id, "notes.txt", "text/plain", 13);
    assert_hidden(&app, &bob, &id).await;
    assert_hidden(&app, &alice, &id).await;
    download(&app, &tenant.key, &id).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // The deleted file cannot be attached again.
    assert_invalid(&send_caption(&app, &alice, &chat, "again", &[&id]).await, "file_ids");
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation and E2E
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_tenant_cannot_reach_a_tenants_files() {
    let app = spawn_app().await;
    let a = app.chat_tenant().await;
    let b = app.chat_tenant().await;
    let alice = app.user(&a, "alice").await;
    // Same user id in the other tenant.
    let mallory = app.user(&b, "alice").await;
    let reply =
        upload_with(&app, &alice, &[("filename", "a.txt"), ("sharing", "public")], "text/plain", b"tenant a".into())
            .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let (url, _) = signed_url(&app, &alice, &id, None).await;

    for token in [&mallory, &b.key] {
        assert_hidden(&app, token, &id).await;
        let patch = patch_file(&app, token, &id, json!({"sharing": "private"})).await;
        assert_error(&patch, StatusCode::NOT_FOUND, "not_found");
        assert_error(&delete_file(&app, token, &id).await, StatusCode::NOT_FOUND, "not_found");
        assert_error(&sign(&app, token, &id, None).await, StatusCode::NOT_FOUND, "not_found");
    }
    assert!(my_file_ids(&app, &mallory).await.is_empty());
    // A's signed URL with B's id substituted is refused.
    let swapped = with_param(&url, "tenant", &b.id);
    fetch(&app, None, &swapped, None).await.assert_error(StatusCode::FORBIDDEN, "invalid_signature");
    // B's own signed URL for B's file does not unlock A's file either.
    let bs = uploaded_id(&app, &mallory, "b.txt", b"tenant b").await;
    let (b_url, _) = signed_url(&app, &mallory, &bs, None).await;
    fetch(&app, None, &b_url.replace(&bs, &id), None).await.assert_error(StatusCode::FORBIDDEN, "invalid_signature");

    // Nothing changed in A.
    let metadata = app.call(Method::GET, &format!("/v1/files/{id}/metadata"), &alice, None).await;
    assert_eq!(metadata.status, StatusCode::OK, "{}", metadata.text);
    assert_eq!(metadata.body["sharing"], "public");
    assert_readable(&app, &alice, &id, b"tenant a").await;
    assert_eq!(fetch(&app, None, &url, None).await.bytes, b"tenant a");
    assert_eq!(usage(&app, &a.key).await, (8, 1));
    assert_eq!(usage(&app, &b.key).await, (8, 1));
}

#[tokio::test]
async fn e2e_uploads_are_opaque_octet_streams_that_round_trip() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    // Even bytes that look like a PNG are not sniffed or measured.
    let reply =
        upload_with(&app, &alice, &[("filename", "dot.png"), ("encryption", "e2e")], "image/png", PNG_1X1.to_vec())
            .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["mime"], "application/octet-stream");
    assert_eq!(reply.body["encryption"], "e2e");
    assert!(reply.body["width"].is_null() && reply.body["height"].is_null(), "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap();
    let got = download(&app, &alice, id).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes, PNG_1X1);
    assert_eq!(got.header("content-type"), "application/octet-stream");

    let ciphertext: Vec<u8> = (0..5000u32).map(|i| (splitmix64(u64::from(i)) & 0xff) as u8).collect();
    let reply =
        upload_with(&app, &alice, &[("filename", "msg.bin"), ("encryption", "e2e")], "text/html", ciphertext.clone())
            .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["mime"], "application/octet-stream");
    assert_eq!(reply.body["sha256"], sha256_hex(&ciphertext));
    let got = download(&app, &alice, reply.body["id"].as_str().unwrap()).await;
    assert_eq!(got.bytes, ciphertext);

    let bad =
        upload_with(&app, &alice, &[("filename", "x"), ("encryption", "rot13")], "text/plain", b"x".to_vec()).await;
    assert!(bad.status.is_client_error(), "{}", bad.text);
    assert_eq!(usage(&app, &tenant.key).await, (PNG_1X1.len() as i64 + 5000, 2));
}
