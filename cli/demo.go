package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

type demoOptions struct {
	dir       string
	chunkSize string
	volSize   string
	metaPort  int
	iscsiPort int
	nbdPort   int
	clean     bool
}

func newDemoCmd(o *rootOptions) *cobra.Command {
	do := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a local cluster (PostgreSQL, metaserver, 3 chunkservers, 1 hostd) with a volume named demo",
		Long: `Run a whole cluster on this machine as real processes and keep it running
until Ctrl-C. State lives in --dir and is reused on the next run; delete
the directory to start fresh.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if do.clean {
				if err := os.RemoveAll(do.dir); err != nil {
					return err
				}
				if err := os.RemoveAll(localcluster.WIBRoot(do.dir)); err != nil {
					return err
				}
				fmt.Fprintf(o.out, "removed %s and its write-intent bitmaps\n", do.dir)
				return nil
			}
			return runDemo(cmd.Context(), o, do)
		},
	}
	f := cmd.Flags()
	f.StringVar(&do.dir, "dir", ".demo", "state directory (reused across runs)")
	f.StringVar(&do.chunkSize, "chunk-size", "10GiB", "chunk size when the cluster is first created")
	f.StringVar(&do.volSize, "volume-size", "20GiB", "size of the demo volume")
	f.IntVar(&do.metaPort, "meta-port", 8080, "metaserver HTTP port")
	f.IntVar(&do.iscsiPort, "iscsi-port", 3260, "hostd iSCSI port")
	f.IntVar(&do.nbdPort, "nbd-port", 10809, "first chunkserver's NBD port; the others follow (control ports: +100)")
	f.BoolVar(&do.clean, "clean", false, "delete the demo's state (the directory and its write-intent bitmaps) and exit")
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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fmt.Fprintf(o.out, "Starting a local chunkraid cluster in %s ...\n", do.dir)
	c, err := localcluster.Start(ctx, localcluster.Options{
		Dir: do.dir, ChunkSize: chunkSize,
		MetaPort: do.metaPort, ISCSIPort: do.iscsiPort, NBDPort: do.nbdPort,
		Logger: log,
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
  hostd         %s, iSCSI portal %s
  volume        demo, iSCSI URL:
                %s

Try it:
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s
  iscsi-inq %s
  export %s=%s
  %s volume show demo
  %s server list
  %s chunk list --volume demo
  %s volume create db1 --size 1GiB --layout mirror:3 --host %s

Logs: %s
Press Ctrl-C to stop.
`, c.MetaURL, c.NBDAddrs, c.HostName, c.ISCSIAddr, url, url, url, EnvMetaserver, c.MetaURL,
		self, self, self, self, c.HostName, filepath.Join(c.Dir(), "logs"))

	<-ctx.Done()
	return nil
}
