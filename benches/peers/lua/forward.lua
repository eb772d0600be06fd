-- S1: every notification carries data that no earlier one had, so each is a real change.
-- Arguments: a run id that makes the data unique across runs.
-- Entity keys cycle over 250,000 subjects per thread, so that an entity changes only a few
-- times per minute and ekko's loop guard (which damps fast-changing entities) stays idle.

local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
end

local run = "0"
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   run = args[1] or "0"
end

function request()
   counter = counter + 1
   local subject = "t" .. (thread_id or 0) .. "-s" .. (counter % 250000)
   local body = '{"subject":"' .. subject .. '","data":{"run":"' .. run .. '","seq":' .. counter ..
      ',"displayName":"Person ' .. subject .. '","mail":"' .. subject .. '@example.org","active":true}}'
   return wrk.format("POST", "/notify/changes", headers, body)
end
