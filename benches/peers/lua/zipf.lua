-- S4: reads of entities `e1` to `eN` whose ranks follow a Zipf distribution:
-- P(rank k) is proportional to 1 / k^s. Arguments: N (default 10000), s (default 1.0).

local headers = { ["Authorization"] = "Bearer consumer" }
local cdf = {}
local count = 10000

function init(args)
   count = tonumber(args[1]) or 10000
   local exponent = tonumber(args[2]) or 1.0
   local sum = 0
   for rank = 1, count do
      sum = sum + 1 / rank ^ exponent
      cdf[rank] = sum
   end
   for rank = 1, count do
      cdf[rank] = cdf[rank] / sum
   end
   math.randomseed(os.time())
end

-- Binary search for the first rank whose cumulative probability reaches u.
local function sample()
   local u = math.random()
   local low, high = 1, count
   while low < high do
      local middle = math.floor((low + high) / 2)
      if cdf[middle] < u then
         low = middle + 1
      else
         high = middle
      end
   end
   return low
end

function request()
   return wrk.format("GET", "/entities/e" .. sample(), headers)
end
