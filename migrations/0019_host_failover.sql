-- A volume whose host stopped heartbeating and that no live host could take
-- yet: said once (host_failover_blocked), retried every tick of the leader.
ALTER TABLE volumes ADD COLUMN failover_blocked boolean NOT NULL DEFAULT false;
