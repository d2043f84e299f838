package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/chunkserver"
	"github.com/chunkraid/chunkraid/hostd"
	"github.com/chunkraid/chunkraid/metaserver"
)

// EnvDatabaseURL names the environment variable with the metaserver's PostgreSQL URL.
const EnvDatabaseURL = "CHUNKRAID_DATABASE_URL"

func newMetaserverCmd(o *rootOptions) *cobra.Command {
	var (
		cfg       metaserver.Config
		chunkSize string
	)
	cmd := &cobra.Command{
		Use:   "metaserver",
		Short: "Run the metaserver: REST API and cluster state in PostgreSQL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if chunkSize != "" {
				n, err := parseSize(chunkSize)
				if err != nil {
					return err
				}
				cfg.ChunkSize = n
			}
			cfg.Logger = o.logger()
			s, err := metaserver.New(cfg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DatabaseURL, "database-url", os.Getenv(EnvDatabaseURL), "PostgreSQL URL (env "+EnvDatabaseURL+")")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "API listen address (TLS unless --insecure-http)")
	f.StringVar(&chunkSize, "chunk-size", "", "chunk size, fixed when the cluster is first created (default 10GiB)")
	f.DurationVar(&cfg.OfflineAfter, "offline-after", 10*time.Second, "a server without heartbeat for this long is offline")
	f.DurationVar(&cfg.IOTimeout, "io-timeout", 5*time.Second, "t_io: hosts fail a member request not answered in this time (must be < --offline-after)")
	f.DurationVar(&cfg.LogPeriod, "log-period", 60*time.Second, "T: chunk LOG bitmaps rotate every T (must be > --offline-after and >= 3 x --io-timeout)")
	f.DurationVar(&cfg.ReplaceAfter, "replace-after", 10*time.Minute, "a chunkserver offline this long has its degraded members replaced by new chunks and rebuilt (must exceed --log-period)")
	f.DurationVar(&cfg.HostFailoverAfter, "host-failover-after", 30*time.Second, "a host without heartbeat this long has its volumes attached to a live host (must exceed --offline-after)")
	f.BoolVar(&cfg.InsecureHTTP, "insecure-http", false, "serve plain HTTP instead of TLS (tokens then cross the network in clear; a warning is logged)")
	f.StringSliceVar(&cfg.TLSNames, "tls-name", nil, "host name or address the certificate the cluster CA signs at start is valid for (repeat; default localhost, 127.0.0.1, ::1 and the listen host)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serve TLS with this certificate (from chunkraid cert issue) instead of signing one at start")
	f.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "the key of --tls-cert-file")
	f.StringVar(&cfg.CAFile, "ca-file", "", "write the cluster CA's certificate here (what clients verify the API with)")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 1<<20, "longest request body (at most 1 MiB of JSON is ever read)")
	f.Float64Var(&cfg.Overcommit, "overcommit", 1, "capacity guard: a volume's raw size must fit in this × the free raw space, less what chunks are promised but have not written")
	f.IntVar(&cfg.MaxLongPolls, "max-long-polls", 4, "long polls one caller may have waiting at once; one more is refused (429)")
	f.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "write the admin token created at the cluster's first start here (mode 0600) instead of printing it once on standard output")
	return cmd
}

// EnvJoinToken names the environment variable that gives a daemon its join
// token.
const EnvJoinToken = "CHUNKRAID_JOIN_TOKEN"

