//! Each [`StoreOp`] as Redis commands in MPush's formats, answering exactly what the embedded
//! [`MemoryStore`](crate::store::MemoryStore) answers.
//!
//! Route writes go through the Lua scripts of [`super::scripts`]; what follows a route change
//! in MPush (ZADD/ZREM `mp:oul:{host}` and a PUBLISH of the bare user id on `/mpush/online/`
//! or `/mpush/offline/`, reference §12.5) is returned as a [`StatusEvent`] for the caller to
//! send after answering, as separate commands (other keys, other cluster slots).
use super::{keys, scripts};
use pushgate_core::route::ClientType;
use pushgate_core::store::{
    best_route, CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply,
    TaskControl,
};
use pushgate_core::store_state::MAX_TASK_USERS;
use pushgate_core::NodeAddr;
use redis::aio::ConnectionLike;
use redis::{RedisError, RedisResult};

/// A user's route came online or went offline on a host: the online list and status channel
/// are updated after the op's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    Online { host: String, user_id: String },
    Offline { host: String, user_id: String },
}

/// What one op did: its answer (or the Redis failure) and the status event it caused.
pub struct OpResult {
    pub reply: Result<StoreReply, OpError>,
    pub event: Option<StatusEvent>,
}

/// Why an op failed.
#[derive(Debug)]
pub enum OpError {
    /// Redis failed (the link task decides whether the connection is lost).
    Redis(RedisError),
    /// The op cannot be done as asked (an unreadable stored value, a version out of range).
    Refused(String),
    /// The op came on a link its node has replaced since ([`StoreError::Fenced`]): the newer
    /// link's epoch.
    Fenced(u64),
}

impl OpError {
    /// The answer the core gets.
    pub fn to_store_error(&self) -> StoreError {
        match self {
            OpError::Redis(error) if error.is_timeout() => StoreError::Timeout,
            OpError::Redis(error) => StoreError::Unavailable(format!("redis: {error}")),
            OpError::Refused(reason) => StoreError::Unavailable(reason.clone()),
            OpError::Fenced(newest_epoch) => StoreError::Fenced {
                newest_epoch: *newest_epoch,
            },
        }
    }
}

impl From<RedisError> for OpError {
    fn from(error: RedisError) -> Self {
        OpError::Redis(error)
    }
}

/// Performs `op` on `conn`, a connection of the node's link of epoch `link_epoch` (the
/// node's clock in µs when it opened the link; 0: none): a route op that comes after one the
/// node sent on a newer link is refused ([`StoreError::Fenced`]).
pub async fn execute<C: ConnectionLike + Send>(
    conn: &mut C,
    op: StoreOp,
    link_epoch: u64,
) -> OpResult {
    let mut event = None;
    let reply = run(conn, op, link_epoch, &mut event).await;
    OpResult { reply, event }
}

