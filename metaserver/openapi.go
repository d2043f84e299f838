package metaserver

import (
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// The OpenAPI 3 description of the API, served at /api/v1/openapi.json. Its
// schemas are generated from the Go types of package api by reflection, so
// they cannot drift from what the handlers encode; its operations are the
// table below, which a test holds to the router (every route documented,
// nothing documented that is not a route) and whose answers a test
// validates against the document.

// caller says who may call an operation.
type caller int

const (
	callerPublic caller = iota // no token
	callerDaemon               // a join token or the daemon's credential
	callerAny                  // any operator token
	callerAdmin                // an admin token
)

// operation documents one route.
type operation struct {
	method, path string
	summary      string
	caller       caller
	query        []queryParam
	body         any // the request body's type (a zero value), nil: none
	status       int // the success status
	resp         any // the success body's type (a zero value), nil: none
	text         bool
}

type queryParam struct {
	name, typ, desc string
}

var pollParams = []queryParam{
	{"after", "integer", "the generation the caller has seen: the answer waits until it changes"},
	{"wait", "string", "how long to wait for a change, a Go duration (30s); 0 or absent: answer at once"},
}

// operations is every route of the router (routes.go).
var operations = []operation{
	{method: "GET", path: "/healthz", summary: "200 when the metaserver is ready and its database answers", caller: callerPublic, status: 200, resp: map[string]string{}},
	{method: "GET", path: "/metrics", summary: "Prometheus metrics (text exposition format)", caller: callerAny, status: 200, text: true},
	{method: "GET", path: "/api/v1/openapi.json", summary: "this description", caller: callerAny, status: 200, resp: map[string]any{}},
	{method: "GET", path: "/api/v1/cluster", summary: "the cluster's settings, timeout budget and capacity", caller: callerDaemon, status: 200, resp: api.Cluster{}},
	{method: "POST", path: "/api/v1/chunkservers", summary: "register a chunkserver (join token or its credential)", caller: callerDaemon, body: api.RegisterChunkserverRequest{}, status: 200, resp: api.RegisterChunkserverResponse{}},
	{method: "POST", path: "/api/v1/chunkservers/{id}/heartbeat", summary: "a chunkserver's heartbeat with its disks and failed chunks", caller: callerDaemon, body: api.ChunkserverHeartbeat{}, status: 204},
	{method: "GET", path: "/api/v1/chunkservers/{id}/chunks", summary: "the chunks a chunkserver must hold (long poll)", caller: callerDaemon, query: pollParams, status: 200, resp: api.ChunkAssignments{}},
	{method: "DELETE", path: "/api/v1/chunkservers/{id}/chunks/{chunk}", summary: "a chunkserver deleted a chunk it was told to", caller: callerDaemon, status: 204},
	{method: "POST", path: "/api/v1/hosts", summary: "register a host (join token or its credential)", caller: callerDaemon, body: api.RegisterHostRequest{}, status: 200, resp: api.RegisterHostResponse{}},
	{method: "POST", path: "/api/v1/hosts/{id}/heartbeat", summary: "a host's heartbeat", caller: callerDaemon, status: 204},
	{method: "GET", path: "/api/v1/hosts/{id}/volumes", summary: "the volumes a host must serve (long poll)", caller: callerDaemon, query: pollParams, status: 200, resp: api.HostVolumes{}},
	{method: "POST", path: "/api/v1/hosts/{id}/snapshot-exports", summary: "a host's volume with read-only export names of a snapshot of its members, to copy the snapshot onto a member being rebuilt", caller: callerDaemon, body: api.HostSnapshotExportsRequest{}, status: 200, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/hosts/{id}/snapshots", summary: "a host took or deleted a snapshot of a volume it serves", caller: callerDaemon, body: api.SnapshotReport{}, status: 204},
	{method: "POST", path: "/api/v1/hosts/{id}/report", summary: "a host's member states, dirty bytes and resync progress", caller: callerDaemon, body: api.HostReport{}, status: 204},
	{method: "GET", path: "/api/v1/chunkservers", summary: "list the chunkservers", caller: callerAny, status: 200, resp: []api.Chunkserver{}},
	{method: "GET", path: "/api/v1/disks", summary: "list the disks", caller: callerAny, status: 200, resp: []api.Disk{}},
	{method: "GET", path: "/api/v1/chunks", summary: "list the chunks", caller: callerAny, query: []queryParam{{"volume", "string", "only this volume's"}}, status: 200, resp: []api.Chunk{}},
	{method: "GET", path: "/api/v1/hosts", summary: "list the hosts", caller: callerAny, status: 200, resp: []api.Host{}},
	{method: "GET", path: "/api/v1/volumes", summary: "list the volumes", caller: callerAny, status: 200, resp: []api.Volume{}},
	{method: "GET", path: "/api/v1/volumes/{name}", summary: "show a volume: sets, members, states, progress", caller: callerAny, status: 200, resp: api.Volume{}},
	{method: "GET", path: "/api/v1/volumes/{name}/stats", summary: "a volume's recent IOPS, throughput and latency, as its host last reported them", caller: callerAny, status: 200, resp: api.VolumeStatsReport{}},
	{method: "GET", path: "/api/v1/events", summary: "state changes, oldest first", caller: callerAny, query: []queryParam{
		{"volume", "string", "only this volume's"}, {"kind", "string", "only events of this kind"}, {"server", "string", "only events about this chunkserver or host"},
		{"after", "integer", "only events after this id"}, {"limit", "integer", "at most this many (default 100)"}}, status: 200, resp: []api.Event{}},
	{method: "GET", path: "/api/v1/changes", summary: "a version that moves with every change of the cluster (long poll with after and wait)", caller: callerAny, query: pollParams, status: 200, resp: api.Changes{}},
	{method: "GET", path: "/api/v1/whoami", summary: "who the request's token belongs to", caller: callerAny, status: 200, resp: api.Principal{}},
	{method: "POST", path: "/api/v1/volumes", summary: "create a volume", caller: callerAdmin, body: api.CreateVolumeRequest{}, status: 201, resp: api.Volume{}},
	{method: "DELETE", path: "/api/v1/volumes/{name}", summary: "delete a volume", caller: callerAdmin, status: 204},
	{method: "DELETE", path: "/api/v1/chunkservers/{id}", summary: "forget a chunkserver (by name or ID) that is offline and holds no set member", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/chunkservers/{id}/drain", summary: "move every set member off a chunkserver (by name or ID), each rebuilt elsewhere before it leaves", caller: callerAdmin, status: 200, resp: api.DrainResponse{}},
	{method: "POST", path: "/api/v1/volumes/{name}/attach", summary: "serve a volume from a host (bumps the epoch)", caller: callerAdmin, body: api.AttachVolumeRequest{}, status: 200, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/volumes/{name}/resize", summary: "grow a volume online (never shrink)", caller: callerAdmin, body: api.ResizeVolumeRequest{}, status: 200, resp: api.Volume{}},
	{method: "PUT", path: "/api/v1/volumes/{name}/chap", summary: "set a volume's CHAP credentials", caller: callerAdmin, body: api.SetCHAPRequest{}, status: 200, resp: api.Volume{}},
	{method: "DELETE", path: "/api/v1/volumes/{name}/chap", summary: "remove a volume's CHAP credentials", caller: callerAdmin, status: 204},
	{method: "PUT", path: "/api/v1/volumes/{name}/qos", summary: "set a volume's I/O limits (replacing them); its host applies them without a detach", caller: callerAdmin, body: api.QoS{}, status: 200, resp: api.Volume{}},
	{method: "DELETE", path: "/api/v1/volumes/{name}/qos", summary: "remove a volume's I/O limits", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/volumes/{name}/detach", summary: "detach a volume from its host: no host serves it until it is attached again", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/volumes/{name}/clone", summary: "make a new volume, at once, a writable clone of a ready snapshot of this one, on the same chunkservers, sharing every block it has not written", caller: callerAdmin, body: api.CloneVolumeRequest{}, status: 201, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/volumes/{name}/flatten", summary: "copy into a clone what it shares with its parent's snapshot, so that it no longer depends on it; answers once done", caller: callerAdmin, status: 200, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/volumes/{name}/rollback", summary: "make a detached volume hold one of its snapshots again", caller: callerAdmin, body: api.RollbackRequest{}, status: 204},
	{method: "POST", path: "/api/v1/volumes/{name}/snapshots", summary: "take a crash-consistent snapshot of an attached mirror volume; answers once its host took it", caller: callerAdmin, body: api.CreateSnapshotRequest{}, status: 201, resp: api.Snapshot{}},
	{method: "GET", path: "/api/v1/volumes/{name}/snapshots", summary: "a volume's snapshots, oldest first", caller: callerAny, status: 200, resp: []api.Snapshot{}},
	{method: "DELETE", path: "/api/v1/volumes/{name}/snapshots/{snapshot}", summary: "delete a snapshot of an attached volume; answers once its host deleted it (refused while the snapshot is attached)", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/volumes/{name}/snapshots/{snapshot}/attach", summary: "have a host serve a ready snapshot read-only over iSCSI", caller: callerAdmin, body: api.AttachSnapshotRequest{}, status: 200, resp: api.Snapshot{}},
	{method: "POST", path: "/api/v1/volumes/{name}/snapshots/{snapshot}/detach", summary: "stop serving a snapshot over iSCSI", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/volumes/{name}/initiators", summary: "change a volume's initiator allowlist", caller: callerAdmin, body: api.InitiatorsRequest{}, status: 200, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/volumes/{name}/read-exports", summary: "the volume with read-only export names of its members, or of a snapshot of them (volume verify)", caller: callerAdmin,
		query: []queryParam{{"snapshot", "string", "a ready snapshot of the volume: the names read it"}}, status: 200, resp: api.Volume{}},
	{method: "POST", path: "/api/v1/tokens", summary: "create an API token (the answer holds its secret)", caller: callerAdmin, body: api.CreateTokenRequest{}, status: 201, resp: api.Token{}},
	{method: "GET", path: "/api/v1/tokens", summary: "list the API tokens, without secrets", caller: callerAdmin, status: 200, resp: []api.Token{}},
	{method: "DELETE", path: "/api/v1/tokens/{name}", summary: "revoke an API token", caller: callerAdmin, status: 204},
	{method: "POST", path: "/api/v1/certificates", summary: "have the cluster CA sign a metaserver certificate", caller: callerAdmin, body: api.IssueCertificateRequest{}, status: 201, resp: api.IssuedCertificate{}},
}

// openAPIDocument builds the description once.
var openAPIDocument = sync.OnceValue(func() []byte {
	b, err := json.MarshalIndent(buildOpenAPI(), "", "  ")
	if err != nil {
		panic(err) // maps and strings only
	}
	return b
})

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPIDocument())
}

// schemaGen turns Go types into OpenAPI schemas: named structs become
// components referred to by $ref.
type schemaGen struct{ components map[string]any }

var timeType = reflect.TypeOf(time.Time{})

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t.Kind() == reflect.Pointer:
		s := g.schema(t.Elem())
		if ref, ok := s["$ref"]; ok {
			return map[string]any{"allOf": []any{map[string]any{"$ref": ref}}, "nullable": true}
		}
		s["nullable"] = true
		return s
	}
	switch t.Kind() {
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return map[string]any{"type": "integer", "format": "int32"}
	case reflect.Int64, reflect.Uint, reflect.Uint64:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "format": "byte"}
		}
		// A nil slice encodes as null.
		return map[string]any{"type": "array", "items": g.schema(t.Elem()), "nullable": true}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schema(t.Elem()), "nullable": true}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		if t.Name() == "" {
			return g.object(t)
		}
		if _, ok := g.components[t.Name()]; !ok {
			g.components[t.Name()] = map[string]any{} // recursion guard
			g.components[t.Name()] = g.object(t)
		}
		return map[string]any{"$ref": "#/components/schemas/" + t.Name()}
	}
	panic("openapi: no schema for " + t.String())
}