// joinToken reads the join token of a daemon from file, or else from
// CHUNKRAID_JOIN_TOKEN.
func joinToken(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(EnvJoinToken)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--join-token-file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func newChunkserverCmd(o *rootOptions) *cobra.Command {
	var (
		cfg      chunkserver.Config
		joinFile string
	)
	cmd := &cobra.Command{
		Use:   "chunkserver",
		Short: "Run a chunkserver: export chunks of a local disk over NBD",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Metaserver, cfg.MetaTLS = o.metaserver, o.tls
			cfg.Logger = o.logger()
			var err error
			if cfg.JoinToken, err = joinToken(joinFile); err != nil {
				return err
			}
			s, err := chunkserver.New(cfg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "unique, stable name of this chunkserver (default: host name)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory that holds the chunk files (required)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:10809", "NBD listen address")
	f.StringVar(&cfg.Advertise, "advertise", "", "NBD address hosts dial (default: the listen address)")
	f.StringVar(&cfg.FaultDomain, "fault-domain", "", "failure domain, e.g. a rack (default: the name)")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat", 2*time.Second, "heartbeat interval")
	f.StringVar(&cfg.ControlListen, "control-listen", "127.0.0.1:10909", "control API listen address (fence, pin, LOG bitmaps)")
	f.StringVar(&cfg.ControlAdvertise, "control-advertise", "", "control API address reported to the metaserver (default: the control listen address)")
	f.StringVar(&joinFile, "join-token-file", "", "file holding a join token for the first registration (default: env "+EnvJoinToken+"); the credential it earns is kept in the data directory")
	f.IntVar(&cfg.MaxConnections, "max-connections", 256, "NBD connections served at once; one more is refused")
	f.Int64Var(&cfg.MaxInFlightBytes, "max-inflight-bytes", 64<<20, "payload bytes one NBD connection may have in flight (at least 32 MiB)")
	f.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", 30*time.Second, "longest NBD handshake")
	f.Int64Var(&cfg.LogRegion, "log-region", 64<<20, "LOG bitmap region size of new chunks in bytes (a power of two)")
	return cmd
}

func newHostdCmd(o *rootOptions) *cobra.Command {
	var (
		cfg      hostd.Config
		joinFile string
	)
	cmd := &cobra.Command{
		Use:   "hostd",
		Short: "Run the host daemon: assemble volumes from remote chunks and serve them over iSCSI",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Metaserver, cfg.MetaTLS = o.metaserver, o.tls
			cfg.Logger = o.logger()
			var err error
			if cfg.JoinToken, err = joinToken(joinFile); err != nil {
				return err
			}
			s, err := hostd.New(cfg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "unique, stable name of this host (default: host name)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:3260", "iSCSI listen address")
	f.StringVar(&cfg.Advertise, "advertise", "", "iSCSI portal address reported to the metaserver (default: the listen address)")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat", 2*time.Second, "heartbeat interval")
	f.DurationVar(&cfg.IOTimeout, "io-timeout", 0, "t_io: a member request not answered in this time fails the member (default: the cluster's, 5s)")
	f.IntVar(&cfg.BlockSize, "block-size", 512, "logical block size of the iSCSI LUNs (512 or 4096)")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", 2*time.Second, "each set reads a block of every in-sync member this often, so an idle volume notices a member that went away")
	f.DurationVar(&cfg.QoSWaitCap, "qos-wait-cap", hostd.DefaultQoSWaitCap, "a command over its volume's I/O limits waits at most this long, then is answered TASK SET FULL so that the initiator retries it")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at https://ADDR/metrics (TLS with a certificate of the cluster CA, any operator token); empty: none")
	f.IntVar(&cfg.MaxISCSIConnections, "max-connections", 256, "iSCSI connections the portal holds at once; one more is refused")
	f.DurationVar(&cfg.LoginTimeout, "login-timeout", 30*time.Second, "longest iSCSI login")
	f.StringVar(&joinFile, "join-token-file", "", "file holding a join token for the first registration (default: env "+EnvJoinToken+"); the credential it earns is kept in --state-dir")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory of what hostd keeps across reboots, its credential (default /var/lib/chunkraid/hostd-NAME)")
	f.StringVar(&cfg.WIBDir, "wib-dir", "", "directory of the write-intent bitmaps, on a RAM file system (default /dev/shm/chunkraid-NAME)")
	f.Int64Var(&cfg.RegionSize, "wib-region", 1<<20, "write-intent bitmap region size in bytes")
	f.Int64Var(&cfg.ResyncRate, "resync-rate", 256<<20, "resync copy limit per set in bytes per second (negative: unlimited)")
	return cmd
}
