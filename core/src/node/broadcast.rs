//! Broadcasts (seed: `BroadcastPushTask`; reference §13.3): walk the local routes in resumable
//! batches, send the content to every connection the filter accepts, under the broadcast's own
//! flow control, and answer the PushClient once the walk and all its writes are done.
//!
//! A broadcast also waits for its own writes: it sends its next batch only while fewer than a
//! batch of its sends wait for their write, and once it held back it resumes when half of
//! them are written ([`BroadcastTask::waiting_writes`]). So the connection tasks never hold
//! more than about one and a half batches of one broadcast's PUSHes, and a single push sent
//! meanwhile waits behind those, not behind a whole broadcast's worth of writes.
//!
//! A broadcast without a task id is limited per broadcast (default 3000/s, at most 100,000
//! sends). With a task id, the per-second limit and a cancel flag come from the store, which
//! also receives the progress (count sent and users reached) after every batch. Broadcasts
//! never ask for ACKs, as in MPush.
use super::{Event, Node, OutFrame, Seal, StorePurpose};
use crate::command::Command;
use crate::flow::{FlowControl, FlowDecision};
use crate::frame::Flags;
use crate::ids::{ConnId, Millis, PushId, RequestId};
use crate::in_flight::{InFlight, Owner};
use crate::push::{Broadcast, Candidate, Origin};
use crate::route::ClientType;
use crate::status::{self, Busy, PushStatus, Reason};
use crate::store::{StoreError, StoreOp, StoreReply};
use crate::timer::Timer;
use rustc_hash::FxHashSet;
use std::sync::Arc;

/// Most user ids reported to the store per progress update.
const MAX_PROGRESS_USERS: usize = 4096;

/// One broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastTask {
    pub id: PushId,
    pub origin: Origin,
    pub request: Broadcast,
    /// The last route visited.
    pub cursor: Option<(Arc<str>, ClientType)>,
    pub flow: FlowControl,
    /// Every route was visited (or the broadcast was stopped).
    pub iteration_done: bool,
    /// Sends whose write result is still awaited.
    pub pending_writes: u64,
    /// Held back with a batch's worth of writes awaited: resumes (queued for its turn) when
    /// half of them are written.
    pub waiting_writes: bool,
    /// Connections already sent to: a connection that re-binds under a user the walk has not
    /// reached yet must not get the broadcast twice. Bounded by the broadcast's total cap.
    pub reached: FxHashSet<ConnId>,
    pub sent: u64,
    pub delivered: u64,
    /// When its flow-control delay ends (a [`Timer::PushStep`] is armed then).
    pub step_at_ms: Option<Millis>,
    /// Its next batch waits for its turn in the node's ready queue.
    pub queued: bool,
    /// A task-control read in progress.
    pub waiting_control: Option<RequestId>,
    /// Users reached since the last progress update (task-id broadcasts).
    progress_users: Vec<String>,
    progress_sent: u64,
}

impl Node {
    pub(super) fn start_broadcast(&mut self, origin: Origin, request: Broadcast) {
        if self.broadcasts.len() >= self.cfg.max_broadcasts {
            let id = self.next_push_id();
            return self.reply_broadcast(id, origin, 0, Some(Reason::Busy(Busy::Broadcasts)));
        }
        let id = self.next_push_id();
        let flow = match request.task_id {
            Some(_) => FlowControl::new(
                self.cfg.task_flow_default_limit,
                1000,
                self.cfg.broadcast_flow_max_total,
            ),
            None => FlowControl::new(
                self.cfg.broadcast_flow_limit_per_window,
                self.cfg.flow_window_ms,
                self.cfg.broadcast_flow_max_total,
            ),
        };
        let task_id = request.task_id.clone();
        self.trace(|| Event::PushAccepted {
            id,
            user_id: String::new(),
            broadcast: true,
            timeout_ms: 0,
        });
        self.broadcasts.insert(
            id,
            BroadcastTask {
                id,
                origin,
                request,
                cursor: None,
                flow,
                iteration_done: false,
                pending_writes: 0,
                waiting_writes: false,
                reached: FxHashSet::default(),
                sent: 0,
                delivered: 0,
                step_at_ms: None,
                queued: false,
                waiting_control: None,
                progress_users: Vec::new(),
                progress_sent: 0,
            },
        );
        match task_id {
            Some(task_id) => self.read_task_control(id, task_id),
            None => self.run_broadcast(id),
        }
    }

