-- wrk script of integration/load.py: counts the responses that are not 2xx (wrk's own
-- "status" error counts only those above 399) and prints, at the end, one line of totals
-- that load.py parses: "load-result" followed by key=value pairs.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non2xx = 0
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local non2xx_total = 0
   for _, thread in ipairs(threads) do
      non2xx_total = non2xx_total + thread:get("non2xx")
   end
   io.write(string.format(
      "load-result requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
      "max_latency_us=%d duration_us=%d\n",
      summary.requests, non2xx_total, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.timeout, latency.max, summary.duration))
end
