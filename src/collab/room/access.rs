//! Re-reading the connected clients' roles now and then. Access changes close the sockets they
//! concern through a notice to every node (`Rooms::revoke`); pub/sub may lose one, so no client
//! keeps a role it lost for longer than `collab.access_recheck_secs`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::domain::{SessionRole, UserId, Visibility};

use super::Room;

impl Room {
    /// Closes, to reconnect with what they may do now, the clients whose user was removed from
    /// the session or can no longer (or can now) edit; at most once per recheck period.
    pub(super) async fn recheck_access(&mut self) {
        let every = Duration::from_secs(self.state.settings.collab.access_recheck_secs);
        if self.clients.is_empty() || self.access_checked.elapsed() < every {
            return;
        }
        self.access_checked = Instant::now();
        let sessions = self.db.code_sessions();
        let session_id = &self.item.session_id;
        let (session, members) = match futures_util::try_join!(sessions.get(session_id), sessions.members(session_id)) {
            Ok(found) => found,
            Err(e) => return tracing::warn!(error = %e, "could not re-read the editors' roles"),
        };
        let roles: HashMap<&UserId, SessionRole> = members.iter().map(|m| (&m.user_id, m.role)).collect();
        // A session visible to the whole tenant lets everyone else read it.
        let others = session.is_some_and(|s| s.visibility == Visibility::Tenant).then_some(SessionRole::Viewer);
        let changed: HashSet<UserId> = self
            .clients
            .values()
            .filter(|c| {
                roles.get(&c.link.user).copied().or(others).is_none_or(|role| role.can_edit() != c.link.can_edit)
            })
            .map(|c| c.link.user.clone())
            .collect();
        for user in changed {
            self.close_clients(Some(&user), "access_changed").await;
        }
    }
}
