//! The API key format: `cfk_<env>_<id>_<secret><crc>`.
//!
//! `env` is 2-8 of `[a-z0-9]`, `id` the key's 16-character public id, `secret` 32 base62
//! characters from the OS-seeded CSPRNG and `crc` the CRC32 of everything before it, as 6
//! base62 characters. The checksum lets confab (and secret scanners) reject a mistyped or
//! made-up key without a database lookup. Only the SHA-256 of the whole key is stored.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::ApiKeyId;

const PREFIX: &str = "cfk_";
const SECRET_LEN: usize = 32;
const CRC_LEN: usize = 6;
pub(super) const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A freshly minted key. `full` is shown to the caller once and then forgotten.
pub struct GeneratedKey {
    pub id: ApiKeyId,
    pub full: String,
    pub prefix: String,
    pub hash: String,
}

/// A key that passed the format and checksum checks; it may still be unknown.
#[derive(Debug)]
pub struct ParsedKey {
    pub id: ApiKeyId,
    pub hash: String,
}

pub fn new_key_id() -> ApiKeyId {
    let id = random_string(ID_ALPHABET, ApiKeyId::LEN);
    ApiKeyId::parse(&id).expect("generated ids match the id rule")
}

/// Mints a key for `id` (a new id, or the existing id when rotating).
pub fn generate(env: &str, id: &ApiKeyId) -> GeneratedKey {
    let prefix = format!("{PREFIX}{env}_{id}");
    let body = format!("{prefix}_{}", random_string(BASE62, SECRET_LEN));
    let full = format!("{body}{}", checksum(&body));
    let hash = hash_key(&full);
    GeneratedKey { id: id.clone(), full, prefix, hash }
}

/// Checks shape and checksum; `None` for anything that cannot be a key we issued.
pub fn parse(raw: &str) -> Option<ParsedKey> {
    let rest = raw.strip_prefix(PREFIX)?;
    let (env, rest) = rest.split_once('_')?;
    let (id, tail) = rest.split_once('_')?;
    let env_ok = (2..=8).contains(&env.len()) && env.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !env_ok || tail.len() != SECRET_LEN + CRC_LEN || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let id = ApiKeyId::parse(id).ok()?;
    let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
    if checksum(body).as_bytes().ct_eq(crc.as_bytes()).into() {
        Some(ParsedKey { id, hash: hash_key(raw) })
    } else {
        None
    }
}

/// Constant-time comparison of two hex hashes.
pub fn hashes_match(stored: &str, presented: &str) -> bool {
    stored.as_bytes().ct_eq(presented.as_bytes()).into()
}

pub(super) fn hash_key(full: &str) -> String {
    hex::encode(Sha256::digest(full.as_bytes()))
}

fn checksum(body: &str) -> String {
    let mut n = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CRC_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ascii")
}

pub(super) fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_id_and_hash() {
        let key = generate("live", &new_key_id());
        assert!(key.full.starts_with(&format!("cfk_live_{}_", key.id)));
        let parsed = parse(&key.full).expect("valid key");
        assert_eq!(parsed.id, key.id);
        assert!(hashes_match(&key.hash, &parsed.hash));
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let key = generate("test", &new_key_id());
        let mut chars: Vec<char> = key.full.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        assert!(parse(&chars.into_iter().collect::<String>()).is_none());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in ["", "cfk_", "cfk_live_abc_def", "sk_live_x", "cfk_LIVE_0123456789abcdef_x", "Bearer"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
