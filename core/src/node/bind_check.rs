//! The bind check (MPush's `BindValidator` SPI, reference §9.4 step 3): with
//! [`NodeConfig::bind_check`] on, a BIND of a new user does not take effect at once. The node
//! hands the driver an [`Output::BindCheck`] (user, client type, device, tags, data), the
//! driver asks whoever decides (pushgate's runtime: an HTTP callback) and feeds the verdict back
//! as [`Input::BindVerdict`]. Allowed, the bind goes on as without a check; refused, the phone
//! gets MPush's `ERROR("bind failed")` and is closed. A check that gave no verdict (the checker
//! failed or timed out, or [`NodeConfig::max_bind_checks`] were already in flight) follows
//! [`NodeConfig::bind_check_fallback`].
//!
//! Why the care: a verdict arrives later, when the connection may have closed, sent another
//! BIND, unbound, or handshaken again as another device. A check belongs to its connection: a
//! close or an UNBIND cancels it (its verdict is then ignored), a different BIND replaces it, an
//! identical BIND (the Java SDK re-sends a bind after 3 s) waits for the same verdict, and a
//! verdict for another device than the one asked about is dropped.
//!
//! [`NodeConfig::bind_check`]: crate::NodeConfig::bind_check
//! [`NodeConfig::max_bind_checks`]: crate::NodeConfig::max_bind_checks
//! [`NodeConfig::bind_check_fallback`]: crate::NodeConfig::bind_check_fallback
//! [`Output::BindCheck`]: super::Output::BindCheck
//! [`Input::BindVerdict`]: super::Input::BindVerdict
use super::{Node, Output};
use crate::command::Command;
use crate::config::BindCheckFallback;
use crate::ids::ConnId;
use crate::message::{Bind, ErrorMessage};
use crate::route::ClientType;
use crate::{CloseReason, Event};

/// MPush's reason text for a bind its validator refused.
pub const BIND_FAILED: &str = "bind failed";

/// A bind waiting for its check: what the driver asks about. Answer with
/// [`super::Input::BindVerdict`] naming `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindCheck {
    pub id: u64,
    pub conn: ConnId,
    pub user_id: String,
    pub client_type: ClientType,
    pub device_id: String,
    /// The bind's tags string, as the phone sent it.
    pub tags: String,
    /// The bind's free data (MPush's validator gets it).
    pub data: String,
}

/// What the checker answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindVerdict {
    Allow,
    Refuse,
    /// No verdict: the checker failed or did not answer in time.
    Failed,
}

/// How a bind check ended, as reported in [`Event::BindChecked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindCheckOutcome {
    Allowed,
    Refused,
    /// The checker gave no verdict.
    Failed,
    /// Not asked: the node held its maximum of checks in flight.
    Busy,
}

impl BindCheckOutcome {
    /// The label of the checks metric: allowed, refused or error (failed and busy).
    pub fn label(self) -> &'static str {
        match self {
            BindCheckOutcome::Allowed => "allowed",
            BindCheckOutcome::Refused => "refused",
            BindCheckOutcome::Failed | BindCheckOutcome::Busy => "error",
        }
    }
}

/// A check in flight: the bind it holds back and the BIND's session id to answer.
#[derive(Debug, Clone)]
pub(super) struct PendingBindCheck {
    conn: ConnId,
    sid: i32,
    device_id: String,
    bind: Bind,
}

impl Node {
    /// Holds `bind` back and asks for its check (or, beyond the in-flight bound, applies the
    /// fallback at once).
    pub(super) fn ask_bind_check(&mut self, conn: ConnId, sid: i32, bind: Bind) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let device_id = session.facts.device_id().to_owned();
        let client_type = session.client_type;
        let pending = PendingBindCheck {
            conn,
            sid,
            device_id,
            bind,
        };
        if self.bind_checks.len() >= self.cfg.max_bind_checks {
            return self.conclude_bind_check(pending, BindCheckOutcome::Busy);
        }
        let id = self.next_bind_check;
        self.next_bind_check += 1;
        let check = BindCheck {
            id,
            conn,
            user_id: pending.bind.user_id.clone(),
            client_type,
            device_id: pending.device_id.clone(),
            tags: pending.bind.tags.clone(),
            data: pending.bind.data.clone(),
        };
        self.bind_checks.insert(id, pending);
        self.bind_check_of.insert(conn, id);
        self.outputs.push_back(Output::BindCheck(check));
    }

    /// A BIND arrived while `conn` has a check in flight: true when it is the same bind again
    /// (it waits for that check's verdict, which answers this BIND's session id); otherwise
    /// the older check is cancelled and false returned.
    pub(super) fn rebind_while_checking(&mut self, conn: ConnId, sid: i32, bind: &Bind) -> bool {
        let Some(id) = self.bind_check_of.get(&conn).copied() else {
            return false;
        };
        if let Some(pending) = self.bind_checks.get_mut(&id) {
            if pending.bind == *bind {
                pending.sid = sid;
                return true;
            }
        }
        self.cancel_bind_check(conn);
        false
    }

    /// Forgets `conn`'s check in flight, if any: its verdict will be ignored.
    pub(super) fn cancel_bind_check(&mut self, conn: ConnId) {
        if let Some(id) = self.bind_check_of.remove(&conn) {
            self.bind_checks.remove(&id);
        }
    }

    /// The verdict of check `id` arrived.
    pub(super) fn on_bind_verdict(&mut self, id: u64, verdict: BindVerdict) {
        let Some(pending) = self.bind_checks.remove(&id) else {
            return; // cancelled (closed, unbound, replaced) or answered twice
        };
        self.bind_check_of.remove(&pending.conn);
        let outcome = match verdict {
            BindVerdict::Allow => BindCheckOutcome::Allowed,
            BindVerdict::Refuse => BindCheckOutcome::Refused,
            BindVerdict::Failed => BindCheckOutcome::Failed,
        };
        self.conclude_bind_check(pending, outcome);
    }

    fn conclude_bind_check(&mut self, pending: PendingBindCheck, outcome: BindCheckOutcome) {
        let allowed = match outcome {
            BindCheckOutcome::Allowed => true,
            BindCheckOutcome::Refused => false,
            BindCheckOutcome::Failed | BindCheckOutcome::Busy => {
                self.cfg.bind_check_fallback == BindCheckFallback::Allow
            }
        };
        let PendingBindCheck {
            conn,
            sid,
            device_id,
            bind,
        } = pending;
        self.emit(Event::BindChecked {
            conn,
            user_id: bind.user_id.clone(),
            outcome,
            allowed,
        });
        let same_device = self
            .sessions
            .get(&conn)
            .is_some_and(|s| s.is_ready() && s.facts.device_id() == &*device_id);
        if !same_device {
            return; // handshaken again as another device since: that one must bind anew
        }
        if allowed {
            self.bind_now(conn, sid, bind);
        } else {
            let error = ErrorMessage::validation(Command::Bind, BIND_FAILED);
            self.send_raw(conn, Command::Error, sid, &error);
            self.teardown(conn, CloseReason::BadRequest);
        }
    }

    /// Checks in flight (for the invariants and tests).
    pub fn bind_checks_in_flight(&self) -> usize {
        self.bind_checks.len()
    }
}
