"""The Lua scripts behind fleet names and host leases: every decision is one of them.

    scripts = Scripts(client, settings)
    reply = scripts.run("checkout", host, epoch, "p", "4242", "123456:boot-id", "")
    # {'status': 'OK', 'name': 'furiosa', 'new': True}

Every script gets the same ten keys (`KEY_NAMES`, all under the fleet's namespace) and
answers one JSON object whose `status` says what happened. Time is the server's
(`redis.call('TIME')`, milliseconds); Redis 7 replicates a script's effects, so reading
the clock inside a script is safe. redis-py's `Script` loads a script again after
NOSCRIPT (a restarted server), so callers never see that error.

The data (see docs/design-fleet-names.md):

- `hosts`   HASH host -> {epoch, token, expires, lease, pid, joined, renewed, state}
- `epoch`   counter; every join takes the next value
- `held`    HASH name -> {h: host, o: [owner, ...], q: quarantined until (ms) or absent}
            an owner is ["a"] (anonymous), ["s", str] or ["p", pid, "ticks:boot_id"]
- `owners`  HASH "p:<host>:<pid>" | "s:<str>" -> name   (the owner index)
- `free`    ZSET name -> position (the highest score is the top of the LIFO stack)
- `quarantine` ZSET name -> until (ms)
- `known`   SET every name the fleet accepted (the source's `used`)
- `lost`    HASH name -> {h, o}: a gone host's name whose quarantine ended (for its rejoin)
- `keys`    HASH "<host>:<key>" -> name; `namekeys` HASH name -> "<host>:<key>"
"""

from __future__ import annotations

import json
from typing import Any

import redis

from actors.fleet._connection import FleetSettings

__all__ = ["KEY_NAMES", "SCRIPTS", "Scripts"]

KEY_NAMES = (
    ("hosts",),
    ("epoch",),
    ("names", "held"),
    ("names", "owners"),
    ("names", "free"),
    ("names", "quarantine"),
    ("names", "known"),
    ("names", "lost"),
    ("names", "keys"),
    ("names", "namekeys"),
)

