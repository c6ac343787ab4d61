//! Phone connections without a tokio task each: a few groups, each one task that polls its
//! phones' machines ([`PhoneTask`], the same future the task-per-phone path spawns) from a
//! slot table and learns which sockets are ready from an epoll set of its own.
//!
//! Why: an idle phone is all a push server holds most of the time, and per phone tokio costs a
//! task (256 bytes: header and trailer in 128-byte lines around the phone's future) and a
//! reactor registration (256 bytes: a cache-padded `ScheduledIo` behind an `Arc`). Here a phone
//! is a slot of its group (the future inline, about 150 bytes, in chunks) and a 32-byte waker
//! ([`SlotWake`]); its socket is a plain file descriptor in the group's epoll set, and that
//! epoll set is the only thing the group registers with tokio. What runs per phone is
//! unchanged: the same `PhoneTask` reads, decrypts, seals and writes, on whichever core the
//! group's task runs.
//!
//! How a phone is polled:
//! - when its socket has an event the phone waits for: the group marks the socket readable or
//!   writable ([`GroupStream::note`]) and polls the phone (writing is watched only while a
//!   write waits for room, [`GroupStream::wanted_interest`]);
//! - when its waker is woken (the node queued something for it, its timer fired, the node's
//!   queue has room for its message): the waker puts its slot on the group's ready list once
//!   ([`SlotWake`]) and wakes the group. A wake-up for a broadcast's frame goes on a list of
//!   its own, the bulk lane ([`crate::bulk_wake`]).
//!
//! Bounds and fairness: one turn of a group polls at most [`MAX_POLLS_PER_TURN`] phones, then
//! yields (a broadcast that wakes 10,000 phones of a group does not hold a worker thread for the
//! whole fan-out). Socket events get the first half of a turn (a write waiting for room, a
//! phone's bytes), new phones at most a quarter, woken phones the rest, those woken for a
//! broadcast last (a single push is not queued behind every phone a broadcast woke) but with
//! at least a quarter of the turn when they wait (a stream of single pushes does not starve a
//! broadcast); a poll reads at most [`stream::MAX_READS_PER_POLL`] times (a peer sending
//! without pause does not hold the group). Phones woken and not yet polled wait in arrival order, and one woken again meanwhile
//! is polled once for all of it (its frames written together). An idle group's lists give back
//! a burst's capacity (`pushgate_core::spare`). A phone whose poll panics is dropped alone. A group ends when the accept side is gone
//! ([`PhoneGroups`] dropped) and its last phone has closed.
//!
//! Outside the simulator only (its sockets have no file descriptors): the simulator, and the
//! TLS connection port, run a task per phone (`net.phone_io = "tasks"` selects that here too).
mod slots;
mod stream;

pub use slots::Slots;
pub use stream::GroupStream;

use crate::conn::PhoneTask;
use crate::limits::AddressSlot;
use crate::server::LiveGuard;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Most phones one turn of a group polls before it yields. Below the node's broadcast batch
/// (`flow.broadcast_batch_routes`, 256) on purpose: when the node hands out frames faster than
/// the group writes them, the phones still waiting collect more frames, and each is written
/// with the rest in one `sendto` (fan-out to 10,000 phones with 8 broadcasts in flight, one
/// server core: 0.26–0.33 `sendto` per delivery at 64 phones a turn, 0.9 at 256, which halved
/// the deliveries per second).
pub const MAX_POLLS_PER_TURN: usize = 64;
/// Socket events taken from the epoll set at once.
const EVENTS_PER_WAIT: usize = 128;

/// A phone as the accept loop hands it to a group: its machine and socket, and its slot in the
/// per-address connection limit (held for as long as the phone is).
pub struct GroupPhone {
    pub task: PhoneTask<GroupStream>,
    pub door: AddressSlot,
}