    fn read_task_control(&mut self, id: PushId, task_id: String) {
        match self.store(
            StoreOp::GetTaskControl { task_id },
            StorePurpose::TaskControl { push: id },
        ) {
            Some(request) => {
                if let Some(task) = self.broadcasts.get_mut(&id) {
                    task.waiting_control = Some(request);
                }
            }
            // No answer possible: go on with the limit in force.
            None => {
                if self
                    .broadcasts
                    .get(&id)
                    .is_some_and(|t| t.step_at_ms.is_none())
                {
                    self.run_broadcast(id);
                }
            }
        }
    }

    pub(super) fn on_task_control_reply(
        &mut self,
        id: PushId,
        reply: Result<StoreReply, StoreError>,
    ) {
        let Some(task) = self.broadcasts.get_mut(&id) else {
            return;
        };
        task.waiting_control = None;
        match reply {
            Ok(StoreReply::TaskControl(control)) => {
                if control.cancelled {
                    task.iteration_done = true;
                    return self.maybe_finish_broadcast(id);
                }
                if let Some(qps) = control.qps {
                    task.flow.set_limit(qps);
                }
            }
            Ok(_) => {}
            Err(error) => self.emit(Event::StoreFailed {
                op: "get-task-control",
                error,
            }),
        }
        if self
            .broadcasts
            .get(&id)
            .is_some_and(|t| t.step_at_ms.is_none() && !t.iteration_done)
        {
            self.run_broadcast(id);
        }
    }

    /// Puts a broadcast's next batch in the ready queue (once).
    pub(super) fn queue_broadcast(&mut self, id: PushId) {
        let Some(task) = self.broadcasts.get_mut(&id) else {
            return;
        };
        debug_assert!(task.step_at_ms.is_none(), "queued while flow-delayed");
        if !task.queued {
            task.queued = true;
            self.broadcasts_ready.push_back(id);
        }
    }

    /// Runs one batch of the walk (at most `broadcast_batch_size` routes visited), then yields:
    /// the next batch takes its turn in the ready queue (one batch per
    /// [`Node::handle_timeout`]), or waits for its flow-control delay.
    pub(super) fn run_broadcast(&mut self, id: PushId) {
        let now = self.now;
        let batch_size = self.cfg.broadcast_batch_size.max(1);
        let tag_match = self.cfg.tag_match;
        let Some(task) = self.broadcasts.get_mut(&id) else {
            return;
        };
        if task.iteration_done || task.waiting_control.is_some() || task.step_at_ms.is_some() {
            return; // finished, or waiting for the store or for its flow-control step
        }
        let cursor = task.cursor.as_ref().map(|(u, ct)| (&**u, *ct));
        let batch = self.routes.batch_after(cursor, batch_size);
        if batch.is_empty() {
            task.iteration_done = true;
        } else if task.pending_writes >= batch_size as u64 {
            // A batch's worth of its writes still awaited: on_broadcast_written resumes it.
            task.waiting_writes = true;
            return;
        }
        // Fewer routes than a batch: this batch walks to the end of the table.
        let walks_to_end = batch.len() < batch_size;
        let mut delay_ms = None;
        for entry in batch {
            let session = &self.sessions[&entry.conn];
            let candidate = Candidate {
                user_id: &entry.user_id,
                client_type: entry.client_type,
                tags: session.bound.as_ref().map_or("", |b| &*b.tags),
                client_version: session.facts.client_version(),
                os_name: session.facts.os_name(),
                os_version: session.facts.os_version(),
            };
            let wanted = !task.reached.contains(&entry.conn)
                && task.request.filter.matches(&candidate, tag_match)
                && session.writable;
            // Only Ready connections are bound, so each has its session cipher.
            debug_assert!(session.has_cipher() || !wanted);
            if !wanted {
                task.cursor = Some((entry.user_id, entry.client_type));
                continue;
            }
            match task.flow.check(now) {
                FlowDecision::Go => {}
                FlowDecision::RetryInMs(ms) => {
                    delay_ms = Some(ms);
                    break;
                }
                FlowDecision::Exhausted => {
                    task.iteration_done = true;
                    break;
                }
            }
            let session_id = self.in_flight.register(InFlight {
                conn: entry.conn,
                owner: Owner::Broadcast(id),
            });
            if let Some(session) = self.sessions.get_mut(&entry.conn) {
                session.in_flight.push(session_id);
            }
            task.reached.insert(entry.conn);
            task.pending_writes += 1;
            task.sent += 1;
            task.progress_sent += 1;
            if task.request.task_id.is_some() && task.progress_users.len() < MAX_PROGRESS_USERS {
                task.progress_users.push(entry.user_id.to_string());
            }
            let frame = OutFrame::Packet {
                cmd: Command::Push.code(),
                flags: Flags::NONE,
                session_id,
                body: task.request.content.clone(),
                seal: Seal::Session,
            };
            self.outputs.push_back(super::Output::Transmit {
                conn: entry.conn,
                frame,
                report_write: Some(session_id),
                bulk: true,
            });
            if self.cfg.trace_events {
                self.outputs
                    .push_back(super::Output::Event(Event::PushSent {
                        id,
                        conn: entry.conn,
                        session_id,
                        broadcast: true,
                    }));
            }
            task.cursor = Some((entry.user_id, entry.client_type));
        }
        if walks_to_end && delay_ms.is_none() {
            // Every route was visited: the broadcast is done once its writes are, without
            // another turn to find the table's end.
            task.iteration_done = true;
        }
        self.stats.broadcast_deliveries += task.progress_sent;
        let progress = task
            .request
            .task_id
            .clone()
            .filter(|_| task.progress_sent > 0)
            .map(|task_id| StoreOp::AddTaskProgress {
                task_id,
                sent: std::mem::take(&mut task.progress_sent),
                user_ids: std::mem::take(&mut task.progress_users),
            });
        task.progress_sent = 0;
        let done = task.iteration_done;
        let task_id = task.request.task_id.clone();
        if let Some(op) = progress {
            self.store_write(op);
        }
        if done {
            return self.maybe_finish_broadcast(id);
        }
        let Some(delay_ms) = delay_ms else {
            return self.queue_broadcast(id);
        };
        let at = now + delay_ms;
        if let Some(task) = self.broadcasts.get_mut(&id) {
            debug_assert!(task.step_at_ms.is_none(), "one flow-control step at a time");
            task.step_at_ms = Some(at);
        }
        self.timers.arm(at, Timer::PushStep(id));
        self.stats.flow_delays += 1;
        self.emit(Event::FlowDelayed { id, delay_ms });
        if let Some(task_id) = task_id {
            // Over the limit: re-read the task's limit and cancel flag (MPush's Redis flow control).
            self.read_task_control(id, task_id);
        }
    }

