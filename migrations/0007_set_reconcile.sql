-- A resync of a set whose members are all in sync: after an unclean stop
-- (a host crash) the regions the LOG bitmaps name are copied from one member
-- to the others (mirror) or their parity re-encoded (EC). reconciling while
-- one runs, with its progress; reconciles counts the ones the host that
-- holds the volume (reconcile_epoch, reconcile_incarnation) finished.
ALTER TABLE sets
    ADD COLUMN reconciling           boolean NOT NULL DEFAULT false,
    ADD COLUMN reconcile_done_bytes  bigint  NOT NULL DEFAULT 0,
    ADD COLUMN reconcile_total_bytes bigint  NOT NULL DEFAULT 0,
    ADD COLUMN reconciles            bigint  NOT NULL DEFAULT 0,
    ADD COLUMN reconcile_epoch       bigint  NOT NULL DEFAULT 0,
    ADD COLUMN reconcile_incarnation bigint  NOT NULL DEFAULT 0;
