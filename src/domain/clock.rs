//! The current time as confab stores it.

use chrono::{DateTime, SubsecRound, Utc};

/// Now, cut to milliseconds: MongoDB keeps milliseconds, so a value returned when something is
/// created equals the value every later read returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
