-- S3: every request reads the same entity, with the consumers' credential.

local headers = { ["Authorization"] = "Bearer consumer" }

function request()
   return wrk.format("GET", "/entities/hot", headers)
end
