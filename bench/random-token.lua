-- wrk script: every request carries a token picked at random from $TOKENS_FILE, so the
-- benchmark spreads over many cached tokens instead of one hot one.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = "Bearer " .. line
end
math.randomseed(42)
-- WARM=1: use each token once, in order, then stop (fills the cache before measuring).
local warm = os.getenv("WARM") == "1"
local next_token = 0
request = function()
  if warm then
    next_token = next_token + 1
    return wrk.format("GET", "/bench/item", { ["Authorization"] = tokens[(next_token - 1) % #tokens + 1] })
  end
  return wrk.format("GET", "/bench/item", { ["Authorization"] = tokens[math.random(#tokens)] })
end
local answered = 0
response = function()
  answered = answered + 1
  if warm and answered >= #tokens then
    wrk.thread:stop()
  end
end
