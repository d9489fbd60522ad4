use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::client::{DeviceKeys, OpenError, RecipientKey, open, seal};
use super::envelope::{Context, Envelope};

fn context() -> Context {
    Context {
        tenant_id: "acme".into(),
        conversation_id: "c1".into(),
        message_id: "m1".into(),
        sender_user_id: "alice".into(),
        sender_device_id: "a1".into(),
    }
}

fn devices(n: usize, rng: &mut ChaCha20Rng) -> Vec<(String, DeviceKeys)> {
    (0..n).map(|i| (format!("user{i}"), DeviceKeys::generate(&format!("d{i}"), "k1", rng))).collect()
}

fn keys_of(devices: &[(String, DeviceKeys)]) -> Vec<RecipientKey> {
    devices
        .iter()
        .map(|(user, d)| RecipientKey {
            user_id: user.clone(),
            device_id: d.device_id.clone(),
            key_id: d.key_id.clone(),
            public_key: d.x25519_public(),
        })
        .collect()
}

#[test]
fn every_recipient_opens_for_1_to_50_devices() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let sender = DeviceKeys::generate("a1", "k1", &mut rng);
    for n in [1, 2, 7, 50] {
        let recipients = devices(n, &mut rng);
        let envelope = seal(&context(), &sender, b"secret plans", &keys_of(&recipients), &mut rng);
        for (user, device) in &recipients {
            let opened = open(&envelope, &context(), &sender.identity_public(), user, device).unwrap();
            assert_eq!(opened, b"secret plans");
        }
    }
}

#[test]
fn tampering_with_any_field_or_the_context_fails() {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let sender = DeviceKeys::generate("a1", "k1", &mut rng);
    let recipients = devices(2, &mut rng);
    let envelope = seal(&context(), &sender, b"hi", &keys_of(&recipients), &mut rng);
    let (user, me) = (&recipients[0].0, &recipients[0].1);
    let flip = |s: &str| {
        let mut b = super::envelope::unb64(s).unwrap();
        b[0] ^= 1;
        super::envelope::b64(&b)
    };
    type Tamper<'a> = Box<dyn Fn(&mut Envelope) + 'a>;
    let tampered: Vec<Tamper<'_>> = vec![
        Box::new(|e| e.nonce = flip(&e.nonce)),
        Box::new(|e| e.ciphertext = flip(&e.ciphertext)),
        Box::new(|e| e.commitment = flip(&e.commitment)),
        Box::new(|e| e.signature = flip(&e.signature)),
        Box::new(|e| e.recipients[0].enc = flip(&e.recipients[0].enc)),
        Box::new(|e| e.recipients[0].wrapped_key = flip(&e.recipients[0].wrapped_key)),
        Box::new(|e| e.recipients[1].key_id = "k2".into()),
        Box::new(|e| e.recipients.pop().map(|_| ()).unwrap_or(())),
        Box::new(|e| e.suite = "other".into()),
    ];
    for (i, tamper) in tampered.iter().enumerate() {
        let mut copy = envelope.clone();
        tamper(&mut copy);
        assert!(open(&copy, &context(), &sender.identity_public(), user, me).is_err(), "tampering {i} went unnoticed");
    }
    for change in [
        |c: &mut Context| c.tenant_id = "other".into(),
        |c: &mut Context| c.conversation_id = "c2".into(),
        |c: &mut Context| c.message_id = "m2".into(),
        |c: &mut Context| c.sender_user_id = "mallory".into(),
    ] {
        let mut other = context();
        change(&mut other);
        assert_eq!(open(&envelope, &other, &sender.identity_public(), user, me), Err(OpenError::BadSignature));
    }
}

#[test]
fn a_wrong_commitment_fails_even_when_re_signed() {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let sender = DeviceKeys::generate("a1", "k1", &mut rng);
    let recipients = devices(1, &mut rng);
    let mut envelope = seal(&context(), &sender, b"hi", &keys_of(&recipients), &mut rng);
    envelope.commitment = super::envelope::b64(&[0u8; 32]);
    use ed25519_dalek::Signer;
    envelope.signature = super::envelope::b64(&sender.identity.sign(&envelope.signing_bytes(&context())).to_bytes());
    let (user, me) = (&recipients[0].0, &recipients[0].1);
    assert_eq!(open(&envelope, &context(), &sender.identity_public(), user, me), Err(OpenError::BadCommitment));
}

/// `tests/vectors/e2e-v1.json` must equal what the reference client produces. Regenerate with
/// `CONFAB_WRITE_VECTORS=1 cargo test --lib e2e::`.
#[test]
fn committed_vectors_match_the_reference_client() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/e2e-v1.json");
    let generated = super::vectors::vectors_json();
    if std::env::var_os("CONFAB_WRITE_VECTORS").is_some() {
        std::fs::write(path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(path).expect("tests/vectors/e2e-v1.json exists");
    assert_eq!(
        committed.trim_end(),
        generated.trim_end(),
        "vectors are stale: CONFAB_WRITE_VECTORS=1 cargo test --lib e2e::"
    );
}
