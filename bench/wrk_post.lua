-- wrk script: POST a prediction of 200 doubles. With BENCH_BODY=unique every request's first
-- value is new (no prediction cache can answer it); otherwise every request is the same.
-- Prints one JSON line of results at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local unique = os.getenv("BENCH_BODY") == "unique"
local size = tonumber(os.getenv("BENCH_INPUT_SIZE") or "200")

math.randomseed(12345)
local values = {}
for i = 1, size do values[i] = string.format("%.17g", math.random()) end
local fixed = '{"input": [' .. table.concat(values, ",") .. ']}'
local rest = table.concat(values, ",", 2) .. ']}'

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("first", threads * 1000000000)
end

function init(args)
  wrk.body = fixed
  count = first or 0
end

function request()
  if unique then
    count = count + 1
    return wrk.format(nil, nil, nil, '{"input": [' .. count .. '.5,' .. rest)
  end
  return wrk.format(nil, nil, nil, fixed)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
