//! The route writes that must be atomic, as Lua scripts run inside Redis, implementing the
//! rules of `StoreState` (pushgate-core's `store_state`): a versioned `PutRoute`
//! ([`RouteRecord::supersedes`], [`RouteRecord::knows_ended`]), a guarded `SetRouteOffline`
//! ([`RouteRecord::take_offline`], else [`RouteRecord::remember_ended`]) and a guarded
//! `RestoreRoute` ([`RouteRecord::is_bind`]). MPush reads a route, decides, then writes it (HGET then
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
use pushgate_core::store::{RouteRecord, MAX_ENDED_BINDS, MAX_ENDED_BINDS_PER_NODE};
use pushgate_core::NodeAddr;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;

/// Largest version the scripts compare exactly (2^53: Lua numbers are doubles).
pub const MAX_EXACT_VERSION: u64 = 1 << 53;

/// Helpers shared by the scripts: a decoded field as a string or a number (the empty value
/// when absent, null or of another type, as serde's defaults give for absent keys); the rules
/// of [`RouteRecord`] on a decoded route (`is_on`, `is_bind`, `knows_ended`,
/// `remember_ended`); and the route's JSON in serde's key order (MPush's order for MPush's
/// keys), integers written exactly.
const LUA_HELPERS: &str = r#"
local function str(v) if type(v) == 'string' then return v end return '' end
local function num(v) if type(v) == 'number' then return v end return 0 end
local function int(n) return string.format('%.0f', n) end
local function ended_of(r)
  if type(r['endedBinds']) == 'table' then return r['endedBinds'] end
  return {}
end
local function is_on(r, host, port) return str(r['host']) == host and num(r['port']) == port end
local function is_bind(r, host, port, version) return is_on(r, host, port) and num(r['version']) == version end
local function is_online(r) return type(r['connId']) == 'string' end
local function knows_ended(r, host, port, version)
  if is_bind(r, host, port, version) and not is_online(r) then return true end
  for _, e in ipairs(ended_of(r)) do
    if type(e) == 'table' and str(e['host']) == host and num(e['port']) == port and num(e['version']) == version then
      return true
    end
  end
  return false
end
local function remember_ended(r, host, port, version)
  if knows_ended(r, host, port, version) then return false end
  local ended = ended_of(r)
  local of_node, oldest = 0, nil
  for i, e in ipairs(ended) do
    if type(e) == 'table' and str(e['host']) == host and num(e['port']) == port then
      of_node = of_node + 1
      if oldest == nil then oldest = i end
    end
  end
  if of_node >= MAX_ENDED_PER_NODE then
    table.remove(ended, oldest)
  elseif #ended >= MAX_ENDED then
    table.remove(ended, 1)
  end
  table.insert(ended, {host = host, port = port, version = version})
  r['endedBinds'] = ended
  return true
end
local function encode_route(r)
  local parts = {'"port":' .. int(num(r['port'])), '"host":' .. cjson.encode(str(r['host']))}
  for _, k in ipairs({'deviceId', 'osName', 'clientVersion'}) do
    local v = str(r[k])
    if v ~= '' then table.insert(parts, '"' .. k .. '":' .. cjson.encode(v)) end
  end
  if is_online(r) then table.insert(parts, '"connId":' .. cjson.encode(r['connId'])) end
  if num(r['version']) ~= 0 then table.insert(parts, '"version":' .. int(r['version'])) end
  if num(r['connVersion']) ~= 0 then table.insert(parts, '"connVersion":' .. int(r['connVersion'])) end
  local ended = ended_of(r)
  if #ended > 0 then
    local items = {}
    for _, e in ipairs(ended) do
      table.insert(items, '{"host":' .. cjson.encode(str(e['host'])) .. ',"port":' .. int(num(e['port']))
        .. ',"version":' .. int(num(e['version'])) .. '}')
    end
    table.insert(parts, '"endedBinds":[' .. table.concat(items, ',') .. ']')
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, new route JSON, new deviceId, '1' when the new
/// route has a connId, that connId, new version, new connVersion, new host, new port, and
/// the clocks' margin (`MAX_CLOCK_DISAGREEMENT_US`) between connection ages of the same
/// device stamped by two nodes.
/// Returns `{1, previous or nil}` when written, `{0, current}` when the stored route is the
/// newer bind ([`RouteRecord::supersedes`]) or knows this bind ended
/// ([`RouteRecord::knows_ended`]). The written route keeps the stored route's ended binds, and
/// remembers the stored route's own bind as ended when it was offline.
const PUT_ROUTE_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[2]
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
      local margin = tonumber(ARGV[10])
      if is_online(old) then
        -- Across nodes the new connection must be newer by more than the clocks disagree.
        local same_node = str(old['host']) == ARGV[8] and num(old['port']) == tonumber(ARGV[9])
        if same_node then
          wins = new_conn_version >= old_conn_version
        else
          wins = new_conn_version >= old_conn_version + margin
        end
      else
        wins = not (new_conn_version + margin < old_conn_version
          and new_version + margin < num(old['version']))
      end
    else
      wins = new_version >= num(old['version'])
    end
    if not wins or knows_ended(old, ARGV[8], tonumber(ARGV[9]), new_version) then
      return {0, cur}
    end
    local new = cjson.decode(value)
    local carried = {endedBinds = ended_of(old)}
    if not is_online(old) and num(old['version']) ~= 0 then
      remember_ended(carried, str(old['host']), num(old['port']), num(old['version']))
    end
    if #carried['endedBinds'] > 0 or #ended_of(new) > 0 then
      new['endedBinds'] = carried['endedBinds']
      value = encode_route(new)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], value)
