package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/pglocal"
)

type demoOptions struct {
	dir       string
	chunkSize string
	volSize   string
	metaPort  int
	iscsiPort int
	nbdPort   int
	servers   int
	hosts     int
	replace   time.Duration
	failover  time.Duration
	clean     bool
}

func newDemoCmd(o *rootOptions) *cobra.Command {
	do := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a local cluster (PostgreSQL, metaserver, chunkservers, 1 hostd) with a volume named demo",
		Long: `Run a whole cluster on this machine as real processes and keep it running
until Ctrl-C. State lives in --dir and is reused on the next run; delete
the directory to start fresh.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if do.clean {
				return cleanDemo(cmd.Context(), o, do.dir)
			}
			return runDemo(cmd.Context(), o, do)
		},
	}
	f := cmd.Flags()
	f.StringVar(&do.dir, "dir", ".demo", "state directory (reused across runs)")
	f.StringVar(&do.chunkSize, "chunk-size", "10GiB", "chunk size when the cluster is first created")
	f.StringVar(&do.volSize, "volume-size", "20GiB", "size of the demo volume")
	f.IntVar(&do.metaPort, "meta-port", 8080, "metaserver API port (0: a free one)")
	f.IntVar(&do.iscsiPort, "iscsi-port", 3260, "hostd iSCSI port (0: a free one)")
	f.IntVar(&do.nbdPort, "nbd-port", 10809, "first chunkserver's NBD port; the others follow (control ports: +100; 0: free ones)")
	f.IntVar(&do.servers, "chunkservers", 3, "how many chunkservers to run (2 to 32; ec layouts need K+M)")
	f.IntVar(&do.hosts, "hosts", 1, "how many hostds to run (1 to 8): host1 on --iscsi-port, host2 on the next port, ...")
	f.DurationVar(&do.failover, "host-failover-after", 0, "move a dead host's volumes to a live one after this long without heartbeat (the metaserver's --host-failover-after; above 10s; default 30s)")
	f.DurationVar(&do.replace, "replace-after", 0, "replace a chunkserver's members after it has been away this long (the metaserver's --replace-after; above 60s; default 10m)")
	f.BoolVar(&do.clean, "clean", false, "delete the demo's state (the directory, its PostgreSQL directory and its write-intent bitmaps) and exit")
	return cmd
}

func runDemo(ctx context.Context, o *rootOptions, do demoOptions) error {
	chunkSize, err := parseSize(do.chunkSize)
	if err != nil {
		return err
	}
	volSize, err := parseSize(do.volSize)
	if err != nil {
		return err
	}
	if do.replace != 0 && do.replace <= time.Minute {
		return fmt.Errorf("--replace-after %v: must exceed the demo's LOG period T (60s)", do.replace)
	}
	if do.hosts < 1 || do.hosts > 8 {
		return fmt.Errorf("--hosts %d: run 1 to 8", do.hosts)
	}
	if do.failover != 0 && do.failover <= 10*time.Second {
		return fmt.Errorf("--host-failover-after %v: must exceed the demo's offline_after (10s)", do.failover)
	}
	if do.servers < 2 || do.servers > 32 {
		return fmt.Errorf("--chunkservers %d: run 2 to 32 (the demo volume is a mirror:2)", do.servers)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pgDir, err := demoPGDir(do.dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.out, "Starting a local chunkraid cluster in %s (PostgreSQL in %s) ...\n", do.dir, pgDir)
	c, err := localcluster.Start(ctx, localcluster.Options{
		Dir: do.dir, PGDir: pgDir, ChunkSize: chunkSize,
		MetaPort: do.metaPort, ISCSIPort: do.iscsiPort, NBDPort: do.nbdPort,
		Chunkservers: do.servers, Hosts: do.hosts, ExtraMetaArgs: demoMetaArgs(do), Logger: log,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(o.out, "\nStopping the cluster ...")
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "chunkraid: stopping the demo cluster:", err)
			return
		}
		fmt.Fprintln(o.out, "Every process stopped cleanly. State is kept in", c.Dir())
	}()

	cl := c.Client()
	v, err := cl.GetVolume(ctx, "demo")
	var ae *api.Error
	switch {
	case err == nil:
		fmt.Fprintf(o.out, "Reusing volume demo (%s, %s).\n", formatSize(v.SizeBytes), v.Layout)
		if v.Host != c.HostName {
			if _, err := cl.AttachVolume(ctx, "demo", c.HostName); err != nil {
				return err
			}
		}
	case errors.As(err, &ae) && ae.Code == api.CodeNotFound:
		v, err = cl.CreateVolume(ctx, api.CreateVolumeRequest{Name: "demo", SizeBytes: volSize, Layout: "mirror:2", Host: c.HostName})
		if err != nil {
			return err
		}
		fmt.Fprintf(o.out, "Created volume demo (%s, mirror:2, %d sets).\n", formatSize(v.SizeBytes), len(v.Sets))
	default:
		return err
	}
	if err := c.WaitTarget(ctx, "demo", 60*time.Second); err != nil {
		return err
	}

	self, _ := filepath.Abs(c.Binary())
	url := c.ISCSIURL("demo")
	fmt.Fprintf(o.out, `
chunkraid is running.
  metaserver    %s   (REST API under /api/v1)
  chunkservers  %v
  hostd         %s
  volume        demo, iSCSI URL:
                %s
  join token    %s (a chunkserver or hostd you add: --join-token-file)
  metrics       %s/metrics, https://%s/metrics (hostd), each chunkserver's control address
                (Prometheus: any operator token; README, Metrics)

Try it:
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s
  iscsi-inq %s
  export %s=%s
  export %s=%s
  export %s=%s
  %s volume show demo
  %s server list
  %s chunk list --volume demo
  %s volume create db1 --size 1GiB --layout mirror:3 --host %s

Logs: %s
PostgreSQL: %s
Press Ctrl-C to stop.
%s`, c.MetaURL, c.NBDAddrs, demoHosts(c), url, c.JoinTokenFile(), c.MetaURL, c.HostMetrics[c.HostName], url, url, EnvMetaserver, c.MetaURL, EnvCA, c.CAFile(), EnvToken, c.Token,
		self, self, self, self, c.HostName, filepath.Join(c.Dir(), "logs"), pgDir, failoverHint(c, self))

	<-ctx.Done()
	return nil
}

// demoPGDir returns where the demo in dir keeps PostgreSQL and, when that is
// under localcluster.DemoPGRoot, makes the root reachable by the postgres
// user and leaves a note there naming the demo it belongs to.
func demoPGDir(dir string) (string, error) {
	pgDir := localcluster.DemoPGDir(dir)
	if filepath.Dir(pgDir) != localcluster.DemoPGRoot {
		return pgDir, nil
	}
	if err := os.MkdirAll(pgDir, 0o755); err != nil {
		return "", fmt.Errorf("demo: PostgreSQL directory: %w", err)
	}
	if err := os.Chmod(localcluster.DemoPGRoot, 0o755); err != nil {
		return "", fmt.Errorf("demo: PostgreSQL directory: %w", err)
	}
	abs, _ := filepath.Abs(dir)
	note := fmt.Sprintf("PostgreSQL of the chunkraid demo whose state is in %s.\n"+
		"`chunkraid demo --dir %s --clean` (make demo-clean) removes it.\n", abs, abs)
	if err := os.WriteFile(filepath.Join(pgDir, "DEMO"), []byte(note), 0o644); err != nil {
		return "", fmt.Errorf("demo: PostgreSQL directory: %w", err)
	}
	return pgDir, nil
}

// cleanDemo stops a PostgreSQL server left running for the demo in dir and
// removes the demo's state: dir, its PostgreSQL directory and its
// write-intent bitmaps.
func cleanDemo(ctx context.Context, o *rootOptions, dir string) error {
	pgDir := localcluster.DemoPGDir(dir)
	if err := pglocal.StopDir(ctx, pgDir, nil); err != nil && !errors.Is(err, pglocal.ErrNoPostgres) {
		return fmt.Errorf("demo: stop the PostgreSQL server in %s: %w", pgDir, err)
	}
	removed := []string{}
	for _, d := range []string{dir, localcluster.DemoPGDir(dir), localcluster.WIBRoot(dir)} {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		removed = append(removed, d)
	}
	if len(removed) == 0 {
		fmt.Fprintf(o.out, "nothing to remove: %s holds no demo\n", dir)
		return nil
	}
	for _, d := range removed {
		fmt.Fprintf(o.out, "removed %s\n", d)
	}
	return nil
}

// demoMetaArgs are the demo metaserver's flags beyond localcluster's.
func demoMetaArgs(do demoOptions) []string {
	var args []string
	if do.replace != 0 {
		args = append(args, "--replace-after", do.replace.String())
	}
	if do.failover != 0 {
		args = append(args, "--host-failover-after", do.failover.String())
	}
	return args
}

// demoHosts describes the demo's hostds, one line each after the first.
func demoHosts(c *localcluster.Cluster) string {
	var b strings.Builder
	for i, h := range c.HostNames() {
		if i > 0 {
			b.WriteString("\n                ")
		}
		fmt.Fprintf(&b, "%s, iSCSI portal %s", h, c.HostISCSI[h])
	}
	return b.String()
}

// failoverHint says how to watch a host failover when the demo runs more
// than one host.
func failoverHint(c *localcluster.Cluster, self string) string {
	if len(c.Hosts) < 2 {
		return ""
	}
	return fmt.Sprintf(`
Watch a host failover: every host's portal finds the volume (a login is
redirected to the host that serves it). Kill host1 and, after
host_failover_after, demo is served by another host:
  pkill -9 -f -- '--name %s '
  %s events --follow
`, c.HostName, self)
}
