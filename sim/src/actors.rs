//! The simulated users of the cluster: phones running the real `DeviceClient`, and business
//! servers running the real `PushClient`.
use crate::oracle::{lock, Outcome, Shared};
use crate::params::{AckBehavior, Params, PhoneSpec};
use crate::store_client;
use crate::world::{Control, Phase};
use pushgate::client::{
    AckPolicy, BroadcastRequest, DeviceClient, DeviceEvent, DeviceOptions, PushClient,
    PushClientOptions, SinglePushRequest,
};
use pushgate_core::frame::Flags;
use pushgate_core::push::AckMode;
use pushgate_core::route::ClientType;
use pushgate_core::status::PushStatus;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An exponentially distributed wait with the given mean (capped at 5x).
pub fn exp_ms(rng: &mut StdRng, mean_ms: u64) -> u64 {
    let u: f64 = rng.gen_range(1e-6..1.0);
    let v = -(u.ln()) * mean_ms as f64;
    (v as u64).min(mean_ms * 5).max(1)
}

fn actor_rng(seed: u64, salt: u64, index: usize, incarnation: u32) -> StdRng {
    let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.rotate_left(17)
        ^ ((index as u64) << 20)
        ^ u64::from(incarnation);
    StdRng::seed_from_u64(mixed)
}

