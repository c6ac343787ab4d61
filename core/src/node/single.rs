//! Single-user push tasks (seed: `SingleUserPushTask`; reference §13.1).
//!
//! A task runs its steps until it sends or finishes: deadline → local route → writability →
//! global flow control (go, or run again after the rest of the window) → send. No local route:
//! ask the store (with no client type: the user's best route, one online elsewhere first) —
//! missing or offline → offline; this node → offline; another node → router-change. A store
//! route naming this node that no local connection holds is stale and is marked offline, even
//! when its answer comes after the push ended. After the send: write failed →
//! failure; written → success (no ACK asked) or wait for the ACK → ack-success. The deadline
//! timer answers timeout for anything still open, so every task ends exactly once.
use super::{Event, Node, OutFrame, Seal, StorePurpose};
use crate::command::Command;
use crate::flow::FlowDecision;
use crate::ids::{ConnId, Millis, PushId, RequestId};
use crate::in_flight::{InFlight, Owner};
use crate::push::{Origin, SinglePush};
use crate::route::ClientType;
use crate::status::{self, Busy, PushStatus, Reason, TimeLine};
use crate::store::{RouteRecord, StoreError, StoreOp, StoreReply};
use crate::timer::Timer;

/// Where a single-user push is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SingleState {
    /// About to run (or waiting for its flow-control step).
    Ready,
    /// Asked the store for the user's route.
    WaitingRoute { request: RequestId },
    /// The PUSH went to `conn` with `session_id`; `written` once the driver confirmed it.
    Sent {
        conn: ConnId,
        session_id: i32,
        written: bool,
    },
}

/// One single-user push.
#[derive(Debug, Clone)]
pub struct SingleTask {
    pub id: PushId,
    pub origin: Origin,
    pub request: SinglePush,
    pub deadline_ms: Millis,
    pub timeline: TimeLine,
    pub state: SingleState,
    /// When the armed step timer is due (validates timer entries).
    pub step_at_ms: Option<Millis>,
    /// The client type of the connection or route the push went to (reported in the result,
    /// also when the request asked for any type).
    pub resolved_type: Option<ClientType>,
    /// The route another node holds the user on, when the store named one (router-change).
    pub moved_to: Option<Box<RouteRecord>>,
}

impl Node {
    pub(super) fn start_single(&mut self, origin: Origin, request: SinglePush) {
        if self.singles.len() >= self.cfg.max_pending_pushes {
            return self.refuse(
                origin,
                request.user_id,
                request.client_type,
                Reason::Busy(Busy::PendingPushes),
            );
        }
        let timeout_ms = match request.timeout_ms {
            0 => self.cfg.default_push_timeout_ms,
            t => t.min(self.cfg.max_push_timeout_ms),
        };
        let id = self.next_push_id();
        let deadline_ms = self.now + timeout_ms;
        let task = SingleTask {
            id,
            origin,
            request,
            deadline_ms,
            timeline: TimeLine::begin(self.epoch_ms()),
            state: SingleState::Ready,
            step_at_ms: None,
            resolved_type: None,
            moved_to: None,
        };
        self.trace(|| Event::PushAccepted {
            id,
            user_id: task.request.user_id.clone(),
            broadcast: false,
            timeout_ms,
        });
        self.singles.insert(id, task);
        self.timers.arm(deadline_ms, Timer::PushDeadline(id));
        self.run_single(id);
    }

    /// The user's local connection for this push, if any.
    fn local_route(&self, user_id: &str, client_type: Option<ClientType>) -> Option<ConnId> {
        match client_type {
            Some(ct) => self.routes.get(user_id, ct),
            None => self.routes.of_user(user_id).next().map(|(_, conn)| conn),
        }
    }