return {1, cur}
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, node host, node port, connId, version.
/// Takes the route offline (rewritten without its connId, MPush's offline marker) when it
/// still names that node and connection with that bind version or an older one (remembering
/// the newer one as ended), and returns 1. Otherwise remembers
/// the bind as ended (in the stored route, or in an empty offline route when none is stored)
/// and returns 0.
const SET_ROUTE_OFFLINE_BODY: &str = r#"
local host = ARGV[2]
local port = tonumber(ARGV[3])
local version = tonumber(ARGV[5])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local r
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if not ok or type(decoded) ~= 'table' then return 0 end
  r = decoded
  if is_on(r, host, port) and r['connId'] == ARGV[4] and num(r['version']) <= version then
    r['connId'] = nil
    if num(r['version']) ~= version then remember_ended(r, host, port, version) end
    redis.call('HSET', KEYS[1], ARGV[1], encode_route(r))
    return 1
  end
else
  r = {port = 0, host = ''}
end
if remember_ended(r, host, port, version) or not cur then
  redis.call('HSET', KEYS[1], ARGV[1], encode_route(r))
end
return 0
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, node host, node port, bind version, previous
/// route JSON, its host, port and version. Puts the previous route back while the stored route
/// is that bind ([`RouteRecord::is_bind`]), offline when the stored route knows the previous
/// bind ended, keeping the stored ended binds and remembering the undone bind as ended (a late
/// write of it then stays out). Returns 2 when the restored route is online,
/// 1 when offline, 0 when nothing changed.
const RESTORE_ROUTE_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, r = pcall(cjson.decode, cur)
if not ok or type(r) ~= 'table' then return 0 end
if not is_bind(r, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])) then return 0 end
local previous = cjson.decode(ARGV[5])
if knows_ended(r, ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])) then previous['connId'] = nil end
previous['endedBinds'] = ended_of(r)
remember_ended(previous, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], ARGV[1], encode_route(previous))
if is_online(previous) then return 2 end
return 1
"#;

/// The scripts' source: the helpers (with [`MAX_ENDED_BINDS`] and
/// [`MAX_ENDED_BINDS_PER_NODE`]) before a body.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "local MAX_ENDED = {MAX_ENDED_BINDS}\nlocal MAX_ENDED_PER_NODE = {MAX_ENDED_BINDS_PER_NODE}\n{LUA_HELPERS}{body}"
    ))
}

static PUT_ROUTE: LazyLock<Script> = LazyLock::new(|| script(PUT_ROUTE_BODY));
static SET_ROUTE_OFFLINE: LazyLock<Script> = LazyLock::new(|| script(SET_ROUTE_OFFLINE_BODY));
static RESTORE_ROUTE: LazyLock<Script> = LazyLock::new(|| script(RESTORE_ROUTE_BODY));

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
        .arg(&route.host)
        .arg(route.port)
        .arg(pushgate_core::store::MAX_CLOCK_DISAGREEMENT_US)
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

/// What the restore script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    Nothing,
    Online,
    Offline,
}

/// Runs the restore script.
#[allow(clippy::too_many_arguments)]
pub async fn restore_route<C: ConnectionLike>(
    conn: &mut C,
    user_id: &str,
    client_type: ClientType,
    node: &NodeAddr,
    version: u64,
    previous: &RouteRecord,
    previous_json: &str,
) -> RedisResult<Restored> {
    let outcome: i64 = RESTORE_ROUTE
        .key(keys::user_routes(user_id))
        .arg(keys::client_type_field(client_type))
        .arg(&node.host)
        .arg(node.port)
        .arg(version)
        .arg(previous_json)
        .arg(&previous.host)
        .arg(previous.port)
        .arg(previous.version)
        .invoke_async(conn)
        .await?;
    Ok(match outcome {
        2 => Restored::Online,
        1 => Restored::Offline,
        _ => Restored::Nothing,
    })
}
