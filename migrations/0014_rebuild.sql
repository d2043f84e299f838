-- A member whose chunkserver stayed offline for replace_after is replaced:
-- its chunk leaves the set (deleting, for its chunkserver to delete when it
-- returns) and a new chunk on another fault domain takes its place, in the
-- state rebuilding until its host has copied the set's data onto it.
-- replace_blocked is set once an event said that no chunkserver can take a
-- replacement, so that the event is not repeated every tick.
ALTER TABLE chunks DROP CONSTRAINT chunks_member_state_check;
ALTER TABLE chunks
    ADD CONSTRAINT chunks_member_state_check CHECK (member_state IN ('in_sync', 'degraded', 'resyncing', 'rebuilding')),
    ADD COLUMN replace_blocked boolean NOT NULL DEFAULT false;
