// Command memtarget serves one iSCSI target, the project's own hostd/iscsi
// server, over a memory back end, so that `make bench` can compare the
// target alone with tgtd. It stops on SIGINT or SIGTERM.
//
//	memtarget -listen 127.0.0.1:3261 -size 1073741824 -iqn iqn.2026-11.io.chunkraid:mem
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/chunkraid/chunkraid/bench"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "memtarget:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:3261", "iSCSI listen address (loopback)")
	size := flag.Int64("size", 1<<30, "size of the logical unit in bytes")
	iqn := flag.String("iqn", "iqn.2026-11.io.chunkraid:mem", "target name")
	blockSize := flag.Int("block-size", 512, "logical block size")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	be, err := bench.NewMemBackend(*size)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := iscsi.New(iscsi.Config{Logger: log, BlockSize: *blockSize})
	if err != nil {
		return err
	}
	if err := srv.AddTarget(*iqn, be, "memtarget"); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "memtarget: serving %s (%d bytes in memory) on %s\n", *iqn, *size, ln.Addr())
	return srv.Serve(ctx, ln)
}
