-- What the dashboard reads of every host, kept small and ready when it is
-- stored.
--
-- Compliance at a glance: the checks of each host's latest report, counted
-- when the report is stored, so that the dashboard sums two columns
-- instead of reading 10,000 report bodies. Hosts that reported before this
-- migration show no checks until their next report (within a minute, at
-- the agents' default interval).
ALTER TABLE hosts ADD COLUMN checks_passed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN checks_total BIGINT NOT NULL DEFAULT 0;

-- The facts that group selectors match (os, os_version, arch, kernel),
-- kept beside the full facts when they are stored, so that listing 10,000
-- hosts with their groups reads a few bytes per host, not every host's
-- inventory. Filled here for hosts enrolled before.
ALTER TABLE hosts ADD COLUMN selector_facts TEXT NOT NULL DEFAULT '{}';
UPDATE hosts SET selector_facts = COALESCE(
    (SELECT json_object_agg(key, value) FROM json_each(hosts.facts::json)
     WHERE key IN ('os', 'os_version', 'arch', 'kernel') AND json_typeof(value) <> 'null'),
    '{}')::text;

-- The dashboard reads every bundle's generation and commit: from this
-- index alone, never from the rows that hold whole bundles.
CREATE INDEX bundles_heads ON bundles (host_id, generation, commit_id);
