-- What kinds of instance a host can run (containers, VMs), as its agent last registered them:
-- a JSON array of nimbus_core::catalog::Machine names, e.g. '["container","vm"]'. '[]' (every
-- host registered before this, and agents that do not say) means containers only. Placement
-- and the capacity claim both read it, so a VM type never lands on a container-only host.
ALTER TABLE hosts ADD COLUMN machines TEXT NOT NULL DEFAULT '[]';