    pub(super) fn run_single(&mut self, id: PushId) {
        let now = self.now;
        let Some(task) = self.singles.get(&id) else {
            return;
        };
        debug_assert_eq!(task.state, SingleState::Ready);
        if now >= task.deadline_ms {
            return self.finish_single(id, PushStatus::Timeout, Some(Reason::PushTimeout));
        }
        let Some(conn) = self.local_route(&task.request.user_id, task.request.client_type) else {
            let op = StoreOp::GetRoute {
                user_id: task.request.user_id.clone(),
                client_type: task.request.client_type,
                asker: Some(self.cfg.node_addr.clone()),
            };
            let purpose = StorePurpose::PushRoute {
                push: id,
                user_id: task.request.user_id.clone(),
            };
            return match self.store(op, purpose) {
                Some(request) => {
                    if let Some(task) = self.singles.get_mut(&id) {
                        task.state = SingleState::WaitingRoute { request };
                    }
                }
                None => self.finish_single(id, PushStatus::Failure, Some(Reason::RouteStoreBusy)),
            };
        };
        let session = &self.sessions[&conn];
        if !session.writable {
            return self.finish_single(id, PushStatus::Failure, Some(Reason::NotWritable));
        }
        if !session.has_cipher() {
            // Only handshaken connections are bound, so a route always has a session cipher.
            debug_assert!(false, "route to {conn} without a session cipher");
            return self.finish_single(id, PushStatus::Failure, Some(Reason::NotReady));
        }
        match self.global_flow.check(now) {
            FlowDecision::Go => {}
            FlowDecision::RetryInMs(delay_ms) => {
                let at = now + delay_ms;
                if let Some(task) = self.singles.get_mut(&id) {
                    task.step_at_ms = Some(at);
                }
                self.timers.arm(at, Timer::PushStep(id));
                self.stats.flow_delays += 1;
                return self.emit(Event::FlowDelayed { id, delay_ms });
            }
            FlowDecision::Exhausted => {
                return self.finish_single(id, PushStatus::Failure, Some(Reason::FlowLimitReached))
            }
        }
        // Register before the frame can leave, so even the fastest ACK finds its entry.
        let session_id = self.in_flight.register(InFlight {
            conn,
            owner: Owner::Single(id),
        });
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.in_flight.push(session_id);
        }
        let epoch = self.epoch_ms();
        let client_type = self.sessions.get(&conn).map(|s| s.client_type);
        let task = self.singles.get_mut(&id).expect("checked above");
        task.resolved_type = client_type;
        task.timeline.add("before-send", epoch);
        task.state = SingleState::Sent {
            conn,
            session_id,
            written: false,
        };
        let frame = OutFrame::Packet {
            cmd: Command::Push.code(),
            flags: task.request.ack.flags(),
            session_id,
            body: task.request.content.clone(),
            seal: Seal::Session,
        };
        self.transmit(conn, frame, Some(session_id));
        self.trace(|| Event::PushSent {
            id,
            conn,
            session_id,
            broadcast: false,
        });
    }

    pub(super) fn on_push_route_reply(
        &mut self,
        id: PushId,
        user_id: &str,
        reply: Result<StoreReply, StoreError>,
    ) {
        // A stale route of this node is marked offline whatever the push makes of the answer
        // (answers that come after the push ended are checked too: `late_route_reads`).
        if let Ok(StoreReply::Route(Some((route_type, route)))) = &reply {
            self.clean_if_stale(user_id, *route_type, route);
        }
        let Some(task) = self.singles.get_mut(&id) else {
            return;
        };
        if !matches!(task.state, SingleState::WaitingRoute { .. }) {
            return;
        }
        task.state = SingleState::Ready;
        let client_type = task.request.client_type;
        if self.local_route(user_id, client_type).is_some() {
            // The user bound here while the store was asked: deliver locally.
            return self.run_single(id);
        }
        match reply {
            Ok(StoreReply::Route(Some((route_type, route)))) if route.is_online() => {
                if let Some(task) = self.singles.get_mut(&id) {
                    task.resolved_type = Some(route_type);
                }
                if route.is_on(&self.cfg.node_addr) {
                    // The store says "here" but no local connection exists: the route is stale
                    // (marked offline above).
                    self.finish_single(id, PushStatus::Offline, None);
                } else {
                    if let Some(task) = self.singles.get_mut(&id) {
                        task.moved_to = Some(Box::new(route));
                    }
                    self.finish_single(id, PushStatus::RouterChange, None);
                }
            }
            Ok(_) => self.finish_single(id, PushStatus::Offline, None),
            Err(error) => self.finish_single(
                id,
                PushStatus::Failure,
                Some(Reason::RouteLookupFailed(error.to_string())),
            ),
        }
    }

    /// Marks `route` offline when it is a stale route of this node: online, naming this node,
    /// and no local connection holds (user, type) with its connection id (the local table
    /// takes a bind before its route is written, so a live bind here is always in it).
    pub(super) fn clean_if_stale(
        &mut self,
        user_id: &str,
        client_type: ClientType,
        route: &RouteRecord,
    ) {
        let Some(conn_id) = route.conn_id.as_deref() else {
            return;
        };
        if !route.is_on(&self.cfg.node_addr) {
            return;
        }
        let held = self
            .routes
            .get(user_id, client_type)
            .and_then(|conn| self.sessions.get(&conn))
            .is_some_and(|session| session.conn_token.is(conn_id));
        if held {
            return;
        }
        self.mark_bind_offline(
            user_id.to_owned(),
            client_type,
            conn_id.to_owned(),
            route.version,
        );
    }

    pub(super) fn on_written(&mut self, conn: ConnId, session_id: i32, ok: bool) {
        let Some(entry) = self.in_flight.get(conn, session_id) else {
            return;
        };
        match entry.owner {
            Owner::Single(id) => {
                if !ok {
                    return self.finish_single(id, PushStatus::Failure, Some(Reason::WriteFailed));
                }
                let epoch = self.epoch_ms();
                let Some(task) = self.singles.get_mut(&id) else {
                    return;
                };
                if let SingleState::Sent { written, .. } = &mut task.state {
                    *written = true;
                }
                if task.request.ack.needs_ack() {
                    task.timeline.add("waiting-ack", epoch);
                } else {
                    self.finish_single(id, PushStatus::Success, None);
                }
            }
            Owner::Broadcast(id) => {
                self.in_flight.remove(session_id);
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.in_flight.retain(|s| *s != session_id);
                }
                self.on_broadcast_written(id, ok);
            }
        }
    }

    /// A PUSH in flight on a connection that just closed.
    pub(super) fn on_written_failed(&mut self, session_id: i32) {
        let Some(entry) = self.in_flight.remove(session_id) else {
            return;
        };
        match entry.owner {
            Owner::Single(id) => {
                self.finish_single(id, PushStatus::Failure, Some(Reason::ConnectionClosed))
            }
            Owner::Broadcast(id) => self.on_broadcast_written(id, false),
        }
    }

    pub(super) fn on_push_deadline(&mut self, id: PushId) {
        let Some(task) = self.singles.get(&id) else {
            return;
        };
        let reason = match task.state {
            SingleState::Sent { written: true, .. } if task.request.ack.needs_ack() => {
                Reason::AckTimeout
            }
            _ => Reason::PushTimeout,
        };
        self.finish_single(id, PushStatus::Timeout, Some(reason));
    }

    pub(super) fn on_push_step(&mut self, id: PushId, at: Millis) {
        if let Some(task) = self.singles.get_mut(&id) {
            if task.step_at_ms == Some(at) {
                task.step_at_ms = None;
                self.run_single(id);
            }
        } else if let Some(task) = self.broadcasts.get_mut(&id) {
            if task.step_at_ms == Some(at) {
                // The flow-control delay is over: the next batch takes its turn.
                task.step_at_ms = None;
                self.queue_broadcast(id);
            }
        }
    }

    /// Ends a single push with `status` (once: later calls for the same id do nothing).
    pub(super) fn finish_single(&mut self, id: PushId, status: PushStatus, reason: Option<Reason>) {
        let Some(mut task) = self.singles.remove(&id) else {
            return;
        };
        // Its timers go with it (the deadline is gone already when it is what fired).
        self.timers
            .cancel(task.deadline_ms, Timer::PushDeadline(id));
        if let Some(at) = task.step_at_ms {
            self.timers.cancel(at, Timer::PushStep(id));
        }
        if let SingleState::Sent {
            conn, session_id, ..
        } = task.state
        {
            self.in_flight.remove(session_id);
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.in_flight.retain(|s| *s != session_id);
            }
        }
        if let SingleState::WaitingRoute { request } = task.state {
            self.abandon_route_read(request);
        }
        task.timeline.add(status.end_point(), self.epoch_ms());
        self.report_single(
            id,
            task.origin,
            task.request.user_id,
            task.resolved_type.or(task.request.client_type),
            status,
            reason,
            task.timeline,
            task.moved_to,
        );
    }

    /// Counts a finished single push and tells whoever asked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report_single(
        &mut self,
        id: PushId,
        origin: Origin,
        user_id: String,
        client_type: Option<ClientType>,
        status: PushStatus,
        reason: Option<Reason>,
        timeline: TimeLine,
        moved_to: Option<Box<RouteRecord>>,
    ) {
        debug_assert!(moved_to.is_none() || status == PushStatus::RouterChange);
        self.stats.pushes_by_status[super::status_index(status)] += 1;
        let delivered = match origin {
            Origin::Gateway { gw, session_id } if self.gateways.contains(&gw) => {
                let packet = if status.is_success() {
                    status::success_reply(session_id, &user_id, client_type, &timeline)
                } else {
                    let data = status::result_json(&user_id, client_type, &timeline);
                    let text = reason.as_ref().map(Reason::to_string);
                    status::single_reply(session_id, status, text.as_deref(), data)
                };
                self.gateway_send(gw, packet);
                true
            }
            // The PushClient's connection is gone: the status can only be logged.
            Origin::Gateway { .. } => false,
            Origin::Local { .. } => true,
        };
        self.emit(Event::PushFinished {
            id,
            origin,
            user_id,
            client_type,
            status,
            reason,
            timeline,
            delivered,
            moved_to,
        });
    }
}
