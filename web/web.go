// Package web is the dashboard: plain HTML, CSS and ES modules embedded in
// the binary and served by every metaserver at /. The page signs in with an
// API token (kept in the tab's sessionStorage, sent as the Authorization
// header, never in a URL), reads and changes the cluster only through the
// REST API the CLI uses, and refreshes itself with fetch, without reloading.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Handler serves the dashboard: the page at / and its assets under
// /static/. Nothing it serves holds data: the data comes from the API, with
// the user's token.
func Handler() http.Handler {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	assets := http.StripPrefix("/static/", http.FileServerFS(static))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "the dashboard only serves GET", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, static, "index.html")
			return
		}
		assets.ServeHTTP(w, r)
	})
}

// Owns reports whether path is the dashboard's: the page and its assets.
func Owns(path string) bool {
	return path == "/" || len(path) > len("/static/") && path[:len("/static/")] == "/static/"
}
