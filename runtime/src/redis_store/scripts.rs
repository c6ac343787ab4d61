//! The route writes that must be atomic, as Lua scripts run inside Redis, implementing the
//! rules of `StoreState` (pushgate-core's `store_state`): a versioned `PutRoute`
//! ([`RouteRecord::supersedes`], [`RouteRecord::knows_ended`]), a guarded `SetRouteOffline`
//! ([`RouteRecord::take_offline`], else [`RouteRecord::remember_ended`]) and a guarded
//! `RestoreRoute` ([`RouteRecord::is_bind`]), each refused when it comes on a store link its
//! node has replaced and the route remembers the newer one ([`RouteRecord::is_fenced`], else
//! [`RouteRecord::note_link`]). MPush reads a route, decides, then writes it (HGET then
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
use pushgate_core::store::{
    RouteRecord, MAX_ENDED_BINDS, MAX_ENDED_BINDS_PER_NODE, MAX_LINKS, MAX_LINK_EPOCH,
};
use pushgate_core::NodeAddr;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;

/// Largest version the scripts compare exactly (2^53: Lua numbers are doubles).
pub const MAX_EXACT_VERSION: u64 = 1 << 53;

/// Helpers shared by the scripts: a decoded field as a string or a number (the empty value
/// when absent, null or of another type, as serde's defaults give for absent keys); the rules
/// of [`RouteRecord`] on a decoded route (`is_on`, `is_bind`, `knows_ended`,
/// `remember_ended`, `fence_of`, `note_link`); and the route's JSON in serde's key order (MPush's order for MPush's
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
local function links_of(r)
  if type(r['links']) == 'table' then return r['links'] end
  return {}
end
local function fence_of(r, host, port, epoch)
  if epoch == 0 then return nil end
  for _, l in ipairs(links_of(r)) do
    if type(l) == 'table' and str(l['host']) == host and num(l['port']) == port and num(l['epoch']) > epoch
      and num(l['epoch']) <= MAX_LINK_EPOCH then
      return num(l['epoch'])
    end
  end
  return nil
end
local function note_link(r, host, port, epoch)
  if epoch == 0 or epoch > MAX_LINK_EPOCH then return false end
  local links = links_of(r)
  local at = nil
  for i, l in ipairs(links) do
    if type(l) == 'table' and str(l['host']) == host and num(l['port']) == port then
      if num(l['epoch']) >= epoch and num(l['epoch']) <= MAX_LINK_EPOCH then return false end
      at = i
      break
    end
  end
  if at ~= nil then
    table.remove(links, at)
  elseif #links >= MAX_LINKS then
    table.remove(links, 1)
  end
  table.insert(links, {host = host, port = port, epoch = epoch})
  r['links'] = links
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
  local links = links_of(r)
  if #links > 0 then
    local items = {}
    for _, l in ipairs(links) do
      table.insert(items, '{"host":' .. cjson.encode(str(l['host'])) .. ',"port":' .. int(num(l['port']))
        .. ',"epoch":' .. int(num(l['epoch'])) .. '}')
    end
    table.insert(parts, '"links":[' .. table.concat(items, ',') .. ']')
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, new route JSON, new deviceId, '1' when the new
/// route has a connId, that connId, new version, new connVersion, new host, new port, the
/// clocks' margin (`MAX_CLOCK_DISAGREEMENT_US`) between connection ages of the same device
/// stamped by two nodes, and the epoch of the link it came on (0: none).
/// Returns `{2, nil, the newer link's epoch}` when the op came on a link its node has replaced
/// ([`RouteRecord::is_fenced`]), `{1, previous or nil, 0}` when written, `{0, current, 0}` when
/// the stored route is the newer bind ([`RouteRecord::supersedes`]) or knows this bind ended ([`RouteRecord::knows_ended`]).
/// The written route keeps the stored route's ended binds and links, and remembers the stored
/// route's own bind as ended when it was offline. A route of a versioned bind remembers the
/// link it came on; an unversioned one (MPush's) is written as it came.
const PUT_ROUTE_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[2]
local host = ARGV[8]
local port = tonumber(ARGV[9])
local new_version = tonumber(ARGV[6])
local epoch = tonumber(ARGV[11])
if new_version == 0 then epoch = 0 end
local new = nil
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' then
    local fence = fence_of(old, host, port, epoch)
    if fence then return {2, false, fence} end
    local new_device = ARGV[3]
    local new_has_conn = ARGV[4] == '1'
    local new_conn = ARGV[5]
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
        local same_node = str(old['host']) == host and num(old['port']) == port
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
    if not wins or knows_ended(old, host, port, new_version) then
      if note_link(old, host, port, epoch) then
        redis.call('HSET', KEYS[1], ARGV[1], encode_route(old))
      end
      return {0, cur, 0}
    end
    local carried = {endedBinds = ended_of(old), links = links_of(old)}
    if not is_online(old) and num(old['version']) ~= 0 then
      remember_ended(carried, str(old['host']), num(old['port']), num(old['version']))
    end
    new = cjson.decode(value)
    if #carried['endedBinds'] > 0 or #ended_of(new) > 0 or #carried['links'] > 0 or #links_of(new) > 0 then
      new['endedBinds'] = carried['endedBinds']
      new['links'] = carried['links']
      value = encode_route(new)
    end
  end
