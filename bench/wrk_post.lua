-- wrk script: POST a prediction of 200 doubles (BENCH_INPUT_SIZE), Clipper's {"input": [...]}.
-- BENCH_BODY=unique: every request's first value is new (a counter per thread, from a start
--   unique to this run of wrk, BENCH_RUN, and thread), so no prediction cache or in-flight
--   sharing can answer it, also not with inputs of an earlier run (the warm-up, say). A counter rather than 200 fresh
--   random doubles: distinct by construction, and the rest of the body is built once, so the
--   load generator spends no CPU formatting numbers that the servers need.
-- BENCH_BODY=fixed: every request is the same.
-- BENCH_BODY_FILE: a file of request bodies, one a line, sent in turn (each thread starts at
--   its own line); for inputs too large to build here, such as images.
-- BENCH_COUNT_DEFAULTS=1: also count the answers that are default outputs (reads every body).
-- done() prints one JSON line of results (bench/load.py reads it).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local unique = os.getenv("BENCH_BODY") == "unique"
local size = tonumber(os.getenv("BENCH_INPUT_SIZE") or "200")

math.randomseed(12345)
local values = {}
for i = 1, size do values[i] = string.format("%.17g", math.random()) end
local fixed = '{"input": [' .. table.concat(values, ",") .. ']}'
local rest = table.concat(values, ",", 2) .. ']}'

-- Each run and thread counts from its own billion (up to 1e13: exact in a double, and
-- printed in full by %d), so no two requests of a benchmark send the same input.
local run = tonumber(os.getenv("BENCH_RUN") or "0")
local threads = 0
local all_threads = {}
function setup(thread)
  threads = threads + 1
  all_threads[threads] = thread
  thread:set("first", (run * 10 + threads) * 1000000000)
end

local body_file = os.getenv("BENCH_BODY_FILE")
local prepared, next_body = {}, 0

function init(args)
  wrk.body = fixed
  count = first or 0
  if body_file then
    for line in io.lines(body_file) do   -- each request formatted once: wrk then only sends
      if #line > 0 then prepared[#prepared + 1] = wrk.format(nil, nil, nil, line) end
    end
    next_body = (first or 0) / 1000000000 * 7
  end
end

defaults = 0
if os.getenv("BENCH_COUNT_DEFAULTS") == "1" then
  function response(status, headers, body)
    if body and string.find(body, '"default"%s*:%s*true') then defaults = defaults + 1 end
  end
end

function request()
  if #prepared > 0 then
    next_body = next_body + 1
    return prepared[next_body % #prepared + 1]
  end
  if unique then
    count = count + 1
    return wrk.format(nil, nil, nil, string.format('{"input": [%d.5,', count) .. rest)
  end
  return wrk.format(nil, nil, nil, fixed)
end

function done(summary, latency, requests)
  local e = summary.errors
  local answered_defaults = 0
  for _, thread in ipairs(all_threads) do answered_defaults = answered_defaults + (thread:get("defaults") or 0) end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %d, "default_answers": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean, answered_defaults))
end
