-- The cluster generation at which the metaserver itself last set a member's
-- state (0: only hosts ever have). The failure detector marks the members
-- of a chunkserver that went offline degraded at a new generation; a host
-- report that promotes such a member to in_sync is applied only if the host
-- had seen that generation (api.MemberReport.SeenGen), so a host that has
-- not yet heard of the mark cannot undo it.
ALTER TABLE chunks ADD COLUMN member_state_gen bigint NOT NULL DEFAULT 0;