end
if epoch ~= 0 then
  if new == nil then new = cjson.decode(value) end
  note_link(new, host, port, epoch)
  value = encode_route(new)
end
redis.call('HSET', KEYS[1], ARGV[1], value)
return {1, cur, 0}
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, node host, node port, connId, version, the epoch
/// of the link it came on (0: none). Returns `{-1, the newer link's epoch}` when the op came on
/// a link its node has replaced ([`RouteRecord::is_fenced`]). Otherwise takes the route
/// offline (rewritten without its connId, MPush's offline marker) when it still names that
/// node and connection with that bind version or an older one (remembering the newer one as
/// ended), and returns `{1}`; else remembers the bind as ended (in the stored route, or in an
/// empty offline route when none is stored) and returns `{0}`. The route remembers the link of a versioned bind's mark.
const SET_ROUTE_OFFLINE_BODY: &str = r#"
local host = ARGV[2]
local port = tonumber(ARGV[3])
local version = tonumber(ARGV[5])
local epoch = tonumber(ARGV[6])
if version == 0 then epoch = 0 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local r
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if not ok or type(decoded) ~= 'table' then return {0} end
  r = decoded
  local fence = fence_of(r, host, port, epoch)
  if fence then return {-1, fence} end
  if is_on(r, host, port) and r['connId'] == ARGV[4] and num(r['version']) <= version then
    r['connId'] = nil
    if num(r['version']) ~= version then remember_ended(r, host, port, version) end
    note_link(r, host, port, epoch)
    redis.call('HSET', KEYS[1], ARGV[1], encode_route(r))
    return {1}
  end
else
  r = {port = 0, host = ''}
end
local changed = remember_ended(r, host, port, version)
if note_link(r, host, port, epoch) or changed or not cur then
  redis.call('HSET', KEYS[1], ARGV[1], encode_route(r))
end
return {0}
"#;

/// KEYS[1] = `mp:ur:{userId}`; ARGV = field, node host, node port, bind version, previous
/// route JSON, its host, port and version, and the epoch of the link it came on (0: none).
/// Returns `{-1, the newer link's epoch}` when the op came on a link its node has replaced
/// ([`RouteRecord::is_fenced`]). Otherwise puts the previous route back while the stored route is that bind
/// ([`RouteRecord::is_bind`]), offline when the stored route knows the previous bind ended,
/// keeping the stored ended binds and links and remembering the undone bind as ended (a late
/// write of it then stays out). Returns `{2}` when the restored route is online, `{1}` when
/// offline, `{0}` when nothing changed but the link the route remembers.
const RESTORE_ROUTE_BODY: &str = r#"
local host = ARGV[2]
local port = tonumber(ARGV[3])
local version = tonumber(ARGV[4])
local epoch = tonumber(ARGV[9])
if version == 0 then epoch = 0 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0} end
local ok, r = pcall(cjson.decode, cur)
if not ok or type(r) ~= 'table' then return {0} end
local fence = fence_of(r, host, port, epoch)
if fence then return {-1, fence} end
if not is_bind(r, host, port, version) then
  if note_link(r, host, port, epoch) then redis.call('HSET', KEYS[1], ARGV[1], encode_route(r)) end
  return {0}
