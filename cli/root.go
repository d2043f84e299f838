// Package cli is the composition root of the chunkraid binary: the cobra
// command tree with the daemons (metaserver, chunkserver, hostd) as
// subcommands beside the admin commands that talk to the REST API.
package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// EnvMetaserver names the environment variable that gives the metaserver URL.
const EnvMetaserver = "CHUNKRAID_METASERVER"

// EnvToken names the environment variable that gives the API token.
const EnvToken = "CHUNKRAID_TOKEN"

// EnvCA names the environment variable that gives the cluster CA's
// certificate file.
const EnvCA = "CHUNKRAID_CA"

const defaultMetaserver = "https://127.0.0.1:8080"

// rootOptions are the flags every command shares.
type rootOptions struct {
	metaserver string
	output     string
	logLevel   string
	tokenFile  string
	token      string // from --token-file or CHUNKRAID_TOKEN
	caFile     string
	tls        *tls.Config // trusts the CA of --ca-file or CHUNKRAID_CA; nil: the system's
	out        io.Writer
}

func (o *rootOptions) client() *api.Client {
	c := api.NewClient(o.metaserver, nil)
	if o.tls != nil {
		c = api.NewTLSClient(o.metaserver, o.tls)
	}
	if o.token != "" {
		c = c.WithToken(o.token)
	}
	return c
}

// loadCA sets o.tls to trust only the CA of --ca-file or CHUNKRAID_CA, if
// either names one.
func (o *rootOptions) loadCA() error {
	if o.caFile == "" {
		return nil
	}
	b, err := os.ReadFile(o.caFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	if o.tls, err = pki.ClientConfig(b, pki.Metaserver); err != nil {
		return fmt.Errorf("--ca-file %s: %w", o.caFile, err)
	}
	return nil
}

// loadToken sets o.token from --token-file, or else from CHUNKRAID_TOKEN.
func (o *rootOptions) loadToken() error {
	if o.tokenFile == "" {
		o.token = strings.TrimSpace(os.Getenv(EnvToken))
		return nil
	}
	b, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	o.token = strings.TrimSpace(string(b))
	if o.token == "" {
		return fmt.Errorf("--token-file %s is empty: it should hold one API token", o.tokenFile)
	}
	return nil
}

func (o *rootOptions) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// print writes v as JSON with -o json, otherwise calls table.
func (o *rootOptions) print(v any, table func(w *tabwriter.Writer)) error {
	switch o.output {
	case "json":
		enc := json.NewEncoder(o.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table", "":
		w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
		table(w)
		return w.Flush()
	}
	return fmt.Errorf("unknown output format %q: use -o table or -o json", o.output)
}

// NewRoot returns the chunkraid command tree.
func NewRoot() *cobra.Command {
	o := &rootOptions{out: os.Stdout}
	root := &cobra.Command{
		Use:           "chunkraid",
		Short:         "chunkraid: a distributed block store of mirrored remote chunks served over iSCSI",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if o.output != "table" && o.output != "json" {
				return fmt.Errorf("unknown output format %q: use -o table or -o json", o.output)
			}
			urls := api.SplitURLs(o.metaserver)
			if len(urls) == 0 {
				return fmt.Errorf("no metaserver URL in %q: give one or more, comma-separated", o.metaserver)
			}
			for _, u := range urls {
				if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
					return fmt.Errorf("metaserver address %q must be an http:// or https:// URL", u)
				}
			}
			if cmd.Name() == "metaserver" {
				return nil // its --ca-file is where it writes the CA
			}
			if err := o.loadCA(); err != nil {
				return err
			}
			return o.loadToken()
		},
	}
	ms := os.Getenv(EnvMetaserver)
	if ms == "" {
		ms = defaultMetaserver
	}
	root.PersistentFlags().StringVar(&o.metaserver, "metaserver", ms, "metaserver URL, or several comma-separated (the CLI and daemons fail over between them) (env "+EnvMetaserver+")")
	root.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().StringVar(&o.logLevel, "log-level", "info", "daemon log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&o.tokenFile, "token-file", "", "file holding the API token (default: env "+EnvToken+")")
	root.PersistentFlags().StringVar(&o.caFile, "ca-file", os.Getenv(EnvCA), "the cluster CA's certificate, to verify an https:// metaserver (env "+EnvCA+")")
	root.AddCommand(
		newMetaserverCmd(o), newChunkserverCmd(o), newHostdCmd(o),
		newVolumeCmd(o), newSnapshotCmd(o), newServerCmd(o), newHostCmd(o), newChunkCmd(o), newEventsCmd(o), newClusterCmd(o), newTokenCmd(o), newCertCmd(o), newDemoCmd(o),
	)
	return root
}

// Main runs the command line and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := NewRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "chunkraid:", explain(err))
		return 1
	}
	return 0
}

// explain turns a failure to reach a server into one line that names the
// URL tried and how to point the CLI elsewhere, and a refused token into
// one that says where the CLI reads it; other errors pass as they are.
func explain(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeUnauthenticated:
			return fmt.Errorf("no valid API token: %s; set %s=<token> or pass --token-file FILE (the admin token was shown once when the cluster was created)", ae.Message, EnvToken)
		case api.CodePermissionDenied:
			return fmt.Errorf("permission denied: %s; set %s or --token-file to an admin token", ae.Message, EnvToken)
		}
	}
	var unknownCA x509.UnknownAuthorityError
	if errors.As(err, &unknownCA) {
		return fmt.Errorf("the metaserver's certificate is not signed by a CA this command trusts: pass --ca-file with the cluster CA's certificate or set %s (%v)", EnvCA, unknownCA)
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	var oe *net.OpError
	var dns *net.DNSError
	var cause error
	switch {
	case errors.As(err, &dns):
		cause = dns
	case errors.As(err, &oe) && oe.Op == "dial":
		cause = oe.Err
	case ue.Timeout():
		cause = errors.New("no answer in time")
	default:
		return err
	}
	base := ue.URL
	if u, perr := url.Parse(ue.URL); perr == nil {
		base = u.Scheme + "://" + u.Host
	}
	return fmt.Errorf("cannot reach the metaserver at %s (%v): is it running? Set its URL with --metaserver or %s", base, cause, EnvMetaserver)
}
