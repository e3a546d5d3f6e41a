-- Argo CD health for the portcullis.dev kinds, read from their kstatus conditions. Argo CD runs
-- it with the object as `obj` (Lua 5.1, gopher-lua). Install it in argocd-cm once per kind:
--   resource.customizations.health.portcullis.dev_TransferGateway: |
--     <this file>
-- and the same for _NetworkZone, _KeyRing, _TransferEndpoint, _TransferRole, _TransferUser.
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function say(status, c)
  hs.status = status
  hs.message = (c.reason or "") .. ": " .. (c.message or "")
  return hs
end
local ready = found["Ready"]
if ready ~= nil and ready.status == "True" then
  return say("Healthy", ready)
end
-- A gateway that cannot get there by itself (its config does not compile, a pod refused it,
-- the rollout's deadline passed).
if found["Stalled"] ~= nil and found["Stalled"].status == "True" then
  return say("Degraded", found["Stalled"])
end
-- On its way: pods rolling out or starting, a key ring issuing its certificate.
for _, t in ipairs({ "Reconciling", "Issuing" }) do
  if found[t] ~= nil and found[t].status == "True" then
    return say("Progressing", found[t])
  end
end
-- Not ready and not on its way: a policy object whose reference is broken.
if ready ~= nil then
  return say("Degraded", ready)
end
return hs