/// Why a phone connection ended.
enum End {
    /// The server closed it (or it broke): already recorded.
    PeerClosed,
    /// The phone closes it.
    Close(&'static str),
    /// A reconnect storm: close and come back at once.
    Storm,
    Stop,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Phone<'a> {
    index: usize,
    spec: &'a PhoneSpec,
    params: &'a Params,
    sh: &'a Shared,
    ctl: &'a Control,
    rng: StdRng,
    policy: AckPolicy,
    /// The user to bind first on the next connection (a flapping reconnect).
    rebind: Option<String>,
    /// The user bound when the last connection ended.
    last_user: Option<String>,
}

/// A phone: connects (fast when it can), binds, receives and ACKs, and churns: reconnects to the
/// same or another node, unbinds, rebinds, binds shared users (so other phones get kicked).
/// In the calm phase it stays connected and bound to its own user, reconnecting when needed.
pub async fn phone_actor(index: usize, sh: Shared, ctl: Arc<Control>, params: Arc<Params>) {
    let spec = params.phones[index].clone();
    let incarnation = lock(&sh).phone_incarnation[index];
    let rng = actor_rng(params.seed, 0xF00D, index, incarnation);
    let policy = if spec.ack == AckBehavior::Never {
        AckPolicy::None
    } else {
        AckPolicy::Auto
    };
    let mut phone = Phone {
        index,
        spec: &spec,
        params: &params,
        sh: &sh,
        ctl: &ctl,
        rng,
        policy,
        rebind: None,
        last_user: None,
    };
    phone.run().await;
    std::future::pending::<()>().await;
}

impl Phone<'_> {
    async fn run(&mut self) {
        let mut failures = 0usize;
        // A flapping connection comes back to the node it left and binds the same user at once
        // (races with kick notices still in flight for the connection it left).
        let mut sticky: Option<(usize, String)> = None;
        loop {
            let phase = self.ctl.phase();
            if phase == Phase::Stop {
                return;
            }
            let again = sticky
                .take()
                .filter(|_| phase == Phase::Fault && failures == 0 && self.rng.gen_bool(0.5));
            self.rebind = again.as_ref().map(|(_, user)| user.clone());
            let node = if let Some((node, _)) = &again {
                *node
            } else if phase == Phase::Calm || failures > 0 {
                (self.spec.home_node + failures) % self.params.nodes
            } else if self.rng.gen_bool(0.6) {
                self.spec.home_node
            } else {
                self.rng.gen_range(0..self.params.nodes)
            };
            // A storm aimed at one node sends the phone there (in the fault phase).
            let node = match self.ctl.take_storm_target(self.index) {
                Some(target) if phase == Phase::Fault => target,
                _ => node,
            };
            let mut opts = DeviceOptions::new(self.spec.device_id.clone());
            opts.os_name = self.spec.os_name.to_owned();
            opts.min_heartbeat_ms = i32::try_from(self.params.min_heartbeat_ms).unwrap_or(2000);
            opts.max_heartbeat_ms = self.spec.max_heartbeat_ms;
            opts.handshake_timeout_ms = 3_000;
            opts.request_timeout_ms = 3_000;
            opts.connect_timeout_ms = 2_000;
            opts.ack_policy = self.policy;
            opts.rng_seed = Some(self.rng.gen());
            if self.rng.gen_bool(0.85) {
                opts.session = crate::world::lock_std(&self.ctl.sessions)[self.index].clone();
            }
            let connecting_since = lock(self.sh).now();
            let client = match DeviceClient::connect(self.params.connect_addr(node), opts).await {
                Ok(client) => {
                    failures = 0;
                    client
                }
                Err(error) => {
                    failures += 1;
                    lock(self.sh).connect_failed(self.index, node, &error.to_string());
                    let wait = self.rng.gen_range(100..1_500);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
            };
            crate::world::lock_std(&self.ctl.sessions)[self.index] = Some(client.stored_session());
            let conn = lock(self.sh).conn_opened(
                self.index,
                node,
                client.fast_connected(),
                connecting_since,
            );
            let Some(mut events) = client.take_events().await else {
                lock(self.sh).conn_closed(conn, "no event channel");
                continue;
            };
            let end = self.run_conn(&client, &mut events, conn).await;
            sticky = self.last_user.take().map(|user| (node, user));
            match end {
                End::PeerClosed => {}
                End::Close(cause) => lock(self.sh).conn_closed(conn, cause),
                End::Storm => lock(self.sh).conn_closed(conn, "reconnect storm"),
                End::Stop => lock(self.sh).conn_closed(conn, "end of the run"),
            }
            client.close().await;
            drop(client);
            let wait = match end {
                End::Stop => return,
                End::Storm => self.rng.gen_range(0..300),
                _ if self.ctl.phase() == Phase::Calm => self.rng.gen_range(50..500),
                _ => self.rng.gen_range(50..2_000),
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    fn pick_user(&mut self, phase: Phase) -> String {
        if phase == Phase::Fault
            && self.params.shared_users > 0
            && self.rng.gen_bool(self.spec.shared_bind_prob)
        {
            format!("s{}", self.rng.gen_range(0..self.params.shared_users))
        } else {
            self.spec.primary_user.clone()
        }
    }

    fn pick_tags(&mut self) -> Vec<String> {
        let count = self.rng.gen_range(0..=2);
        let mut tags: Vec<String> = self
            .params
            .tags
            .choose_multiple(&mut self.rng, count)
            .cloned()
            .collect();
        tags.sort();
        tags
    }

    fn next_action(&mut self, phase: Phase) -> Option<Instant> {
        (phase == Phase::Fault).then(|| {
            Instant::now() + Duration::from_millis(exp_ms(&mut self.rng, self.spec.churn_mean_ms))
        })
    }

    /// Handles one event; `Some` when the connection is over.
    fn on_event(
        &mut self,
        client: &DeviceClient,
        conn: usize,
        event: DeviceEvent,
        events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
        acks: &mut Vec<(Instant, i32)>,
    ) -> Option<End> {
        match event {
            DeviceEvent::Push {
                session_id,
                flags,
                content,
            } => {
                let auto = self.policy.acks_on_delivery(flags);
                lock(self.sh).received(conn, session_id, flags, &content, auto);
                if !auto && flags.contains(Flags::BIZ_ACK) {
                    match self.spec.ack {
                        AckBehavior::Prompt => {
                            if client.ack(session_id).is_ok() {
                                lock(self.sh).acked(conn, session_id);
                            }
                        }
                        AckBehavior::Slow(max) => {
                            let at = Instant::now()
                                + Duration::from_millis(self.rng.gen_range(0..max.max(1)));
                            acks.push((at, session_id));
                        }
                        AckBehavior::Never => {}
                    }
                }
                None
            }
            DeviceEvent::Kick { user_id, .. } => {
                // The device took every frame already queued behind the KICK (its client ACKs
                // some pushes on delivery) before the app stops at the KICK: the pushes among
                // them were received. They were sent to a binding the KICK does not end (the
                // node sends nothing to a binding it kicked), e.g. a bind made after a KICK
                // that a stalled reader had not read yet.
                while let Ok(next) = events.try_recv() {
                    if let DeviceEvent::Push {
                        session_id,
                        flags,
                        content,
                    } = next
                    {
                        let auto = self.policy.acks_on_delivery(flags);
                        lock(self.sh).received(conn, session_id, flags, &content, auto);
                    }
                }
                lock(self.sh).kicked(conn, &user_id);
                Some(End::Close("kicked"))
            }
            DeviceEvent::Error(error) => {
                let phone = self.index;
                lock(self.sh).trace(format!("phone{phone} c{conn} error event: {error}"));
                None
            }
            DeviceEvent::Closed => {
                lock(self.sh).conn_closed(conn, "closed by the server");
                Some(End::PeerClosed)
            }
        }
    }

    /// Handles every event already queued (after a request's answer: the frames before it).
    fn drain(
        &mut self,
        client: &DeviceClient,
        conn: usize,
        events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
        acks: &mut Vec<(Instant, i32)>,
    ) -> Option<End> {
        while let Ok(event) = events.try_recv() {
            if let Some(end) = self.on_event(client, conn, event, events, acks) {
                return Some(end);
            }
        }
        None
    }

    async fn bind(
        &mut self,
        client: &DeviceClient,
        conn: usize,
        events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
        acks: &mut Vec<(Instant, i32)>,
        user: &str,
    ) -> Result<(), End> {
        let tags = self.pick_tags();
        lock(self.sh).bind_requested(conn, user, &tags);
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let result = client.bind(user, &refs).await;
        lock(self.sh).bind_answered(conn, result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Some(end) = self.drain(client, conn, events, acks) {
            return Err(end);
        }
        lock(self.sh).settle_accept(conn);
        result.map_err(|_| End::Close("bind failed"))
    }

    async fn unbind(
        &mut self,
        client: &DeviceClient,
        conn: usize,
        events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
        acks: &mut Vec<(Instant, i32)>,
    ) -> Result<(), End> {
        lock(self.sh).unbind_requested(conn);
        let result = client.unbind().await;
        lock(self.sh).unbind_answered(conn, result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Some(end) = self.drain(client, conn, events, acks) {
            return Err(end);
        }
        lock(self.sh).settle_accept(conn);
        result.map_err(|_| End::Close("unbind failed"))
    }

    async fn run_conn(
        &mut self,
        client: &DeviceClient,
        events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
        conn: usize,
    ) -> End {
        let mut acks: Vec<(Instant, i32)> = Vec::new();
        let mut phase = self.ctl.phase();
        let wakeup = self.ctl.phone_wakeup(self.index);
        let user = match self.rebind.take() {
            Some(user) => user,
            None => self.pick_user(phase),
        };
        self.last_user = None;
        if let Err(end) = self.bind(client, conn, events, &mut acks, &user).await {
            return end;
        }
        self.last_user = Some(user.clone());
        let mut bound = Some(user);
        let mut next_action = self.next_action(phase);
        let storm = self.ctl.storms[self.index].clone();
        loop {
            let next_ack = acks.iter().map(|(at, _)| *at).min();
            tokio::select! {
                biased;
                event = events.recv() => {
                    let Some(event) = event else {
                        lock(self.sh).conn_closed(conn, "closed by the server");
                        return End::PeerClosed;
                    };
                    if let Some(end) = self.on_event(client, conn, event, events, &mut acks) {
                        return end;
                    }
                }
                () = sleep_until_opt(next_ack) => {
                    let now = Instant::now();
                    let due: Vec<i32> = acks.iter().filter(|(at, _)| *at <= now).map(|(_, sid)| *sid).collect();
                    acks.retain(|(at, _)| *at > now);
                    for sid in due {
                        if client.ack(sid).is_ok() {
                            lock(self.sh).acked(conn, sid);
                        }
                    }
                }
                () = storm.notified() => return End::Storm,
                () = wakeup.notified() => {
                    let now = self.ctl.phase();
                    if now == phase {
                        continue;
                    }
                    phase = now;
                    match phase {
                        Phase::Stop => return End::Stop,
                        Phase::Calm => {
                            next_action = None;
                            if bound.as_deref() != Some(self.spec.primary_user.as_str()) {
                                let primary = self.spec.primary_user.clone();
                                if let Err(end) = self.bind(client, conn, events, &mut acks, &primary).await {
                                    return end;
                                }
                                self.last_user = Some(primary.clone());
                                bound = Some(primary);
                            }
                        }
                        Phase::Fault => {}
                    }
                }
                () = sleep_until_opt(next_action) => {
                    next_action = self.next_action(phase);
                    if bound.is_none() {
                        let user = self.pick_user(phase);
                        if let Err(end) = self.bind(client, conn, events, &mut acks, &user).await {
                            return end;
                        }
                        self.last_user = Some(user.clone());
                        bound = Some(user);
                        continue;
                    }
                    let roll: f64 = self.rng.gen();
                    if roll < 0.5 {
                        return End::Close("phone reconnects");
                    } else if roll < 0.7 {
                        if let Err(end) = self.unbind(client, conn, events, &mut acks).await {
                            return end;
                        }
                        self.last_user = None;
                        bound = None;
                        next_action = Some(Instant::now() + Duration::from_millis(self.rng.gen_range(100..2_000)));
                    } else {
                        let user = self.pick_user(phase);
                        if let Err(end) = self.bind(client, conn, events, &mut acks, &user).await {
                            return end;
                        }
                        self.last_user = Some(user.clone());
                        bound = Some(user);
                    }
                }
            }
        }
    }
}

/// The PushClients of one business server, one per gateway it talks to.
pub type Clients = Arc<Mutex<BTreeMap<usize, Arc<PushClient>>>>;

async fn client_for(
    clients: &Clients,
    params: &Params,
    node: usize,
) -> Result<Arc<PushClient>, String> {
    if let Some(client) = crate::world::lock_std(clients).get(&node).cloned() {
        return Ok(client);
    }
    let options = PushClientOptions {
        resolver: None,
        max_redirects: 0,
        connect_timeout_ms: 1_000,
        token: None,
    };
    let client = Arc::new(
        PushClient::connect_with(params.gateway_addr(node), options)
            .await
            .map_err(|e| e.to_string())?,
    );
    crate::world::lock_std(clients).insert(node, client.clone());
    Ok(client)
}

/// What one single push asks for.
#[derive(Debug, Clone)]
pub struct PushSpec {
    pub user: String,
    pub client_type: Option<i32>,
    pub ack: AckMode,
    pub timeout_ms: u64,
    pub node: usize,
}

/// Pushes to one user through `spec.node`, following router changes (at most twice) by
/// reading the route from the store, as MPush's PushClient does. Returns the last attempt's
/// push id and outcome.
pub async fn single_push(
    sh: Shared,
    params: Arc<Params>,
    clients: Clients,
    pc: usize,
    spec: PushSpec,
    liveness: bool,
) -> Option<(usize, Outcome)> {
    let mut node = spec.node;
    let mut last = None;
    for attempt in 0..3 {
        let id = lock(&sh).push_started(
            &spec.user,
            spec.client_type,
            spec.ack,
            spec.timeout_ms,
            node,
            pc,
            liveness,
        );
        let client = match client_for(&clients, &params, node).await {
            Ok(client) => client,
            Err(error) => {
                let outcome = Outcome::Error(format!("connect: {error}"));
                lock(&sh).push_ended(id, outcome.clone());
                return Some((id, outcome));
            }
        };
        let request = SinglePushRequest {
            user_id: spec.user.clone(),
            client_type: spec.client_type,
            content: format!("p-{id}").into(),
            ack: spec.ack,
            timeout_ms: spec.timeout_ms,
        };
        let result = client.push(request).await;
        let outcome = match &result {
            Ok(r) => Outcome::Status {
                status: r.status,
                reason: r.reason.clone(),
                replied: r.raw_reply.is_some(),
            },
            Err(error) => Outcome::Error(error.to_string()),
        };
        lock(&sh).push_ended(id, outcome.clone());
        last = Some((id, outcome));
        let Ok(result) = result else { break };
        if result.status != PushStatus::RouterChange || attempt == 2 {
            break;
        }
        let client_type = spec
            .client_type
            .or(result.client_type)
            .and_then(ClientType::from_code);
        match store_client::lookup(
            params.store_addr(),
            &spec.user,
            client_type,
            Duration::from_millis(1_000),
        )
        .await
        {
            Ok(Some((_, route))) if route.is_online() => match params.node_of_host(&route.host) {
                Some(next) => node = next,
                None => break,
            },
            other => {
                lock(&sh).trace(format!(
                    "pc{pc} p-{id}: route look-up after router change gave {other:?}"
                ));
                break;
            }
        }
    }
    last
}

async fn broadcast(
    sh: Shared,
    params: Arc<Params>,
    clients: Clients,
    pc: usize,
    node: usize,
    mut rng: StdRng,
) {
    let tags: Vec<String> = if rng.gen_bool(0.5) {
        Vec::new()
    } else {
        let count = rng.gen_range(1..=2);
        params
            .tags
            .choose_multiple(&mut rng, count)
            .cloned()
            .collect()
    };
    let users = rng.gen_bool(0.2).then(|| {
        let all = params.all_users();
        let count = rng.gen_range(1..=3);
        all.choose_multiple(&mut rng, count)
            .cloned()
            .collect::<Vec<String>>()
    });
    let task = rng.gen_bool(0.25);
    let timeout_ms = rng.gen_range(1_000..=5_000);
    let id = lock(&sh).broadcast_started(node, pc, tags.clone(), users.clone(), task);
    let condition = users.map(|users| {
        let list: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
        format!("userId in [{}]", list.join(","))
    });
    let request = BroadcastRequest {
        content: format!("b-{id}").into(),
        tags,
        condition,
        task_id: task.then(|| format!("task-{id}")),
        timeout_ms,
    };
    let outcome = match client_for(&clients, &params, node).await {
        Err(error) => Outcome::Error(format!("connect: {error}")),
        Ok(client) => match client.broadcast(request).await {
            Ok(r) => Outcome::Status {
                status: r.status,
                reason: r.reason.clone(),
                replied: r.raw_reply.is_some() || task,
            },
            Err(error) => Outcome::Error(error.to_string()),
        },
    };
    lock(&sh).broadcast_ended(id, outcome);
}

/// A business server: sends single pushes (every ack mode, varied timeouts, any or one client
/// type, known, shared and unknown users) and broadcasts (tags, conditions, task ids) through
/// its home gateway or another one, many in flight at once, until the fault phase ends.
pub async fn push_client_actor(pc: usize, sh: Shared, ctl: Arc<Control>, params: Arc<Params>) {
    let incarnation = lock(&sh).push_client_started(pc);
    let mut rng = actor_rng(params.seed, 0xBEEF, pc, incarnation);
    let clients: Clients = Arc::new(Mutex::new(BTreeMap::new()));
    let home = pc % params.nodes;
    let wakeup = ctl.push_client_wakeup(params.phones.len(), pc);
    let users = params.all_users();
    while ctl.phase() == Phase::Fault {
        let gap = exp_ms(&mut rng, params.push_gap_mean_ms);
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_millis(gap)) => {}
            () = wakeup.notified() => continue,
        }
        let node = if rng.gen_bool(0.5) {
            home
        } else {
            rng.gen_range(0..params.nodes)
        };
        if rng.gen_bool(params.broadcast_prob) {
            let task_rng = StdRng::seed_from_u64(rng.gen());
            tokio::spawn(broadcast(
                sh.clone(),
                params.clone(),
                clients.clone(),
                pc,
                node,
                task_rng,
            ));
            continue;
        }
        // While a phone stops reading, half the pushes go to its user: its queue fills up to
        // the marks (and beyond), as a slow reader's does, while the rest go on.
        let stalled = crate::world::lock_std(&ctl.stalled_users).clone();
        let user = if !stalled.is_empty() && rng.gen_bool(0.5) {
            stalled.choose(&mut rng).cloned().unwrap_or_default()
        } else {
            users.choose(&mut rng).cloned().unwrap_or_default()
        };
        let client_type = if rng.gen_bool(0.6) {
            None
        } else {
            Some([1, 2, 3][rng.gen_range(0..3)])
        };
        let ack = [AckMode::None, AckMode::Auto, AckMode::Biz][rng.gen_range(0..3)];
        let timeout_ms = if rng.gen_bool(0.2) {
            rng.gen_range(100..1_000)
        } else {
            rng.gen_range(1_000..6_000)
        };
        let spec = PushSpec {
            user,
            client_type,
            ack,
            timeout_ms,
            node,
        };
        tokio::spawn(single_push(
            sh.clone(),
            params.clone(),
            clients.clone(),
            pc,
            spec,
            false,
        ));
    }
    // Let the pushes in flight finish; drop the connections at the end of the run.
    while ctl.phase() != Phase::Stop {
        wakeup.notified().await;
    }
    crate::world::lock_std(&clients).clear();
    std::future::pending::<()>().await;
}