// object is the schema of a struct's JSON encoding: its exported fields
// under their json names (embedded structs' fields inlined); a field
// without omitempty is always present, so required.
func (g *schemaGen) object(t reflect.Type) map[string]any {
	props := map[string]any{}
	var required []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = g.schema(f.Type)
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				required = append(required, name)
			}
		}
	}
	walk(t)
	o := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		sort.Strings(required)
		o["required"] = required
	}
	return o
}

func buildOpenAPI() map[string]any {
	g := &schemaGen{components: map[string]any{}}
	errRef := g.schema(reflect.TypeOf(api.Error{}))
	paths := map[string]any{}
	for _, op := range operations {
		o := map[string]any{"summary": op.summary, "operationId": strings.ToLower(op.method) + strings.ReplaceAll(strings.ReplaceAll(op.path, "/", "_"), "{", "by_")}
		o["operationId"] = strings.NewReplacer("}", "", ".", "_", "-", "_").Replace(o["operationId"].(string))
		var params []any
		for _, seg := range strings.Split(op.path, "/") {
			if strings.HasPrefix(seg, "{") {
				name := strings.Trim(seg, "{}")
				typ := "string"
				if name == "id" {
					typ = "integer"
				}
				params = append(params, map[string]any{"name": name, "in": "path", "required": true, "schema": map[string]any{"type": typ}})
			}
		}
		for _, q := range op.query {
			params = append(params, map[string]any{"name": q.name, "in": "query", "description": q.desc, "schema": map[string]any{"type": q.typ}})
		}
		if params != nil {
			o["parameters"] = params
		}
		if op.body != nil {
			o["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(op.body))}}}
		}
		ok := map[string]any{"description": http.StatusText(op.status)}
		switch {
		case op.text:
			ok["content"] = map[string]any{"text/plain": map[string]any{"schema": map[string]any{"type": "string"}}}
		case op.resp != nil:
			s := g.schema(reflect.TypeOf(op.resp))
			if reflect.TypeOf(op.resp).Kind() == reflect.Slice {
				delete(s, "nullable") // lists are answered [] when empty
			}
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": s}}
		}
		o["responses"] = map[string]any{
			itoa(op.status): ok,
			"default": map[string]any{"description": "an error: the one envelope of every non-2xx answer",
				"content": map[string]any{"application/json": map[string]any{"schema": errRef}}},
		}
		switch op.caller {
		case callerPublic:
			o["security"] = []any{}
		default:
			o["security"] = []any{map[string]any{"bearer": []any{}}}
		}
		o["x-chunkraid-access"] = [...]string{"public", "daemon", "any operator token", "admin"}[op.caller]
		item, _ := paths[op.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[op.path] = item
		}
		item[strings.ToLower(op.method)] = o
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "chunkraid metaserver API", "version": "1",
			"description": "The REST API of the chunkraid metaserver: volumes, servers, events, tokens, and the daemons' registration, heartbeats and reports."},
		"servers": []any{map[string]any{"url": "/"}},
		"paths":   paths,
		"components": map[string]any{
			"schemas":         g.components,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
		"security": []any{map[string]any{"bearer": []any{}}},
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
