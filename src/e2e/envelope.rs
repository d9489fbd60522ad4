//! Envelope v1 lives with the other pure types in `domain::envelope`.
pub use crate::domain::envelope::*;
