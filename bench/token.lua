-- wrk script: POST /v1/grants/{id}/token for ids drawn at random from $GK_IDS
local ids = {}
local key = os.getenv("GK_KEY")

function init(args)
  for line in io.lines(os.getenv("GK_IDS")) do
    ids[#ids + 1] = line
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6) + tonumber(tostring({}):sub(8), 16) % 100000)
end

local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }

function request()
  local id = ids[math.random(#ids)]
  return wrk.format("POST", "/v1/grants/" .. id .. "/token", headers, "{}")
end