/// The accept side's handle on the groups: hands each new phone to one of them.
pub struct PhoneGroups {
    groups: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

impl PhoneGroups {
    /// Starts `count` groups (at least one), each a task on the current runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut groups = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let shared = Arc::new(Shared::default());
            let group = Group {
                epoll: watch_epoll(mio::Poll::new()?)?,
                events: mio::Events::with_capacity(EVENTS_PER_WAIT),
                shared: shared.clone(),
                slots: Slots::default(),
                incoming: VecDeque::new(),
                woken: VecDeque::new(),
                bulk: VecDeque::new(),
                fired: VecDeque::with_capacity(EVENTS_PER_WAIT),
                put_off: false,
                turn_was_full: false,
            };
            tokio::spawn(group);
            groups.push(shared);
        }
        Ok(Self {
            groups,
            next: AtomicUsize::new(0),
        })
    }

    /// Phone polls of every group so far.
    pub fn phones_polled(&self) -> u64 {
        self.groups
            .iter()
            .map(|shared| shared.polls.load(Ordering::Relaxed))
            .sum()
    }

    /// Hands `phone` to the next group (round robin); `live` counts it until it closes.
    pub(crate) fn add(&self, phone: GroupPhone, live: LiveGuard) {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut phone = Some((phone, live));
        for n in 0..self.groups.len() {
            let shared = &self.groups[(first + n) % self.groups.len()];
            let waiter = {
                let mut state = shared.lock();
                if state.ended {
                    continue;
                }
                state.incoming.extend(phone.take());
                state.waiter.take()
            };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
            return;
        }
        // Dropped: the socket closes and the node hears it (`PhoneTask`'s drop).
        tracing::warn!("every phone group ended; closing a new connection");
    }
}

impl Drop for PhoneGroups {
    /// The accept side is gone: each group ends once its phones have closed.
    fn drop(&mut self) {
        for shared in &self.groups {
            let waiter = {
                let mut state = shared.lock();
                state.closed = true;
                state.waiter.take()
            };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        }
    }
}

/// Registers a group's epoll set with tokio's reactor, which wakes the group when the set has
/// events.
fn watch_epoll(poll: mio::Poll) -> std::io::Result<AsyncFd<mio::Poll>> {
    // SAFETY: `mio::Poll` owns its epoll file descriptor, keeps it open until dropped and
    // returns that same descriptor from every `as_raw_fd` call; the `AsyncFd` owns the `Poll`.
    let registered =
        unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
    registered.map_err(std::io::Error::from)
}

