-- S2: 1,000 entities whose state never changes, so after the first notification of each
-- (sent in the warm-up run) ekko suppresses every one as unchanged.

local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function request()
   counter = counter + 1
   local subject = "u" .. (counter % 1000)
   local body = '{"subject":"' .. subject .. '","data":{"displayName":"Person ' .. subject ..
      '","mail":"' .. subject .. '@example.org","active":true}}'
   return wrk.format("POST", "/notify/states", headers, body)
end
