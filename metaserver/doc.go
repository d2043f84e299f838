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
//	cluster (one row: chunk_size, generation)
//	chunkservers 1--* disks
//	hosts 1--* volumes 1--* sets 1--* chunks *--1 chunkservers, disks
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
//	POST   /api/v1/volumes                           api.CreateVolumeRequest -> 201 api.Volume
//	GET    /api/v1/volumes                           []api.Volume
//	GET    /api/v1/volumes/{name}                    api.Volume
//	DELETE /api/v1/volumes/{name}                    204: its chunks become deleting
//	POST   /api/v1/volumes/{name}/attach             api.AttachVolumeRequest -> api.Volume (epoch + 1)
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
// # Placement
//
// A volume of size V gets ceil(V / chunk size) sets; each set of mirror:n
// has n members on online chunkservers in distinct fault domains, chosen by
// free space (see place). All rows of a volume are written in one
// transaction, and a unique index keeps two members of a set off one
// chunkserver.
package metaserver
