//! End-to-end encryption: the device key directory, envelope v1 and its server-side checks,
//! and the reference client. The server never sees plaintext or a secret key.

pub mod client;
pub mod envelope;
pub mod vectors;

#[cfg(test)]
mod tests;
