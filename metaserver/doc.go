// Package metaserver is chunkraid's control plane: a stateless REST API over
// the cluster state in PostgreSQL. It registers chunkservers and hosts,
// tracks their heartbeats, places the chunks of new volumes across fault
// domains, and tells every daemon what it must hold or serve.
//
// # State
//
// The schema lives in the migrations package and is applied at start-up
// under an advisory lock, so any number of metaservers may share one
// database (or one schema of it: the database URL may carry search_path).
//
//	cluster (one row: chunk_size, secret, generation)
//	chunkservers 1--* disks
//	hosts 1--* volumes 1--* sets 1--* chunks *--1 chunkservers, disks
//	events (id, time, kind, subject, volume, message)
//
// # API (JSON under /api/v1; types in package api)
//
//	GET    /healthz                                  200 {"status":"ok"} | 503
//	GET    /api/v1/cluster                           api.Cluster
//	POST   /api/v1/chunkservers                      api.RegisterChunkserverRequest -> api.RegisterChunkserverResponse
//	GET    /api/v1/chunkservers                      []api.Chunkserver
//	POST   /api/v1/chunkservers/{id}/heartbeat       api.ChunkserverHeartbeat -> 204
//	GET    /api/v1/chunkservers/{id}/chunks          [?after=G&wait=30s] api.ChunkAssignments
//	DELETE /api/v1/chunkservers/{id}/chunks/{chunk}  204: acknowledges a deleted chunk (409 if not deleting)
//	GET    /api/v1/disks                             []api.Disk
//	GET    /api/v1/chunks                            [?volume=NAME] []api.Chunk
//	POST   /api/v1/hosts                             api.RegisterHostRequest -> api.RegisterHostResponse
//	GET    /api/v1/hosts                             []api.Host
//	POST   /api/v1/hosts/{id}/heartbeat              204
//	GET    /api/v1/hosts/{id}/volumes                [?after=G&wait=30s] api.HostVolumes
//	POST   /api/v1/hosts/{id}/report                 api.HostReport -> 204 | 409 (volumes the host no longer holds)
//	POST   /api/v1/volumes                           api.CreateVolumeRequest -> 201 api.Volume
//	GET    /api/v1/volumes                           []api.Volume
//	GET    /api/v1/volumes/{name}                    api.Volume
//	DELETE /api/v1/volumes/{name}                    204: its chunks become deleting
//	POST   /api/v1/volumes/{name}/attach             api.AttachVolumeRequest -> api.Volume (epoch + 1)
//	PUT    /api/v1/volumes/{name}/chap               api.SetCHAPRequest -> api.Volume (no secrets)
//	DELETE /api/v1/volumes/{name}/chap               204: no CHAP any more
//	POST   /api/v1/volumes/{name}/initiators         api.InitiatorsRequest -> api.Volume
//	GET    /api/v1/events                            [?limit=N&volume=V&after=ID] []api.Event, oldest first
//
// Every error is the envelope {"code": ..., "message": ...} with the status
// of its code (api.HTTPStatus). Request bodies are at most 1 MiB and may not
// carry unknown fields.
//
// # Long polls
//
// cluster.generation counts changes of assignments: every transaction that
// creates, attaches or deletes a volume, changes its access control,
// registers a chunkserver or removes a chunk bumps it and sends NOTIFY chunkraid_generation '<schema> <gen>' before
// committing. Each metaserver keeps one LISTEN connection and wakes its
// waiting requests when the generation grows. A client passes the generation
// of its last answer as ?after=G with ?wait=D (capped at api.MaxWait); the
// answer comes as soon as the generation differs from G, or after D with the
// unchanged state. A waiting request ends when its client goes away and
// returns at once when the server shuts down.
//
// # Cluster secret and export names
//
// The cluster row holds 32 random bytes (hex), made when the cluster is
// created and never changed. Both registration answers carry the secret and
// the timeout budget (t_io and T). The API is not authenticated yet: the
// secret is only as safe as the network the API listens on, loopback by
// default; bearer tokens come later (DESIGN §4).
//
// Every member of a volume attached to host H at epoch N carries the export
// name api.ExportName{chunk, H, N, HMAC(secret, chunk, H, N)}; a chunkserver
// recomputes the token and fences older epochs. An attach bumps the epoch, so
// it changes every export name of the volume.
//
// # Host reports and events
//
// A host reports the members of the volumes it serves (api.HostReport):
// state, since when, resync progress, error, and each set's dirty bytes. A
// report about a volume the host does not hold at the reported epoch (it was
// attached elsewhere or again, or deleted) changes nothing for that volume
// and makes the answer 409, naming it, so a zombie host learns that it lost
// the volume; the report's other volumes are stored. Reports lock their
// volumes' rows, as attach does, so a report and an attach never interleave.
// Reports are state, not assignments: they do not bump the generation.
// A numbered report (api.VolumeReport.Incarnation and Seq) not above the
// last one applied for the volume at its epoch, or of an earlier
// incarnation of the host than its current registration, is older than the
// stored state: it is acknowledged and ignored. Each registration of a host
// is a new incarnation, issued in the database (never from a clock).
// Volume.CleanDetach is the CleanDetach of the latest report at the current
// epoch; an attach resets it.
//
// Every state change is an event row written in the transaction that makes
// the change: volume_created, volume_deleted, volume_attached (saying whether
// the previous host detached cleanly), volume_detached, member_degraded,
// resync_started, resync_done, member_in_sync, volume_auth_changed,
// chunkserver_offline and chunkserver_online. GET /api/v1/events returns the newest events, or with
// ?after=ID the ones after that ID (to follow the log); the leader keeps the
// newest 100000.
//
// # Leader
//
// Background loops run on one metaserver of a cluster, the one whose
// dedicated connection holds a session advisory lock (pg_try_advisory_lock,
// one key per schema); the others retry every second and take over when the
// leader's session ends. The leader's failure detector marks chunkservers
// offline after OfflineAfter without a heartbeat, and online again, each
// change once, with its event.
//
// # Timeout budget
//
// IOTimeout (t_io, 5 s), OfflineAfter (10 s) and LogPeriod (T, 60 s) must
// satisfy t_io < offline_after < T and T >= 3·t_io (budget.Validate);
// New refuses any other configuration. Daemons read the values from
// GET /api/v1/cluster and from their registration.
//
// # Layouts and placement
//
// A volume's layout is mirror:2, mirror:3 or ec:K+M with K >= 2, M >= 1 and
// K+M <= 20 (api.ParseLayout). A set of mirror:n has n members and holds one
// chunk size of the volume; a set of ec:K+M has K+M members (member i is
// shard i) and holds K × chunk size, striped in units of the volume's
// stripe unit (a power of two from 4 KiB to 1 MiB that divides the chunk
// size; 64 KiB by default). A volume of size V therefore gets
// ceil(V / (K × chunk size)) sets, every set but the last full, and
// Volume.RawBytes = sets × (K+M) × chunk size: 1.5 × the size for ec:4+2,
// 2 × for mirror:2 (for sizes that fill their last set).
//
// Each set's members go to online chunkservers in distinct fault domains,
// chosen by free space (see place); a layout wider than the fault domains
// online is refused with the message of PlacementError, e.g. "ec:4+2 needs
// 6 chunkservers in distinct fault domains; 3 are online". All rows of a
// volume are written in one transaction, and a unique index keeps two
// members of a set off one chunkserver.
//
// GET /api/v1/cluster adds up the capacity: raw_capacity_bytes and
// raw_free_bytes over the disks of the online chunkservers, and
// allocated_bytes = chunks × chunk size over every chunk held (chunks are
// thin: that is what they may grow to).
//
// # iSCSI access control
//
// Each volume has CHAP credentials (none, one-way, or mutual) and an
// allowlist of initiator names (empty: every initiator), kept in the volume
// row. Changes bump the generation, so the host serving the volume applies
// them without a new attach, and record a volume_auth_changed event. CHAP
// secrets are 12 to 255 bytes (RFC 7143 asks for at least 96 bits); the
// mutual secret must differ from the one-way secret. Initiator names are
// checked (iqn., eui. or naa. form) and stored in canonical case. A change
// that would empty a non-empty allowlist, and so admit every initiator, is
// refused unless it asks to clear the list.
//
// The volume API never returns a secret: api.VolumeAuth carries the user
// names and the allowlist. Only GET /api/v1/hosts/{id}/volumes fills in
// chap_secret and mutual_secret, for the volumes attached to that host. Logs
// and events name users, never secrets.
//
// The secrets are stored sealed with AES-256-GCM under a key derived from
// the cluster secret with HKDF-SHA256 (no salt, info "chunkraid volume
// secrets v1"). The authenticated data, not stored, is "volume <name>
// <column>", so a sealed value opens only in the column and volume it was
// made for. A sealed value is
//
//	 0         1                13                             n
//	+---------+----------------+-------------------------------+
//	| version | nonce          | ciphertext + 16-byte GCM tag  |
//	| 0x01    | 12 random bytes| (as long as the secret + 16)  |
//	+---------+----------------+-------------------------------+
//
// This keeps secrets out of a dump of the volumes table, of query logs and
// of anything that prints a volume row. It does not protect against someone
// who can read the whole database: the cluster secret is in the cluster
// table of the same database, and with it the key can be derived again.
package metaserver
