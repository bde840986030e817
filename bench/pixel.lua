-- wrk script: realistic tracking requests, varied pages and Referers, keep-alive.
-- The sequence repeats every 500 requests (page = counter * 7919 mod 500, title = counter mod 5),
-- so the 500 requests are formatted once in init(): wrk shares the cores with the server under
-- test, and building each request in Lua doubled wrk's own CPU.
local pages = {}
for i = 1, 500 do pages[i] = string.format("/blog/2026/%d/post-%d?utm_source=news&ref=%d", i % 12 + 1, i, i % 7) end
local titles = {"Home", "About%20us", "Pricing", "A%20long%20article%20title%20with%20words", "Contact"}
local requests = {}
local counter = 0

init = function(args)
  for n = 1, #pages do
    local page = pages[(n * 7919) % #pages + 1]
    local path = "/pixel.gif?title=" .. titles[n % #titles + 1] .. "&lang=en&w=1920&h=1080"
    local headers = {
      ["Referer"] = "https://www.example.com" .. page,
      ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
      ["Accept"] = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    }
    requests[n] = wrk.format("GET", path, headers)
  end
end

request = function()
  counter = counter % #requests + 1
  return requests[counter]
end