/// What a group shares with the accept side and its phones' wakers.
#[derive(Default)]
struct Shared {
    state: Mutex<SharedState>,
    /// Phone polls so far ([`PhoneGroups::phones_polled`]: what the turn bound's test watches).
    polls: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct SharedState {
    /// Phones handed over and not yet in a slot.
    incoming: Vec<(GroupPhone, LiveGuard)>,
    /// Slots woken since the group last looked (each at most once: [`SlotWake::queued`]).
    ready: Vec<u32>,
    /// Slots woken for a broadcast's frame since the group last looked (each at most once:
    /// [`SlotWake::bulk_queued`]).
    bulk_ready: Vec<u32>,
    /// The group's task, when it waits.
    waiter: Option<Waker>,
    /// The accept side is gone.
    closed: bool,
    /// The group's task ended (its epoll set failed): it takes no more phones.
    ended: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        // Nothing panics while holding it; a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A phone's waker: puts its slot on the group's ready list, or on its bulk list for a
/// broadcast's frame ([`crate::bulk_wake`]), once each until the group polls it from there,
/// and wakes the group. A waker that outlives its phone may wake the slot's next phone: a
/// spurious poll, which every future takes.
struct SlotWake {
    shared: Arc<Shared>,
    slot: u32,
    /// On the ready list, not yet polled.
    queued: AtomicBool,
    /// On the bulk list, not yet polled from it.
    bulk_queued: AtomicBool,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let bulk = crate::bulk_wake::is_bulk_wake();
        let queued = if bulk {
            &self.bulk_queued
        } else {
            &self.queued
        };
        if queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiter = {
            let mut state = self.shared.lock();
            if bulk {
                state.bulk_ready.push(self.slot);
            } else {
                state.ready.push(self.slot);
            }
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

/// One phone of a group.
struct Slot {
    task: PhoneTask<GroupStream>,
    wake: Arc<SlotWake>,
    _door: AddressSlot,
    _live: LiveGuard,
}

/// A group's task.
struct Group {
    shared: Arc<Shared>,
    epoll: AsyncFd<mio::Poll>,
    events: mio::Events,
    slots: Slots<Slot>,
    /// Phones handed over and not yet in a slot, in the order they came.
    incoming: VecDeque<(GroupPhone, LiveGuard)>,
    /// Slots woken and not yet polled, in the order they were woken.
    woken: VecDeque<u32>,
    /// Slots woken for a broadcast's frame and not yet polled from here, in that order.
    bulk: VecDeque<u32>,
    /// Socket events of the last wait not yet handled: slot, readable, writable.
    fired: VecDeque<(u32, bool, bool)>,
    /// This wake-up was put off once already ([`Group::poll`]).
    put_off: bool,
    /// The last turn stopped at its bound (and yielded).
    turn_was_full: bool,
}

impl Future for Group {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Woken, the group first lets the tasks already waiting run (the node finishing its
        // turn): a phone that several pushes in a row woke then writes them in one go, not
        // one write each (with the turn's bound, 0.26 instead of 0.33 `sendto` per delivery in
        // the fan-out above; the wait is one pass of the runtime's scheduler).
        // (A turn that stopped at its bound has yielded already.)
        this.put_off = !this.put_off && !this.turn_was_full;
        this.turn_was_full = false;
        if this.put_off {
            yield_turn(cx);
            return Poll::Pending;
        }
        let mut polls = 0;
        loop {
            let closed = this.take_shared(cx);
            let mut worked = false;
            // Socket events first, at most half a turn: a write waiting for room or a phone's
            // bytes are not held behind a fan-out's woken phones or a storm's new ones.
            if this.fired.is_empty() {
                if let Err(error) = this.wait_events(cx) {
                    tracing::error!(%error, "phone group: epoll failed; closing its phones");
                    return Poll::Ready(());
                }
            }
            worked |= this.poll_fired(&mut polls, MAX_POLLS_PER_TURN / 2);
            // Then new phones (at most a quarter) and woken ones, then events again with what
            // is left of the turn.
            while polls < MAX_POLLS_PER_TURN * 3 / 4 {
                let Some((phone, live)) = this.incoming.pop_front() else {
                    break;
                };
                this.admit(phone, live);
                (worked, polls) = (true, polls + 1);
            }
            // Woken phones, those woken for a broadcast last, with a share kept for them.
            let bulk_share = if this.bulk.is_empty() {
                0
            } else {
                MAX_POLLS_PER_TURN / 4
            };
            worked |= this.poll_woken(&mut polls, MAX_POLLS_PER_TURN - bulk_share);
            while polls < MAX_POLLS_PER_TURN {
                let Some(slot) = this.bulk.pop_front() else {
                    break;
                };
                if let Some(held) = this.slots.get_mut(slot) {
                    held.wake.bulk_queued.store(false, Ordering::Release);
                }
                this.poll_slot(slot);
                (worked, polls) = (true, polls + 1);
            }
            worked |= this.poll_woken(&mut polls, MAX_POLLS_PER_TURN);
            worked |= this.poll_fired(&mut polls, MAX_POLLS_PER_TURN);
            if polls >= MAX_POLLS_PER_TURN {
                this.shared.polls.fetch_add(polls as u64, Ordering::Relaxed);
                crate::metrics::phone_group_turn_full();
                this.turn_was_full = true;
                yield_turn(cx);
                return Poll::Pending;
            }
            if !worked {
                this.shared.polls.fetch_add(polls as u64, Ordering::Relaxed);
                this.shrink_spare();
                if closed && this.slots.is_empty() && this.incoming.is_empty() {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Group {
    /// However the group ends, phones handed to it later are not left waiting.
    fn drop(&mut self) {
        let incoming = {
            let mut state = self.shared.lock();
            state.ended = true;
            std::mem::take(&mut state.incoming)
        };
        drop(incoming);
    }
}

/// Ends a turn as `tokio::task::yield_now` does: the group is woken again after the tasks
/// already waiting have run (a plain self-wake could be run again at once, from the worker's
/// next-task slot).
fn yield_turn(cx: &mut Context<'_>) {
    // Its first poll defers the waker and is pending.
    let yielded = std::pin::pin!(tokio::task::yield_now()).poll(cx);
    debug_assert!(yielded.is_pending());
}

impl Group {
    /// Polls woken phones (not those of the bulk lane) while `polls` is under `limit`; whether
    /// any was polled.
    fn poll_woken(&mut self, polls: &mut usize, limit: usize) -> bool {
        let mut polled = false;
        while *polls < limit {
            let Some(slot) = self.woken.pop_front() else {
                break;
            };
            self.poll_slot(slot);
            (polled, *polls) = (true, *polls + 1);
        }
        polled
    }

    /// Polls the phones of the socket events taken (those for which the event is news) while
    /// `polls` is under `limit`; whether any event was handled.
    fn poll_fired(&mut self, polls: &mut usize, limit: usize) -> bool {
        let mut handled = false;
        while *polls < limit {
            let Some((slot, readable, writable)) = self.fired.pop_front() else {
                break;
            };
            handled = true;
            let news = self.slots.get_mut(slot).is_some_and(|held| {
                let stream = held.task.stream_mut();
                stream.note(readable, writable)
            });
            if news {
                self.poll_slot(slot);
                *polls += 1;
            }
        }
        handled
    }

    /// Takes what was handed over and woken, and registers the group's waker for what comes
    /// next (in the same lock: nothing falls between); whether the accept side is gone.
    fn take_shared(&mut self, cx: &mut Context<'_>) -> bool {
        let mut state = self.shared.lock();
        self.woken.extend(state.ready.drain(..));
        self.bulk.extend(state.bulk_ready.drain(..));
        self.incoming.extend(state.incoming.drain(..));
        if !state
            .waiter
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waiter = Some(cx.waker().clone());
        }
        state.closed
    }

    /// Puts a new phone in a slot and its socket in the epoll set, and polls it once.
    fn admit(&mut self, phone: GroupPhone, live: LiveGuard) {
        let Some(slot) = self.slots.next_slot() else {
            tracing::warn!("phone group: no slot numbers left; closing the connection");
            return;
        };
        let mut task = phone.task;
        let registered = self.epoll.get_ref().registry().register(
            task.stream_mut().socket_mut(),
            mio::Token(slot as usize),
            GroupStream::FIRST_INTEREST,
        );
        if let Err(error) = registered {
            tracing::warn!(%error, "phone group: cannot watch the socket; closing the connection");
            return;
        }
        let wake = Arc::new(SlotWake {
            shared: self.shared.clone(),
            slot,
            queued: AtomicBool::new(false),
            bulk_queued: AtomicBool::new(false),
        });
        let held = self.slots.insert(Slot {
            task,
            wake,
            _door: phone.door,
            _live: live,
        });
        debug_assert_eq!(held, Some(slot));
        self.poll_slot(slot);
    }

    /// Polls the phone in `slot` (nothing when the slot is empty); a phone that finished is
    /// taken out of the epoll set and dropped, which closes its socket.
    fn poll_slot(&mut self, slot: u32) {
        let Some(held) = self.slots.get_mut(slot) else {
            return;
        };
        held.wake.queued.store(false, Ordering::Release);
        held.task.stream_mut().start_poll();
        let waker = Waker::from(held.wake.clone());
        let mut cx = Context::from_waker(&waker);
        // A phone whose poll panics is dropped alone, as tokio drops a task that panicked: its
        // group and the group's other phones go on.
        let task = &mut held.task;
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Pin::new(task).poll(&mut cx)
        }));
        let polled = polled.unwrap_or_else(|_| {
            tracing::error!(slot, "phone group: a phone's poll panicked; closing it");
            Poll::Ready(())
        });
        if polled.is_pending() {
            let stream = held.task.stream_mut();
            if let Some(interest) = stream.wanted_interest() {
                let registry = self.epoll.get_ref().registry();
                let token = mio::Token(slot as usize);
                if let Err(error) = registry.reregister(stream.socket_mut(), token, interest) {
                    // Without the event its write would wait for forever: close it.
                    tracing::warn!(%error, "phone group: cannot watch the socket; closing it");
                    let _ = stream.socket_mut().shutdown(std::net::Shutdown::Both);
                    stream.note(true, true);
                    held.wake.wake_by_ref();
                }
            }
            return;
        }
        if let Some(mut done) = self.slots.remove(slot) {
            let registry = self.epoll.get_ref().registry();
            let _ = registry.deregister(done.task.stream_mut().socket_mut());
        }
    }

    /// Takes the epoll set's ready events into `fired` without blocking; when there are none,
    /// tokio is asked to wake the group on the next one.
    fn wait_events(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        loop {
            let mut guard = match self.epoll.poll_read_ready_mut(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(ready) => ready?,
            };
            match guard
                .get_inner_mut()
                .poll(&mut self.events, Some(Duration::ZERO))
            {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
                Ok(()) => {}
            }
            if self.events.is_empty() {
                // Drained: clear tokio's readiness and poll again, which registers the waker.
                guard.clear_ready();
                continue;
            }
            for event in self.events.iter() {
                let Ok(slot) = u32::try_from(event.token().0) else {
                    continue;
                };
                let failed = event.is_error();
                self.fired.push_back((
                    slot,
                    event.is_readable() || event.is_read_closed() || failed,
                    event.is_writable() || event.is_write_closed() || failed,
                ));
            }
            return Ok(());
        }
    }

    /// The group goes idle: its lists give back what a burst made them grow to.
    fn shrink_spare(&mut self) {
        pushgate_core::spare::shrink_queue(&mut self.woken);
        pushgate_core::spare::shrink_queue(&mut self.bulk);
        pushgate_core::spare::shrink_queue(&mut self.incoming);
        let mut state = self.shared.lock();
        pushgate_core::spare::shrink_vec(&mut state.ready);
        pushgate_core::spare::shrink_vec(&mut state.bulk_ready);
        pushgate_core::spare::shrink_vec(&mut state.incoming);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{run_phone, tests::test_settings};
    use crate::driver::NodeHandle;
    use crate::phone_queue::PhoneQueue;
    use pushgate_core::ConnId;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A group of `count` phones over loopback, each admitted by a node that takes every
    /// message and answers none; runs `test` with the groups, the phones' ends, their queues
    /// and the live count. With `small_buffers`, each socket buffers only a few KiB (a phone
    /// that stops reading soon fills its server's socket).
    fn with_group<F, Fut>(count: usize, small_buffers: bool, test: F)
    where
        F: FnOnce(PhoneGroups, Vec<TcpStream>, Vec<Arc<PhoneQueue>>, Arc<AtomicUsize>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let groups = PhoneGroups::start(1).expect("group");
            let settings = Arc::new(test_settings());
            let (node, mut node_rx) = NodeHandle::channel(count.max(1));
            tokio::spawn(async move { while node_rx.recv().await.is_some() {} });
            let live = Arc::new(AtomicUsize::new(0));
            let (mut phones, mut queues) = (Vec::new(), Vec::new());
            for n in 0..count {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                if small_buffers {
                    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
                }
                phones.push(socket.connect(addr).await.expect("connect"));
                let (server_side, _) = listener.accept().await.expect("accept");
                if small_buffers {
                    let server = socket2::SockRef::from(&server_side);
                    server.set_send_buffer_size(4096).expect("SO_SNDBUF");
                }
                let queue = Arc::new(PhoneQueue::new(16));
                queue.admit();
                let stream = GroupStream::from_tokio(server_side).expect("socket");
                let task = run_phone(
                    ConnId(n as u64 + 1),
                    stream,
                    node.clone(),
                    queue.clone(),
                    settings.clone(),
                );
                let door = AddressSlot::unlimited();
                groups.add(GroupPhone { task, door }, LiveGuard::new(&live));
                queues.push(queue);
            }
            settle(&groups).await;
            test(groups, phones, queues, live).await;
        });
    }

    /// Yields until the group has polled nothing new for a while.
    async fn settle(groups: &PhoneGroups) {
        let mut quiet = 0;
        let mut seen = groups.phones_polled();
        while quiet < 20 {
            tokio::task::yield_now().await;
            let now = groups.phones_polled();
            quiet = if now == seen { quiet + 1 } else { 0 };
            seen = now;
        }
    }

    /// Every phone of a group woken at once (as a broadcast wakes them): the group polls them
    /// in turns of at most [`MAX_POLLS_PER_TURN`] and lets other tasks run between turns.
    #[test]
    fn a_turn_polls_at_most_its_bound_of_phones_then_yields() {
        let count = 3 * MAX_POLLS_PER_TURN + 10;
        with_group(count, false, |groups, _phones, queues, live| async move {
            assert_eq!(live.load(Ordering::Relaxed), count);
            let start = groups.phones_polled();
            for queue in &queues {
                queue.wake_timer(1);
            }
            // This task runs between the group's turns: what each turn polled.
            let mut turns = Vec::new();
            let mut seen = start;
            for _ in 0..10_000 {
                tokio::task::yield_now().await;
                let now = groups.phones_polled();
                if now > seen {
                    turns.push(now - seen);
                }
                seen = now;
                if seen >= start + count as u64 {
                    break;
                }
            }
            assert!(seen - start >= count as u64, "every woken phone polled");
            assert!(
                turns
                    .iter()
                    .all(|polls| *polls <= MAX_POLLS_PER_TURN as u64),
                "turns polled {turns:?}"
            );
        });
    }

    /// A broadcast has woken more phones than a turn polls; then a single push comes for
    /// another phone of the group. The group's next turn polls that phone, ahead of the
    /// broadcast's, and still polls some of the broadcast's (their share of the turn).
    #[test]
    fn a_single_push_goes_ahead_of_a_broadcasts_phones() {
        let count = 3 * MAX_POLLS_PER_TURN;
        with_group(count, false, |groups, _phones, queues, _live| async move {
            let frame = || crate::phone_queue::ToPhone::Frame {
                frame: pushgate_core::OutFrame::Heartbeat,
                report_write: None,
            };
            let (single, broadcast) = queues.split_last().expect("phones");
            for queue in broadcast {
                queue.push_bulk(frame());
            }
            single.push(frame());
            let start = groups.phones_polled();
            let mut turns = 0;
            while groups.phones_polled() == start {
                tokio::task::yield_now().await;
                turns += 1;
                assert!(turns < 1_000, "the group never polled");
            }
            let polled = groups.phones_polled() - start;
            let broadcast_taken = broadcast.iter().filter(|q| q.queued() == 0).count();
            assert_eq!(
                single.queued(),
                0,
                "the single push's phone was polled first"
            );
            assert!(polled <= MAX_POLLS_PER_TURN as u64, "one turn: {polled}");
            assert!(
                broadcast_taken >= MAX_POLLS_PER_TURN / 4,
                "the broadcast kept its share: {broadcast_taken}"
            );
            assert!(
                broadcast_taken < broadcast.len(),
                "one turn, not all of them"
            );
        });
    }

    /// Phones close both ways: a close the node asks for reaches the phone as the end of its
    /// stream, a phone that hangs up leaves the group; each frees its slot and its live count.
    #[test]
    fn phones_that_close_leave_their_group() {
        with_group(20, false, |groups, mut phones, queues, live| async move {
            for queue in &queues[..10] {
                queue.close();
            }
            for phone in &mut phones[..10] {
                let mut byte = [0u8; 1];
                let read =
                    tokio::time::timeout(std::time::Duration::from_secs(5), phone.read(&mut byte))
                        .await
                        .expect("the server closes within 5 s");
                assert_eq!(read.expect("read"), 0, "the stream ends");
            }
            drop(phones.split_off(10));
            for _ in 0..500 {
                if live.load(Ordering::Relaxed) == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(
                live.load(Ordering::Relaxed),
                0,
                "every phone left its group"
            );
            drop(groups);
        });
    }

    /// A phone that stops reading: its server's writes find the socket full, the group watches
    /// the socket for room (it is registered for reads only otherwise), and once the phone
    /// reads again every byte arrives.
    #[test]
    fn a_phone_that_stops_reading_gets_every_byte_once_it_reads_again() {
        use pushgate_core::{command::Command, frame::Flags, OutFrame, Seal};
        const FRAMES: usize = 16; // the queue's bound in `with_group`
        const BODY_BYTES: usize = 16 * 1024;
        with_group(1, true, |groups, mut phones, queues, live| async move {
            for n in 0..FRAMES {
                let frame = OutFrame::Packet {
                    cmd: Command::Push as u8,
                    flags: Flags(0),
                    session_id: n as i32,
                    body: bytes::Bytes::from(vec![n as u8; BODY_BYTES]),
                    seal: Seal::Raw,
                };
                queues[0].push(crate::phone_queue::ToPhone::Frame {
                    frame,
                    report_write: None,
                });
            }
            // The phone reads nothing for a while: the server's socket fills.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let expected = FRAMES * (pushgate_core::frame::HEADER_BYTES + BODY_BYTES);
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while got < expected {
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    phones[0].read(&mut buf),
                )
                .await
                .unwrap_or_else(|_| panic!("stalled after {got} of {expected} bytes"))
                .expect("read");
                assert!(read > 0, "closed after {got} of {expected} bytes");
                got += read;
            }
            assert_eq!(got, expected);
            assert_eq!(
                live.load(Ordering::Relaxed),
                1,
                "the phone is still connected"
            );
            drop(groups);
        });
    }

    /// A phone whose peer sends without pause reads at most [`MAX_READS_PER_POLL`] times in
    /// one poll, then asks to be polled again (its waker woken) and lets the group go on.
    #[test]
    fn a_poll_reads_at_most_its_budget_then_asks_to_be_polled_again() {
        use crate::conn::PhoneStream;
        use stream::MAX_READS_PER_POLL;
        use tokio::io::AsyncWriteExt;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        crate::conn::tests::on_loopback(|mut phone, server_side| async move {
            let mut stream = GroupStream::from_tokio(server_side).expect("socket");
            phone.write_all(&vec![7u8; 1 << 20]).await.expect("write");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let woken = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(woken.clone());
            let mut cx = Context::from_waker(&waker);
            let mut inbound = crate::conn::Inbound::default();
            for _ in 0..2 {
                stream.start_poll();
                let before = woken.0.load(Ordering::Relaxed);
                let mut reads = 0;
                while let Poll::Ready(read) = stream.poll_read_some(&mut inbound, &mut cx) {
                    assert!(read.expect("read") > 0);
                    inbound.buf().clear();
                    reads += 1;
                }
                assert_eq!(reads, usize::from(MAX_READS_PER_POLL));
                assert_eq!(
                    woken.0.load(Ordering::Relaxed),
                    before + 1,
                    "asked to be polled again"
                );
            }
        });
    }

    /// What a grouped phone holds besides its boxed machine: the slot (in a chunk) and its
    /// waker (an `Arc` in mimalloc's 32-byte class).
    #[test]
    fn a_grouped_phone_is_small() {
        let slot = std::mem::size_of::<Option<Slot>>();
        let wake = std::mem::size_of::<SlotWake>();
        eprintln!("slot {slot} bytes, waker {wake} + 16 bytes");
        assert!(slot <= 160, "a phone's slot holds {slot} bytes");
        assert!(
            wake <= 16,
            "a phone's waker holds {wake} bytes besides the Arc's counts"
        );
    }
}
