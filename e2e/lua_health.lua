-- Runs an Argo CD health script (arg[1]) on the object JSON on stdin, as Argo CD does: the object
-- is the global `obj`, the script's chunk returns the health. Prints it as JSON.
local cjson = require("cjson")
obj = cjson.decode(io.read("*a"))
local hs = dofile(arg[1])
print(cjson.encode(hs))