async fn run<C: ConnectionLike + Send>(
    conn: &mut C,
    op: StoreOp,
    link_epoch: u64,
    event: &mut Option<StatusEvent>,
) -> Result<StoreReply, OpError> {
    if link_epoch > scripts::MAX_EXACT_VERSION {
        return Err(OpError::Refused(format!(
            "link epochs above 2^53 cannot be compared in Redis ({link_epoch})"
        )));
    }
    Ok(match op {
        StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        } => {
            if route.version > scripts::MAX_EXACT_VERSION
                || route.conn_version > scripts::MAX_EXACT_VERSION
            {
                return Err(OpError::Refused(format!(
                    "route versions above 2^53 cannot be compared in Redis (version {}, connVersion {})",
                    route.version, route.conn_version
                )));
            }
            let json = serde_json::to_string(&route)
                .map_err(|e| OpError::Refused(format!("route to JSON: {e}")))?;
            match scripts::put_route(conn, &user_id, client_type, &route, &json, link_epoch).await?
            {
                scripts::PutOutcome::Fenced(epoch) => return Err(OpError::Fenced(epoch)),
                scripts::PutOutcome::Stale(current) => {
                    tracing::debug!(user = %user_id, client_type = client_type.code(), version = route.version, conn_version = route.conn_version, stored = %current, "put-route: the store holds a newer bind");
                    StoreReply::Stale {
                        current: parse_route(&current).ok_or_else(|| {
                            OpError::Refused(format!(
                                "the stored route of {user_id} type {} is not a route: {current:?}",
                                client_type.code()
                            ))
                        })?,
                    }
                }
                scripts::PutOutcome::Written(previous) => {
                    let host = route.host.clone();
                    *event = Some(if route.is_online() {
                        StatusEvent::Online { host, user_id }
                    } else {
                        StatusEvent::Offline { host, user_id }
                    });
                    // A value that is not a route (written by something else) is replaced and
                    // reported as no route: there is no connection to kick.
                    StoreReply::Previous(previous.as_deref().and_then(parse_route))
                }
            }
        }
        StoreOp::SetRouteOffline {
            user_id,
            client_type,
            node,
            conn_id,
            version,
        } => {
            if version > scripts::MAX_EXACT_VERSION {
                // No stored route can hold it (PutRoute refuses such versions): nothing to do.
                return Ok(StoreReply::Done);
            }
            match scripts::set_route_offline(
                conn,
                &user_id,
                client_type,
                &node,
                &conn_id,
                version,
                link_epoch,
            )
            .await?
            {
                scripts::Marked::Fenced(epoch) => return Err(OpError::Fenced(epoch)),
                scripts::Marked::Offline => {
                    *event = Some(StatusEvent::Offline {
                        host: node.host,
                        user_id,
                    });
                }
                scripts::Marked::Remembered => {}
            }
            StoreReply::Done
        }
        StoreOp::RestoreRoute {
            user_id,
            client_type,
            node,
            version,
            previous,
        } => {
            if version > scripts::MAX_EXACT_VERSION
                || previous.version > scripts::MAX_EXACT_VERSION
                || previous.conn_version > scripts::MAX_EXACT_VERSION
            {
                return Err(OpError::Refused(format!(
                    "route versions above 2^53 cannot be compared in Redis (version {version}, previous {})",
                    previous.version
                )));
            }
            let json = serde_json::to_string(&previous)
                .map_err(|e| OpError::Refused(format!("route to JSON: {e}")))?;
            let restored = scripts::restore_route(
                conn,
                &user_id,
                client_type,
                &node,
                version,
                &previous,
                &json,
                link_epoch,
            )
            .await?;
            *event = match restored {
                scripts::Restored::Fenced(epoch) => return Err(OpError::Fenced(epoch)),
                scripts::Restored::Online => Some(StatusEvent::Online {
                    host: previous.host.clone(),
                    user_id,
                }),
                scripts::Restored::Offline => Some(StatusEvent::Offline {
                    host: node.host,
                    user_id,
                }),
                scripts::Restored::Nothing => None,
            };
            StoreReply::Done
        }
        StoreOp::GetRoute {
            user_id,
            client_type,
            asker,
        } => StoreReply::Route(get_route(conn, &user_id, client_type, asker.as_ref()).await?),
        StoreOp::PutSession {
            session_id,
            session,
            ttl_ms,
        } => {
            let key = keys::session(&session_id);
            if ttl_ms == 0 {
                // Expired at once, as the embedded store has it: no session to find.
                redis::cmd("DEL").arg(&key).query_async::<()>(conn).await?;
                return Ok(StoreReply::Done);
            }
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(session.to_mpush_string());
            if ttl_ms % 1000 == 0 {
                cmd.arg("EX").arg(ttl_ms / 1000);
            } else {
                cmd.arg("PX").arg(ttl_ms);
            }
            cmd.query_async::<()>(conn).await?;
            StoreReply::Done
        }
        StoreOp::GetSession { session_id } => {
            let text: Option<String> = redis::cmd("GET")
                .arg(keys::session(&session_id))
                .query_async(conn)
                .await?;
            // MPush treats a value it cannot decode as no session (a full handshake follows).
            StoreReply::Session(text.as_deref().and_then(CachedSession::from_mpush_string))
        }
        StoreOp::PublishKick { notice } => {
            let json = serde_json::to_string(&notice)
                .map_err(|e| OpError::Refused(format!("kick notice to JSON: {e}")))?;
            redis::cmd("PUBLISH")
                .arg(keys::kick_channel(&notice.target()))
                .arg(json)
                .query_async::<i64>(conn)
                .await?;
            StoreReply::Done
        }
        StoreOp::GetTaskControl { task_id } => {
            let (qps, cancel): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(keys::task(&task_id))
                .arg(keys::TASK_QPS)
                .arg(keys::TASK_CANCEL)
                .query_async(conn)
                .await?;
            StoreReply::TaskControl(task_control(qps.as_deref(), cancel.as_deref()))
        }
        StoreOp::AddTaskProgress {
            task_id,
            sent,
            user_ids,
        } => {
            redis::cmd("HINCRBY")
                .arg(keys::task(&task_id))
                .arg(keys::TASK_SENT)
                .arg(sent)
                .query_async::<i64>(conn)
                .await?;
            // MPush sent LPUSH with no values, which Redis rejects: skipped here.
            // The newest MAX_TASK_USERS are kept (LPUSH puts the newest first).
            if !user_ids.is_empty() {
                let key = keys::task_users(&task_id);
                redis::cmd("LPUSH")
                    .arg(&key)
                    .arg(&user_ids)
                    .query_async::<i64>(conn)
                    .await?;
                redis::cmd("LTRIM")
                    .arg(&key)
                    .arg(0)
                    .arg(MAX_TASK_USERS - 1)
                    .query_async::<()>(conn)
                    .await?;
            }
            StoreReply::Done
        }
    })
}

