//! The embedded route store: one node's routes, reusable sessions and broadcast task records,
//! in this process.
//!
//! [`MemoryStore`] is the default back end when no Redis is configured. Its rules are the core's
//! [`StoreState`] (written once, shared with the simulator's store and the core's tests); this
//! wrapper only adapts it to the driver: it answers synchronously, so the driver feeds its
//! answer straight back to the core, and kick notices come back to the caller to deliver
//! locally (one embedded store serves one node).
use pushgate_core::route::ClientType;
use pushgate_core::store::{KickNotice, RouteRecord, StoreError, StoreOp, StoreReply};
use pushgate_core::store_state::StoreState;
use pushgate_core::Millis;

/// The embedded single-node store. `Clone` takes a snapshot (the simulator's store model
/// restores one to play a failover that lost the last writes).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: StoreState,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Performs `op` at `now_ms`. The embedded store never fails.
    pub fn apply(&mut self, now_ms: Millis, op: StoreOp) -> Result<StoreReply, StoreError> {
        tracing::trace!(?op, "store op");
        Ok(self.state.apply(now_ms, op))
    }

    /// Performs `op`, sent on a node's store link of epoch `link_epoch`, at `now_ms`
    /// ([`StoreState::apply_on_link`]): an op from a link its node has replaced is refused as
    /// [`StoreError::Fenced`].
    pub fn apply_on_link(
        &mut self,
        now_ms: Millis,
        op: StoreOp,
        link_epoch: u64,
    ) -> Result<StoreReply, StoreError> {
        tracing::trace!(?op, link_epoch, "store op");
        self.state.apply_on_link(now_ms, op, link_epoch)
    }

    /// The route of (user, type), or with no type the user's best route (online first).
    pub fn route(
        &self,
        user_id: &str,
        client_type: Option<ClientType>,
    ) -> Option<(ClientType, RouteRecord)> {
        self.state.route(user_id, client_type, None)
    }

    /// Every route of a user (for the admin API).
    pub fn routes_of(&self, user_id: &str) -> Vec<(ClientType, RouteRecord)> {
        self.state.routes_of(user_id)
    }

    /// Takes the kick notices published since the last call.
    pub fn take_kicks(&mut self) -> Vec<KickNotice> {
        std::iter::from_fn(|| self.state.poll_kick()).collect()
    }

    /// The store's data and rules.
    pub fn state(&self) -> &StoreState {
        &self.state
    }

    /// The store's data and rules, to seed or change as the business side would.
    pub fn state_mut(&mut self) -> &mut StoreState {
        &mut self.state
    }
}
