-- Every registration of a host (a hostd start) is a new incarnation, issued
-- here; its reports carry it. Reports are ordered by (incarnation, seq), so
-- a restarted host's reports order after those of the one before whatever
-- its clock says, and a late report of an earlier incarnation is ignored.
ALTER TABLE hosts
    ADD COLUMN incarnation bigint NOT NULL DEFAULT 0;
ALTER TABLE volumes
    ADD COLUMN report_incarnation bigint NOT NULL DEFAULT 0;
