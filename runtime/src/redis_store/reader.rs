//! [`RedisReader`]: a command connection to Redis for callers outside the node's store link
//! (the node registry, the cluster PushClient). It is opened on first use, shared by clones
//! (commands pipeline on it), dropped after an error that means the link is gone and opened
//! again by the next command. Every command has a deadline, connecting included, and counts
//! as one round trip in [`RedisReader::round_trips`].
use super::conn::{self, DataConn};
use super::target::RedisTarget;
use redis::FromRedisValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A lazily opened, shared command connection.
#[derive(Clone)]
pub struct RedisReader {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    conn: Mutex<Option<DataConn>>,
    round_trips: AtomicU64,
}

impl std::fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReader")
            .field("target", &self.inner.target.to_string())
            .finish_non_exhaustive()
    }
}

impl RedisReader {
    /// A reader of `target`; nothing is opened yet.
    pub fn new(target: RedisTarget) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                conn: Mutex::new(None),
                round_trips: AtomicU64::new(0),
            }),
        }
    }

    /// The Redis this reader talks to.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// Commands sent so far (each one round trip; concurrent ones share the socket).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// The open connection, opened within `limit` when there is none.
    async fn conn(&self, limit: Duration) -> Result<DataConn, String> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let limit = limit.max(Duration::from_millis(1));
        let opened = tokio::time::timeout(limit, conn::open(&self.inner.target, limit))
            .await
            .map_err(|_| format!("connecting to Redis {} timed out", self.inner.target))?
            .map_err(|e| format!("connecting to Redis {}: {e}", self.inner.target))?;
        // Only the command connection is needed here; the pub/sub one closes.
        *slot = Some(opened.data.clone());
        Ok(opened.data)
    }

    /// Forgets the connection so the next command opens a new one.
    async fn reset(&self) {
        *self.inner.conn.lock().await = None;
    }

    /// Runs one command within `limit` (waiting for another caller's connect, connecting and
    /// the answer included).
    pub async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, String> {
        tokio::time::timeout(limit, self.query_within(cmd, limit))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Redis did not answer within {} ms",
                    limit.as_millis()
                ))
            })
    }

    async fn query_within<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, String> {
        let started = tokio::time::Instant::now();
        let mut conn = self.conn(limit).await?;
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("Redis command timed out".into());
        }
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(left, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                    || error.is_connection_refusal()
                    || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                {
                    self.reset().await;
                }
                Err(format!("Redis: {error}"))
            }
            Err(_) => Err(format!(
                "Redis did not answer within {} ms",
                left.as_millis()
            )),
        }
    }
}
