//! Route repair: a route write or an offline mark that failed for good (store down, answers
//! lost) is sent again at the next repair round, every `ROUTE_REPAIR_INTERVAL_MS`, until it
//! gets through; when the store link comes back (it may have lost writes or restarted empty)
//! every local route is written again with its bind's version.
//!
//! Why: without it a store outage could leave a bound user without a route (pushes answered
//! offline) or a closed connection's route online (pushes sent nowhere).
use super::{Node, MAX_OFFLINE_MARKS_TO_REPAIR, ROUTE_REPAIR_INTERVAL_MS};
use crate::ids::ConnId;
use crate::store::StoreOp;
use crate::timer::Timer;

impl Node {
    /// Writes `conn`'s route again at the next repair round.
    pub(super) fn schedule_route_repair(&mut self, conn: ConnId) {
        self.routes_to_repair.insert(conn);
        self.arm_repair();
    }

    /// Sends an offline mark again at the next repair round. Marks are idempotent and name
    /// the binding they mean, so a late one never touches a newer route.
    pub(super) fn schedule_offline_mark_repair(&mut self, mark: StoreOp) {
        debug_assert!(matches!(
            mark,
            StoreOp::SetRouteOffline { .. } | StoreOp::RestoreRoute { .. }
        ));
        if self.offline_marks_to_repair.len() >= MAX_OFFLINE_MARKS_TO_REPAIR {
            self.offline_marks_to_repair.pop_front();
        }
        self.offline_marks_to_repair.push_back(mark);
        self.arm_repair();
    }

    pub(super) fn resend_offline_marks(&mut self) {
        for mark in std::mem::take(&mut self.offline_marks_to_repair) {
            self.store_write(mark);
        }
    }

    pub(super) fn arm_repair(&mut self) {
        if !self.repair_armed {
            self.repair_armed = true;
            self.timers
                .arm(self.now + ROUTE_REPAIR_INTERVAL_MS, Timer::RouteRepair);
        }
    }

    /// A repair round: sends the failed offline marks again, and writes the route of every
    /// connection that still holds the binding whose write failed (its current bind, which may
    /// be newer by now). What fails again comes back for the next round.
    pub(super) fn repair_routes(&mut self) {
        self.repair_armed = false;
        self.resend_offline_marks();
        let conns = std::mem::take(&mut self.routes_to_repair);
        for conn in conns {
            let Some((user_id, client_type, record)) = self.route_record(conn) else {
                continue;
            };
            if self.routes.get(&user_id, client_type) == Some(conn) {
                self.put_route(conn, user_id, client_type, record);
            }
        }
    }

    /// Writes every local route to the store again (after the store link came back). Each
    /// keeps its bind's version, so a route the store learned of a newer bind is not undone.
    pub(super) fn republish_routes(&mut self) {
        self.routes_to_repair.clear();
        self.resend_offline_marks();
        let conns: Vec<ConnId> = self.routes.iter().map(|(_, _, c)| c).collect();
        for conn in conns {
            if let Some((user_id, client_type, record)) = self.route_record(conn) {
                self.put_route(conn, user_id, client_type, record);
            }
        }
    }
}
