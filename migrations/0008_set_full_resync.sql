-- full_resync: a region may differ between the set's members that no
-- pinned LOG bitmap records (the pins of a degradation record failed while
-- a write reached only some members). The next attach after an unclean stop
-- resyncs the whole set (DESIGN §2 rule 3's fallback); cleared by the host
-- once the set is whole again.
ALTER TABLE sets ADD COLUMN full_resync boolean NOT NULL DEFAULT false;