/// The route of (user, type), or with no type the user's best route: the first online one in
/// [`ClientType::ALL`] order, else the first present (as the embedded store picks).
async fn get_route<C: ConnectionLike + Send>(
    conn: &mut C,
    user_id: &str,
    client_type: Option<ClientType>,
    asker: Option<&NodeAddr>,
) -> RedisResult<Option<(ClientType, RouteRecord)>> {
    let key = keys::user_routes(user_id);
    match client_type {
        Some(ct) => {
            let text: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg(keys::client_type_field(ct))
                .query_async(conn)
                .await?;
            Ok(text.as_deref().and_then(parse_route).map(|r| (ct, r)))
        }
        None => {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&key);
            for ct in ClientType::ALL {
                cmd.arg(keys::client_type_field(ct));
            }
            let values: Vec<Option<String>> = cmd.query_async(conn).await?;
            let routes = ClientType::ALL
                .into_iter()
                .zip(values)
                .filter_map(|(ct, text)| text.as_deref().and_then(parse_route).map(|r| (ct, r)));
            Ok(best_route(routes, asker))
        }
    }
}

/// A stored route (MPush's ClientLocation JSON, with or without pushgate's version keys);
/// `None` when the value is not one.
pub fn parse_route(text: &str) -> Option<RouteRecord> {
    match serde_json::from_str(text) {
        Ok(route) => Some(route),
        Err(error) => {
            tracing::warn!(%error, value = %text.chars().take(200).collect::<String>(), "a stored route is not ClientLocation JSON: ignored");
            None
        }
    }
}

/// A task's control record from its `q` and `c` fields: `q` a decimal number (else no value:
/// the node's default applies), cancelled when `c` is 1.
pub fn task_control(qps: Option<&str>, cancel: Option<&str>) -> TaskControl {
    TaskControl {
        qps: qps.and_then(|q| q.trim().parse().ok()),
        cancelled: cancel.is_some_and(|c| c.trim() == "1"),
    }
}

/// A kick notice received on a node's channel; `None` when it is not one.
pub fn parse_kick(payload: &[u8]) -> Option<KickNotice> {
    match serde_json::from_slice(payload) {
        Ok(notice) => Some(notice),
        Err(error) => {
            tracing::warn!(%error, bytes = payload.len(), "a kick message is not MPush's kick JSON: ignored");
            None
        }
    }
}

/// Sends what a route change means for MPush's online list and status channels: the ZADD or
/// ZREM and the PUBLISH go out together (pipelined on the connection, one round trip), each
/// routed on its own in a cluster.
pub async fn send_status_event<C: ConnectionLike + Send + Clone>(
    conn: &mut C,
    event: StatusEvent,
) -> RedisResult<()> {
    let (list, channel, user_id) = match event {
        StatusEvent::Online { host, user_id } => {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys::online_users(&host)).arg("0.0").arg(&user_id);
            (zadd, keys::ONLINE_CHANNEL, user_id)
        }
        StatusEvent::Offline { host, user_id } => {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(keys::online_users(&host)).arg(&user_id);
            (zrem, keys::OFFLINE_CHANNEL, user_id)
        }
    };
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(channel).arg(&user_id);
    let mut second = conn.clone();
    let (listed, published) = futures_util::future::join(
        list.query_async::<i64>(conn),
        publish.query_async::<i64>(&mut second),
    )
    .await;
    listed?;
    published?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_control_reads_mpush_fields() {
        assert_eq!(task_control(None, None), TaskControl::default());
        assert_eq!(
            task_control(Some("200"), Some("1")),
            TaskControl {
                qps: Some(200),
                cancelled: true
            }
        );
        assert_eq!(task_control(Some("x"), Some("0")), TaskControl::default());
    }

    #[test]
    fn mpush_kick_json_parses_and_garbage_does_not() {
        let notice = parse_kick(br#"{"clientType":1,"connId":"11c9ec34","deviceId":"device-D","targetPort":26001,"targetServer":"127.0.0.1","userId":"user-2"}"#).unwrap();
        assert_eq!(notice.conn_id, "11c9ec34");
        assert_eq!(notice.version, 0);
        assert!(parse_kick(b"{\\clientType\\\":1").is_none());
        assert!(parse_route("not json").is_none());
    }
}