_PRELUDE = r"""
local HOSTS, EPOCH, HELD, OWNERS, FREE, QUAR, KNOWN, LOST, KEYN, NKEY =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)

local function reply(t) return cjson.encode(t) end

local function host_record(host)
  local raw = redis.call('HGET', HOSTS, host)
  if raw then return cjson.decode(raw) end
  return nil
end

-- nil when `host` may act with `epoch` now; else 'STALE' or 'EXPIRED'
local function check_host(host, epoch)
  local rec = host_record(host)
  if not rec or rec.epoch ~= epoch or rec.state ~= 'live' then return 'STALE' end
  if rec.expires <= NOW then return 'EXPIRED' end
  return nil
end

local function get_rec(name)
  local raw = redis.call('HGET', HELD, name)
  if raw then return cjson.decode(raw) end
  return nil
end

local function put_rec(name, rec) redis.call('HSET', HELD, name, cjson.encode(rec)) end

local function okey(host, entry)
  if entry[1] == 'p' then return 'p:' .. host .. ':' .. tostring(entry[2]) end
  if entry[1] == 's' then return 's:' .. entry[2] end
  return nil
end

local function make_entry(kind, value, start)
  if kind == 'p' then return {'p', tonumber(value), start} end
  if kind == 's' then return {'s', value} end
  return {'a'}
end

local function same_process(recorded, given)
  return recorded == '' or given == '' or recorded == given
end

local function push_top(name)
  local top = redis.call('ZREVRANGE', FREE, 0, 0, 'WITHSCORES')
  local score = 1
  if top[2] then score = tonumber(top[2]) + 1 end
  redis.call('ZADD', FREE, score, name)
end

local function leave_key(name)
  local k = redis.call('HGET', NKEY, name)
  if k then
    redis.call('HDEL', NKEY, name)
    redis.call('HDEL', KEYN, k)
  end
end

local function remember(kk, name)
  local previous = redis.call('HGET', KEYN, kk)
  if previous == name then return end
  if previous then redis.call('HDEL', NKEY, previous) end
  local other = redis.call('HGET', NKEY, name)
  if other then redis.call('HDEL', KEYN, other) end
  redis.call('HSET', KEYN, kk, name)
  redis.call('HSET', NKEY, name, kk)
end

-- take `name` off the free stack (it leaves its key's memory)
local function take(name)
  redis.call('ZREM', FREE, name)
  leave_key(name)
end

local function find_owner(rec, key)
  for i, entry in ipairs(rec.o) do
    if okey(rec.h, entry) == key then return i end
  end
  return nil
end

-- remove owner index `key` from `name`; true when that left the name free (on top)
local function drop_owner(name, rec, key)
  local i = find_owner(rec, key)
  redis.call('HDEL', OWNERS, key)
  if not i then return false end
  table.remove(rec.o, i)
  if #rec.o == 0 then
    redis.call('HDEL', HELD, name)
    push_top(name)
    return true
  end
  put_rec(name, rec)
  return false
end

local function hold(name, rec, entry, key)
  table.insert(rec.o, entry)
  put_rec(name, rec)
  if key then redis.call('HSET', OWNERS, key, name) end
end

-- names whose quarantine ended go back to the pool; their gone host remembers them in LOST
local function release_quarantine()
  local due = redis.call('ZRANGEBYSCORE', QUAR, '-inf', NOW)
  for _, name in ipairs(due) do
    local rec = get_rec(name)
    redis.call('ZREM', QUAR, name)
    if rec and rec.q then
      redis.call('HSET', LOST, name, cjson.encode({h = rec.h, o = rec.o}))
      redis.call('HDEL', HELD, name)
      push_top(name)
    end
  end
end

-- a host whose lease ran out is gone: its names are kept from everyone for one more lease,
-- counted from when the fleet notices (a store that was down itself gives the host that time)
local function expire_host(host, hrec)
  hrec.state = 'gone'
  redis.call('HSET', HOSTS, host, cjson.encode(hrec))
  local until_ms = math.max(hrec.expires, NOW) + hrec.lease
  local all = redis.call('HGETALL', HELD)
  for i = 1, #all, 2 do
    local name = all[i]
    local rec = cjson.decode(all[i + 1])
    if rec.h == host and not rec.q then
      for _, entry in ipairs(rec.o) do
        local key = okey(host, entry)
        if key and redis.call('HGET', OWNERS, key) == name then redis.call('HDEL', OWNERS, key) end
      end
      rec.q = until_ms
      put_rec(name, rec)
      redis.call('ZADD', QUAR, until_ms, name)
    end
  end
end

-- the first names of the free stack from the top, skipping those a worker key remembers
local function pick()
  local top = redis.call('ZREVRANGE', FREE, 0, 63)
  if #top == 0 then return nil end
  for _, name in ipairs(top) do
    if redis.call('HEXISTS', NKEY, name) == 0 then return name end
  end
  return top[1]
end

-- the name `entry` holds already (an int owner's reused pid loses its old name first)
local function current_name(host, entry, key, start)
  if not key then return nil end
  local name = redis.call('HGET', OWNERS, key)
  if not name then return nil end
  local rec = get_rec(name)
  if not rec then
    redis.call('HDEL', OWNERS, key)
    return nil
  end
  if entry[1] == 'p' then
    local i = find_owner(rec, key)
    if i and not same_process(rec.o[i][3], start) then
      drop_owner(name, rec, key)
      return nil
    end
    if i and rec.o[i][3] == '' and start ~= '' then
      rec.o[i][3] = start
      put_rec(name, rec)
    end
  end
  return name
end

local function checkout_fresh(host, entry, key)
  local name = pick()
  if not name then return nil end
  take(name)
  hold(name, {h = host, o = {}}, entry, key)
  return name
end
"""

