// Package test holds the end-to-end tests: they build the chunkraid binary,
// start a private PostgreSQL, the metaserver, chunkservers and a hostd as
// real processes (package localcluster), and talk to them only with real
// clients: qemu-io, qemu-img, iscsi-ls, iscsi-inq, iscsi-test-cu and the CLI.
package test
