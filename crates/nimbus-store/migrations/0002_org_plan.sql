-- Rate-limit plan of each organization (free, professional, enterprise; see config
-- rate_limits.plans). Existing organizations get professional.
ALTER TABLE orgs ADD COLUMN plan TEXT NOT NULL DEFAULT 'professional';
