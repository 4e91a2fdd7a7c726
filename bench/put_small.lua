-- wrk script for bench/peers.py. Arguments (after --): METHOD PATH_PREFIX UNIQUE(0|1) [BODY_FILE].
-- METHOD "GET": plain GETs of PATH_PREFIX. Otherwise every request sends the body (BODY_FILE's
-- content, or 4 KiB of random bytes) to a fresh random name under PATH_PREFIX; with UNIQUE=1
-- every body differs (its first bytes are the request's own name), so no server can
-- deduplicate them.
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

function init(args)
  method, prefix, unique = args[1], args[2], args[3] == "1"
  math.randomseed(os.time() * 1000 + tid)
  if args[4] then
    local f = assert(io.open(args[4], "rb"))
    base = f:read("*a")
    f:close()
  else
    local bytes = {}
    for i = 1, 4096 do bytes[i] = string.char(math.random(0, 255)) end
    base = table.concat(bytes)
  end
  counter = 0
end

function request()
  if method == "GET" then
    return wrk.format("GET", prefix)
  end
  counter = counter + 1
  local name = string.format("t%02d-%08x-%08x", tid, counter, math.random(0, 0x7fffffff))
  local body = base
  if unique then
    body = name .. string.sub(base, #name + 1)
  end
  return wrk.format(method, prefix .. name, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %f, \"non2xx\": %d, \"errors\": %d, \"p50\": %f, \"p99\": %f}\n",
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
