//! The two route writes that must be atomic, as Lua scripts run inside Redis: a versioned
//! `PutRoute` ([`RouteRecord::supersedes`]) and a guarded `SetRouteOffline`
//! ([`RouteRecord::take_offline`]). MPush reads a route, decides, then writes it (HGET then
//! HSET): two nodes binding one user at once can both win. Here the read, the decision and the
//! write are one script, so Redis applies them one at a time.
//!
//! Each script touches only `mp:ur:{userId}` (one key: one Redis Cluster slot). The online list
//! and the status events are separate commands, sent after the script answers.
//!
//! The stored route is decoded with `cjson`. Routes MPush wrote carry no `version` or
//! `connVersion` keys: they count as 0, older than any versioned route. Lua numbers are
//! doubles, so versions compare exactly up to 2^53 (pushgate's versions are epoch
//! milliseconds × 1000, about 2^51 today); the Rust side refuses larger ones
//! ([`MAX_EXACT_VERSION`]) instead of comparing them wrongly.
use super::keys;
use pushgate_core::route::ClientType;
use pushgate_core::store::RouteRecord;
use pushgate_core::NodeAddr;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;

/// Largest version the scripts compare exactly (2^53: Lua numbers are doubles).
pub const MAX_EXACT_VERSION: u64 = 1 << 53;

/// Helpers shared by both scripts: a decoded field as a string or a number, or the empty
/// value when absent, null or of another type (what serde's defaults give for absent keys).
const LUA_HELPERS: &str = r#"
local function str(v) if type(v) == 'string' then return v end return '' end
local function num(v) if type(v) == 'number' then return v end return 0 end
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, new route JSON, new deviceId, '1' when the new
/// route has a connId, that connId, new version, new connVersion.
/// Returns `{1, previous or nil}` when written, `{0, current}` when the stored route is newer.
const PUT_ROUTE_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' then
    local new_device = ARGV[3]
    local new_has_conn = ARGV[4] == '1'
    local new_conn = ARGV[5]
    local new_version = tonumber(ARGV[6])
    local new_conn_version = tonumber(ARGV[7])
    local old_conn = old['connId']
    local old_has_conn = type(old_conn) == 'string'
    local same_conn
    if new_has_conn then
      same_conn = old_has_conn and old_conn == new_conn
    else
      same_conn = not old_has_conn
    end
    local old_conn_version = num(old['connVersion'])
    local by_age = new_device ~= '' and new_device == str(old['deviceId']) and not same_conn
      and new_conn_version ~= 0 and old_conn_version ~= 0
    local wins
    if by_age then
      wins = new_conn_version >= old_conn_version
    else
      wins = new_version >= num(old['version'])
    end
    if not wins then
      return {0, cur}
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, cur}
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, node host, node port, connId, version.
/// Rewrites the route without its connId (MPush's offline marker, in MPush's key order) when
/// it still names that node, connection and bind version. Returns 1 when it did, else 0.
const SET_ROUTE_OFFLINE_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, r = pcall(cjson.decode, cur)
if not ok or type(r) ~= 'table' then return 0 end
if str(r['host']) ~= ARGV[2] or num(r['port']) ~= tonumber(ARGV[3])
  or r['connId'] ~= ARGV[4] or num(r['version']) ~= tonumber(ARGV[5]) then
  return 0
end
local parts = {'"port":' .. string.format('%d', num(r['port'])), '"host":' .. cjson.encode(str(r['host']))}
for _, k in ipairs({'deviceId', 'osName', 'clientVersion'}) do
  local v = str(r[k])
  if v ~= '' then table.insert(parts, '"' .. k .. '":' .. cjson.encode(v)) end
end
if ARGV[5] ~= '0' then table.insert(parts, '"version":' .. ARGV[5]) end
local conn_version = num(r['connVersion'])
if conn_version ~= 0 then
  table.insert(parts, '"connVersion":' .. string.format('%.0f', conn_version))
end
redis.call('HSET', KEYS[1], ARGV[1], '{' .. table.concat(parts, ',') .. '}')
return 1
"#;

static PUT_ROUTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{LUA_HELPERS}{PUT_ROUTE_BODY}")));
static SET_ROUTE_OFFLINE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{LUA_HELPERS}{SET_ROUTE_OFFLINE_BODY}")));

/// What the put-route script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written; the raw value it replaced.
    Written(Option<String>),
    /// Not written: the raw value stored, a newer bind.
    Stale(String),
}

/// Runs the put-route script.
pub async fn put_route<C: ConnectionLike>(
    conn: &mut C,
    user_id: &str,
    client_type: ClientType,
    route: &RouteRecord,
    json: &str,
) -> RedisResult<PutOutcome> {
    let (written, stored): (i64, Option<String>) = PUT_ROUTE
        .key(keys::user_routes(user_id))
        .arg(keys::client_type_field(client_type))
        .arg(json)
        .arg(&route.device_id)
        .arg(if route.conn_id.is_some() { "1" } else { "0" })
        .arg(route.conn_id.as_deref().unwrap_or(""))
        .arg(route.version)
        .arg(route.conn_version)
        .invoke_async(conn)
        .await?;
    Ok(match (written, stored) {
        (0, Some(current)) => PutOutcome::Stale(current),
        (_, previous) => PutOutcome::Written(previous),
    })
}

/// Runs the offline-mark script; true when the route went offline.
pub async fn set_route_offline<C: ConnectionLike>(
    conn: &mut C,
    user_id: &str,
    client_type: ClientType,
    node: &NodeAddr,
    conn_id: &str,
    version: u64,
) -> RedisResult<bool> {
    let taken: i64 = SET_ROUTE_OFFLINE
        .key(keys::user_routes(user_id))
        .arg(keys::client_type_field(client_type))
        .arg(&node.host)
        .arg(node.port)
        .arg(conn_id)
        .arg(version)
        .invoke_async(conn)
        .await?;
    Ok(taken == 1)
}
