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
//	GET    /api/v1/events                            [?limit=N&volume=V&after=ID] []api.Event, oldest first
//
// Every error is the envelope {"code": ..., "message": ...} with the status
// of its code (api.HTTPStatus). Request bodies are at most 1 MiB and may not
// carry unknown fields.
//
// # Long polls
//
// cluster.generation counts changes of assignments: every transaction that
// creates, attaches or deletes a volume, registers a chunkserver or removes a
// chunk bumps it and sends NOTIFY chunkraid_generation '<schema> <gen>' before
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
// Volume.CleanDetach is the CleanDetach of the latest report at the current
// epoch; an attach resets it.
//
// Every state change is an event row written in the transaction that makes
// the change: volume_created, volume_deleted, volume_attached (saying whether
// the previous host detached cleanly), volume_detached, member_degraded,
// resync_started, resync_done, member_in_sync, chunkserver_offline and
// chunkserver_online. GET /api/v1/events returns the newest events, or with
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
// satisfy t_io < offline_after < T and T >= 3·t_io (bitmap.ValidateBudget);
// New refuses any other configuration. Daemons read the values from
// GET /api/v1/cluster and from their registration.
//
// # Placement
//
// A volume of size V gets ceil(V / chunk size) sets; each set of mirror:n
// has n members on online chunkservers in distinct fault domains, chosen by
// free space (see place). All rows of a volume are written in one
// transaction, and a unique index keeps two members of a set off one
// chunkserver.
package metaserver