    pub(super) fn on_broadcast_written(&mut self, id: PushId, ok: bool) {
        let Some(task) = self.broadcasts.get_mut(&id) else {
            return;
        };
        debug_assert!(task.pending_writes > 0);
        task.pending_writes = task.pending_writes.saturating_sub(1);
        if ok {
            task.delivered += 1;
        }
        let batch_size = self.cfg.broadcast_batch_size.max(1) as u64;
        if task.waiting_writes && task.pending_writes <= batch_size / 2 {
            task.waiting_writes = false;
            if task.step_at_ms.is_none() {
                return self.queue_broadcast(id);
            }
        }
        self.maybe_finish_broadcast(id);
    }

    fn maybe_finish_broadcast(&mut self, id: PushId) {
        if self
            .broadcasts
            .get(&id)
            .is_some_and(|t| t.iteration_done && t.pending_writes == 0)
        {
            self.finish_broadcast(id, None);
        }
    }

    /// Ends a broadcast: OK to the PushClient, or a failure with `failure_reason`.
    pub(super) fn finish_broadcast(&mut self, id: PushId, failure_reason: Option<Reason>) {
        let Some(task) = self.broadcasts.remove(&id) else {
            return;
        };
        // Its timers and its turn go with it.
        if let Some(at) = task.step_at_ms {
            self.timers.cancel(at, Timer::PushStep(id));
        }
        if task.queued {
            // At most `max_broadcasts` entries.
            self.broadcasts_ready.retain(|queued| *queued != id);
        }
        if let Some(request) = task.waiting_control {
            self.forget_store_request(request);
        }
        self.reply_broadcast(id, task.origin, task.sent, failure_reason);
    }

    fn reply_broadcast(
        &mut self,
        id: PushId,
        origin: Origin,
        sent: u64,
        failure_reason: Option<Reason>,
    ) {
        let status = if failure_reason.is_some() {
            PushStatus::Failure
        } else {
            PushStatus::Success
        };
        self.stats.broadcasts_by_status[super::status_index(status)] += 1;
        let delivered = match origin {
            Origin::Gateway { gw, session_id } if self.gateways.contains(&gw) => {
                self.gateway_send(
                    gw,
                    status::broadcast_reply(
                        session_id,
                        failure_reason.as_ref().map(Reason::to_string).as_deref(),
                    ),
                );
                true
            }
            Origin::Gateway { .. } => false,
            Origin::Local { .. } => true,
        };
        self.emit(Event::BroadcastFinished {
            id,
            origin,
            sent,
            status,
            reason: failure_reason,
            delivered,
        });
    }
}
