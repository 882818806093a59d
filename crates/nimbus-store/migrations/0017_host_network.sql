-- A host's place in its region's private network (issue 17): its address between hosts (the
-- VXLAN endpoint) and the subnet its instances' private addresses come from. NULL for a host
-- that takes no part (sim hosts, a lone host without `--underlay`).
ALTER TABLE hosts ADD COLUMN underlay TEXT;
ALTER TABLE hosts ADD COLUMN instance_subnet TEXT;