_BODIES: dict[str, str] = {
    # ARGV: host, epoch, kind, value, start
    "checkout": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
release_quarantine()
local entry = make_entry(ARGV[3], ARGV[4], ARGV[5])
local key = okey(host, entry)
local name = current_name(host, entry, key, ARGV[5])
if name then return reply({status = 'OK', name = name, new = false}) end
name = checkout_fresh(host, entry, key)
if not name then return reply({status = 'EMPTY'}) end
return reply({status = 'OK', name = name, new = true})
""",
    # ARGV: host, epoch, worker key, kind, value, start, dead owners as JSON [[pid, start], ...]
    "key_checkout": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
release_quarantine()
local kk = host .. ':' .. ARGV[3]
local entry = make_entry(ARGV[4], ARGV[5], ARGV[6])
local key = okey(host, entry)
local name = redis.call('HGET', KEYN, kk)
if name then
  for _, dead in ipairs(cjson.decode(ARGV[7])) do
    local dkey = 'p:' .. host .. ':' .. tostring(dead[1])
    local rec = get_rec(name)
    if rec and rec.h == host and redis.call('HGET', OWNERS, dkey) == name then
      local i = find_owner(rec, dkey)
      if i and rec.o[i][3] == dead[2] then drop_owner(name, rec, dkey) end
    end
  end
  local rec = get_rec(name)
  if rec then
    if rec.h ~= host or rec.q then
      name = nil
    else
      for _, holder in ipairs(rec.o) do
        if holder[1] ~= 's' then name = nil end
      end
    end
  end
end
if key then
  local previous = redis.call('HGET', OWNERS, key)
  if previous and previous ~= name then
    local prec = get_rec(previous)
    if prec then drop_owner(previous, prec, key) else redis.call('HDEL', OWNERS, key) end
  end
end
if name then
  local rec = get_rec(name)
  if not rec then
    take(name)
    rec = {h = host, o = {}}
  end
  if not key or redis.call('HGET', OWNERS, key) ~= name then hold(name, rec, entry, key) end
  remember(kk, name)
  return reply({status = 'OK', name = name, new = true})
end
name = checkout_fresh(host, entry, key)
if not name then return reply({status = 'EMPTY'}) end
remember(kk, name)
return reply({status = 'OK', name = name, new = true})
""",
    # ARGV: host, epoch, name
    "checkin": r"""
local host, epoch, name = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
local rec = get_rec(name)
if not rec or rec.q then return reply({status = 'NOT_CHECKED_OUT'}) end
for _, entry in ipairs(rec.o) do
  local key = okey(rec.h, entry)
  if key and redis.call('HGET', OWNERS, key) == name then redis.call('HDEL', OWNERS, key) end
end
redis.call('HDEL', HELD, name)
push_top(name)
return reply({status = 'RETURNED', host = rec.h})
""",
    # ARGV: host, epoch, name, kind, value, start
    "associate": r"""
local host, epoch, name = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
release_quarantine()
local entry = make_entry(ARGV[4], ARGV[5], ARGV[6])
local key = okey(host, entry)
local rec = get_rec(name)
if rec and rec.q then return reply({status = 'QUARANTINED', holder = rec.h}) end
if rec and rec.h ~= host then return reply({status = 'ACROSS', holder = rec.h}) end
if key then
  local previous = redis.call('HGET', OWNERS, key)
  if previous == name and rec then
    local i = find_owner(rec, key)
    if i then
      if entry[1] == 'p' and ARGV[6] ~= '' and rec.o[i][3] ~= ARGV[6] then
        rec.o[i][3] = ARGV[6]
        put_rec(name, rec)
      end
      return reply({status = 'OK', restored = false})
    end
  end
  if previous then
    local prec = get_rec(previous)
    if prec then drop_owner(previous, prec, key) else redis.call('HDEL', OWNERS, key) end
  end
end
rec = get_rec(name)
local restored = false
if not rec then
  restored = true
  if redis.call('ZSCORE', FREE, name) then
    take(name)
  else
    redis.call('SADD', KNOWN, name)
  end
  redis.call('HDEL', LOST, name)
  rec = {h = host, o = {}}
elseif not key then
  for _, holder in ipairs(rec.o) do
    if holder[1] == 'a' then return reply({status = 'OK', restored = false}) end
  end
end
hold(name, rec, entry, key)
return reply({status = 'OK', restored = restored})
""",
    # ARGV: host, epoch, kind, value
    "dissociate": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
local key = okey(host, make_entry(ARGV[3], ARGV[4], ''))
local name = key and redis.call('HGET', OWNERS, key)
if not name then return reply({status = 'OK'}) end
local rec = get_rec(name)
if not rec then
  redis.call('HDEL', OWNERS, key)
  return reply({status = 'OK'})
end
local returned = drop_owner(name, rec, key)
return reply({status = 'OK', name = name, returned = returned})
""",
    # ARGV: host, epoch, JSON [[pid, start], ...] proven dead on this host
    "drop_dead": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
local returned = {}
for _, dead in ipairs(cjson.decode(ARGV[3])) do
  local key = 'p:' .. host .. ':' .. tostring(dead[1])
  local name = redis.call('HGET', OWNERS, key)
  local rec = name and get_rec(name)
  if rec then
    local i = find_owner(rec, key)
    if i and rec.o[i][3] == dead[2] then
      if drop_owner(name, rec, key) then table.insert(returned, name) end
    end
  end
end
return reply({status = 'OK', returned = returned})
""",
    # ARGV: host, epoch, name, ...: new names go under the stack, the first handed out first
    "accept": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
local bottom = redis.call('ZRANGE', FREE, 0, 0, 'WITHSCORES')
local base = 0
if bottom[2] then base = tonumber(bottom[2]) end
local accepted = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  if redis.call('SADD', KNOWN, name) == 1 then
    table.insert(accepted, name)
    redis.call('ZADD', FREE, base - #accepted, name)
  end
end
return reply({status = 'OK', accepted = accepted})
""",
    # ARGV: host, kind, value, start (a read: no epoch)
    "name_of": r"""
local host = ARGV[1]
local entry = make_entry(ARGV[2], ARGV[3], ARGV[4])
local key = okey(host, entry)
local name = key and redis.call('HGET', OWNERS, key)
if not name then return reply({status = 'OK'}) end
local rec = get_rec(name)
if not rec then return reply({status = 'OK'}) end
local i = find_owner(rec, key)
if not i then return reply({status = 'OK'}) end
if entry[1] == 'p' and not same_process(rec.o[i][3], ARGV[4]) then return reply({status = 'OK'}) end
return reply({status = 'OK', name = name, holder = rec.h})
""",
    # ARGV: host: this host's held names and their owners (a read)
    "host_names": r"""
local host = ARGV[1]
local names = {}
local all = redis.call('HGETALL', HELD)
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.h == host and not rec.q then table.insert(names, {all[i], rec.o}) end
end
return reply({status = 'OK', names = names})
""",
    "stats": r"""
return reply({
  status = 'OK',
  available = redis.call('ZCARD', FREE),
  held = redis.call('HLEN', HELD),
  quarantined = redis.call('ZCARD', QUAR),
  known = redis.call('SCARD', KNOWN),
  now = NOW,
})
""",
    # ARGV: host, epoch
    "reset": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
redis.call('DEL', HELD, OWNERS, FREE, QUAR, KNOWN, LOST, KEYN, NKEY)
return reply({status = 'OK'})
""",
    # ARGV: host, epoch, JSON listed names, JSON {name: [live pid, ...]} for unlisted names of
    # this host held by int owners not proven dead
    "reconcile": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local bad = check_host(host, epoch)
if bad then return reply({status = bad}) end
release_quarantine()
local listed = {}
for _, name in ipairs(cjson.decode(ARGV[3])) do listed[name] = true end
local live = cjson.decode(ARGV[4])
local kept, refused = {}, {}
local all = redis.call('HGETALL', HELD)
for i = 1, #all, 2 do
  local name = all[i]
  local rec = cjson.decode(all[i + 1])
  if rec.h == host and not rec.q and not listed[name] then
    local pids = {}
    for _, pid in ipairs(live[name] or {}) do pids[tostring(pid)] = true end
    local remaining = {}
    for _, entry in ipairs(rec.o) do
      if entry[1] == 'p' and pids[tostring(entry[2])] then
        table.insert(remaining, entry)
      else
        local key = okey(host, entry)
        if key then redis.call('HDEL', OWNERS, key) end
      end
    end
    if #remaining > 0 then
      rec.o = remaining
      put_rec(name, rec)
      table.insert(kept, name)
    else
      redis.call('HDEL', HELD, name)
      push_top(name)
    end
  end
end
for name, _ in pairs(listed) do
  local rec = get_rec(name)
  if rec and (rec.h ~= host or rec.q) then
    table.insert(refused, name)
  else
    if not rec then
      if redis.call('ZSCORE', FREE, name) then take(name) else redis.call('SADD', KNOWN, name) end
      redis.call('HDEL', LOST, name)
      rec = {h = host, o = {}}
    end
    local anonymous = false
    for _, holder in ipairs(rec.o) do if holder[1] == 'a' then anonymous = true end end
    if not anonymous then hold(name, rec, {'a'}, nil) end
  end
end
return reply({status = 'OK', kept = kept, refused = refused})
""",
    # ARGV: host, token, lease_ms, pid
    "join": r"""
local host, token, lease, pid = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local old = host_record(host)
if old and old.state == 'live' then
  if old.expires > NOW and old.token ~= token then
    return reply({status = 'IN_USE', pid = old.pid, epoch = old.epoch, token = old.token})
  end
  if old.expires <= NOW then expire_host(host, old) end
end
release_quarantine()
local epoch = redis.call('INCR', EPOCH)
redis.call('HSET', HOSTS, host, cjson.encode({
  epoch = epoch, token = token, expires = NOW + lease, lease = lease, pid = pid,
  joined = NOW, renewed = NOW, state = 'live'}))
local reclaimed, conflicts = 0, {}
local function reclaim(name, rec)
  local owners = {}
  for _, entry in ipairs(rec.o) do
    local key = okey(host, entry)
    local other = key and redis.call('HGET', OWNERS, key)
    if not other or other == name then
      table.insert(owners, entry)
      if key then redis.call('HSET', OWNERS, key, name) end
    end
  end
  if #owners == 0 then
    redis.call('HDEL', HELD, name)
    push_top(name)
    return
  end
  put_rec(name, {h = host, o = owners})
  reclaimed = reclaimed + 1
end
local all = redis.call('HGETALL', HELD)
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.h == host and rec.q then
    redis.call('ZREM', QUAR, all[i])
    reclaim(all[i], rec)
  end
end
local lost = redis.call('HGETALL', LOST)
for i = 1, #lost, 2 do
  local name = lost[i]
  local mine = cjson.decode(lost[i + 1])
  if mine.h == host then
    redis.call('HDEL', LOST, name)
    local rec = get_rec(name)
    if rec then
      table.insert(conflicts, {name = name, held_by = rec.h, owners = mine.o})
    elseif redis.call('ZSCORE', FREE, name) then
      take(name)
      reclaim(name, mine)
    end
  end
end
return reply({status = 'OK', epoch = epoch, reclaimed = reclaimed, conflicts = conflicts})
""",
    # ARGV: host, epoch, lease_ms
    "renew": r"""
local host, epoch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rec = host_record(host)
if not rec or rec.epoch ~= epoch or rec.state ~= 'live' then return reply({status = 'STALE'}) end
if rec.expires <= NOW then
  expire_host(host, rec)
  return reply({status = 'EXPIRED'})
end
rec.expires = NOW + lease
rec.lease = lease
rec.renewed = NOW
redis.call('HSET', HOSTS, host, cjson.encode(rec))
local expired = {}
local all = redis.call('HGETALL', HOSTS)
for i = 1, #all, 2 do
  local other = cjson.decode(all[i + 1])
  if other.state == 'live' and other.expires <= NOW then
    expire_host(all[i], other)
    table.insert(expired, all[i])
  end
end
release_quarantine()
return reply({status = 'OK', expired = expired, expires = rec.expires, now = NOW})
""",
    # ARGV: host, epoch: a graceful leave; the names wait one lease for this host's return
    "leave": r"""
local host, epoch = ARGV[1], tonumber(ARGV[2])
local rec = host_record(host)
if not rec or rec.epoch ~= epoch or rec.state ~= 'live' then return reply({status = 'STALE'}) end
rec.expires = NOW
expire_host(host, rec)
return reply({status = 'OK'})
""",
    # a read for `status`: the hosts, the server's time, the quarantine and conflicts memory
    "fleet": r"""
release_quarantine()
local hosts = {}
local all = redis.call('HGETALL', HOSTS)
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  rec.host = all[i]
  rec.token = nil
  table.insert(hosts, rec)
end
local held = {}
local names = redis.call('HGETALL', HELD)
for i = 1, #names, 2 do
  table.insert(held, {names[i], cjson.decode(names[i + 1])})
end
return reply({status = 'OK', now = NOW, hosts = hosts, held = held,
  available = redis.call('ZCARD', FREE), known = redis.call('SCARD', KNOWN)})
""",
}

#: Scripts that only read (they still run `release_quarantine` where noted: a write).
SCRIPTS = tuple(_BODIES)


class Scripts:
    """The fleet's scripts registered on one client; `run(name, *argv)` answers their JSON."""

    def __init__(self, client: redis.Redis, settings: FleetSettings) -> None:
        self.client = client
        self.keys = [settings.key(*parts) for parts in KEY_NAMES]
        self._scripts = {name: client.register_script(_PRELUDE + body) for name, body in _BODIES.items()}

    def run(self, name: str, *argv: Any) -> dict[str, Any]:
        """Run script `name`; redis errors propagate (the caller turns them into FleetUnavailable)."""
        raw = self._scripts[name](keys=self.keys, args=[str(arg) for arg in argv])
        result = json.loads(raw)
        if not isinstance(result, dict) or "status" not in result:
            raise redis.ResponseError(f"fleet script {name} answered {raw!r}")
        return result


def as_list(value: Any) -> list[Any]:
    """cjson encodes an empty Lua table as `{}`: read it as an empty list."""
    if isinstance(value, list):
        return value
    return []
