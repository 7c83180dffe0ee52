-- Compliance at a glance: the checks of each host's latest report, counted
-- when the report is stored, so that the dashboard sums two columns
-- instead of reading 10,000 report bodies. Hosts that reported before this
-- migration show no checks until their next report (within a minute, at
-- the agents' default interval).
ALTER TABLE hosts ADD COLUMN checks_passed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN checks_total BIGINT NOT NULL DEFAULT 0;
