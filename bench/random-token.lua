-- wrk script: every request carries a token picked at random from $TOKENS_FILE, so the
-- benchmark spreads over many cached tokens instead of one hot one.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = "Bearer " .. line
end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/bench/item", { ["Authorization"] = tokens[math.random(#tokens)] })
end
