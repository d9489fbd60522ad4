//! End-to-end encryption: the device key directory, envelope v1 and its server-side checks,
//! the reference client and its test vectors. The server never sees plaintext or a secret key.

pub mod client;
pub mod devices;
pub mod envelope;
pub mod vectors;
pub mod verify;

#[cfg(test)]
mod tests;