end
local previous = cjson.decode(ARGV[5])
if knows_ended(r, ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])) then previous['connId'] = nil end
previous['endedBinds'] = ended_of(r)
previous['links'] = links_of(r)
remember_ended(previous, host, port, version)
note_link(previous, host, port, epoch)
redis.call('HSET', KEYS[1], ARGV[1], encode_route(previous))
if is_online(previous) then return {2} end
return {1}
"#;

/// The scripts' source: the helpers (with [`MAX_ENDED_BINDS`], [`MAX_ENDED_BINDS_PER_NODE`],
/// [`MAX_LINKS`] and [`MAX_LINK_EPOCH`]) before a body.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "local MAX_ENDED = {MAX_ENDED_BINDS}\nlocal MAX_ENDED_PER_NODE = {MAX_ENDED_BINDS_PER_NODE}\nlocal MAX_LINKS = {MAX_LINKS}\nlocal MAX_LINK_EPOCH = {MAX_LINK_EPOCH}\n{LUA_HELPERS}{body}"
    ))
}

static PUT_ROUTE: LazyLock<Script> = LazyLock::new(|| script(PUT_ROUTE_BODY));
static SET_ROUTE_OFFLINE: LazyLock<Script> = LazyLock::new(|| script(SET_ROUTE_OFFLINE_BODY));
static RESTORE_ROUTE: LazyLock<Script> = LazyLock::new(|| script(RESTORE_ROUTE_BODY));

/// What the put-route script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Not applied: the op came on a link its node has replaced; the newer link's epoch.
    Fenced(u64),
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
    link_epoch: u64,
) -> RedisResult<PutOutcome> {
    let (written, stored, fence): (i64, Option<String>, u64) = PUT_ROUTE
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
        .arg(link_epoch)
        .invoke_async(conn)
        .await?;
    Ok(match (written, stored) {
        (2, _) => PutOutcome::Fenced(fence),
        (0, Some(current)) => PutOutcome::Stale(current),
        (_, previous) => PutOutcome::Written(previous),
    })
}

/// What the offline-mark script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Not applied: the op came on a link its node has replaced; the newer link's epoch.
    Fenced(u64),
    /// The route went offline.
    Offline,
    /// The bind is remembered as ended (or was already).
    Remembered,
}

/// Runs the offline-mark script.
pub async fn set_route_offline<C: ConnectionLike>(
    conn: &mut C,
    user_id: &str,
    client_type: ClientType,
    node: &NodeAddr,
    conn_id: &str,
    version: u64,
    link_epoch: u64,
) -> RedisResult<Marked> {
    let taken: Vec<i64> = SET_ROUTE_OFFLINE
        .key(keys::user_routes(user_id))
        .arg(keys::client_type_field(client_type))
        .arg(&node.host)
        .arg(node.port)
        .arg(conn_id)
        .arg(version)
        .arg(link_epoch)
        .invoke_async(conn)
        .await?;
    Ok(match taken[..] {
        [-1, fence] => Marked::Fenced(u64::try_from(fence).unwrap_or(0)),
        [1] => Marked::Offline,
        _ => Marked::Remembered,
    })
}

/// What the restore script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Not applied: the op came on a link its node has replaced; the newer link's epoch.
    Fenced(u64),
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
    link_epoch: u64,
) -> RedisResult<Restored> {
    let outcome: Vec<i64> = RESTORE_ROUTE
        .key(keys::user_routes(user_id))
        .arg(keys::client_type_field(client_type))
        .arg(&node.host)
        .arg(node.port)
        .arg(version)
        .arg(previous_json)
        .arg(&previous.host)
        .arg(previous.port)
        .arg(previous.version)
        .arg(link_epoch)
        .invoke_async(conn)
        .await?;
    Ok(match outcome[..] {
        [-1, fence] => Restored::Fenced(u64::try_from(fence).unwrap_or(0)),
        [2] => Restored::Online,
        [1] => Restored::Offline,
        _ => Restored::Nothing,
    })
}
