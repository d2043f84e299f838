package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// The volume commands of iSCSI access control (chap, allow, disallow) and
// the capacity lines of volume list and show.

type volumeCHAPOptions struct {
	user, secretFile             string
	mutualUser, mutualSecretFile string
	clear                        bool
}

// newVolumeCHAPCmd returns "volume chap": set or clear a volume's CHAP
// credentials.
func newVolumeCHAPCmd(o *rootOptions) *cobra.Command {
	var co volumeCHAPOptions
	cmd := &cobra.Command{
		Use:   "chap NAME (--user USER --secret-file FILE [--mutual-user USER --mutual-secret-file FILE] | --clear)",
		Short: "Set or clear the CHAP credentials initiators need to log in to a volume",
		Long: `Set the CHAP credentials of a volume: initiators must then log in as --user
with the secret in --secret-file. With --mutual-user and --mutual-secret-file
the target also proves itself to initiators that ask (mutual CHAP); the two
secrets must differ. Secrets are 12 to 255 bytes, read from files so that they
stay out of the shell history; one trailing newline is ignored. Make secret
files readable by their owner only (chmod 600).

The metaserver stores secrets sealed and never shows them; only the host that
serves the volume receives them. The host applies a change to new logins
without a new attach. --clear removes CHAP: initiators log in without
authentication (the initiator allowlist still applies).`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVolumeCHAP(cmd, o, args[0], co)
		},
	}
	f := cmd.Flags()
	f.StringVar(&co.user, "user", "", "the CHAP name initiators log in with")
	f.StringVar(&co.secretFile, "secret-file", "", "file holding the initiators' CHAP secret (12 to 255 bytes)")
	f.StringVar(&co.mutualUser, "mutual-user", "", "mutual CHAP: the name the target answers with")
	f.StringVar(&co.mutualSecretFile, "mutual-secret-file", "", "mutual CHAP: file holding the target's secret")
	f.BoolVar(&co.clear, "clear", false, "remove CHAP from the volume")
	return cmd
}

func runVolumeCHAP(cmd *cobra.Command, o *rootOptions, name string, co volumeCHAPOptions) error {
	ctx := cmd.Context()
	if co.clear {
		if co.user != "" || co.secretFile != "" || co.mutualUser != "" || co.mutualSecretFile != "" {
			return errors.New("--clear takes no other flag: it removes CHAP from the volume")
		}
		c := o.client()
		if err := c.ClearVolumeCHAP(ctx, name); err != nil {
			return err
		}
		v, err := c.GetVolume(ctx, name)
		if err != nil {
			return err
		}
		return o.print(v, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "volume %s: CHAP cleared: initiators log in without authentication\n", v.Name)
		})
	}
	if co.user == "" || co.secretFile == "" {
		return errors.New("give --user and --secret-file to set CHAP, or --clear to remove it")
	}
	if (co.mutualUser == "") != (co.mutualSecretFile == "") {
		return errors.New("mutual CHAP needs both --mutual-user and --mutual-secret-file")
	}
	req := api.SetCHAPRequest{User: co.user, MutualUser: co.mutualUser}
	var err error
	if req.Secret, err = readSecretFile("--secret-file", co.secretFile, cmd.ErrOrStderr()); err != nil {
		return err
	}
	if co.mutualSecretFile != "" {
		if req.MutualSecret, err = readSecretFile("--mutual-secret-file", co.mutualSecretFile, cmd.ErrOrStderr()); err != nil {
			return err
		}
		if req.MutualSecret == req.Secret {
			return errors.New("--mutual-secret-file holds the same secret as --secret-file: RFC 7143 forbids one CHAP secret in both directions")
		}
	}
	v, err := o.client().SetVolumeCHAP(ctx, name, req)
	if err != nil {
		return err
	}
	return o.print(v, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "volume %s: CHAP set: %s; its host applies it to new logins\n", v.Name, describeCHAP(v.Auth))
	})
}

// maxSecretFile bounds what readSecretFile reads.
const maxSecretFile = 4096

// readSecretFile reads a CHAP secret from path for flag. One trailing
// newline (LF or CRLF) is dropped. A file readable by every user is used,
// with a warning on warn.
func readSecretFile(flag, path string, warn io.Writer) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s %s: no such file: write the secret (12 to 255 bytes) to it first, e.g. openssl rand -base64 12 > %s", flag, path, path)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s is not a regular file", flag, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("%s: read %s: %w", flag, path, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("%s %s is larger than %d bytes: it should hold one secret of 12 to 255 bytes", flag, path, maxSecretFile)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case s == "":
		return "", fmt.Errorf("%s %s is empty: put a secret of %d to %d bytes in it, e.g. openssl rand -base64 12 > %s",
			flag, path, api.MinCHAPSecret, api.MaxCHAPSecret, path)
	case len(s) < api.MinCHAPSecret:
		return "", fmt.Errorf("%s %s holds a secret of %d bytes, too short: CHAP secrets must be %d to %d bytes (RFC 7143 asks for at least 96 bits)",
			flag, path, len(s), api.MinCHAPSecret, api.MaxCHAPSecret)
	case len(s) > api.MaxCHAPSecret:
		return "", fmt.Errorf("%s %s holds %d bytes: CHAP secrets are at most %d bytes", flag, path, len(s), api.MaxCHAPSecret)
	case strings.ContainsAny(s, "\r\n"):
		return "", fmt.Errorf("%s %s holds more than one line: put the secret alone on one line", flag, path)
	}
	if perm := st.Mode().Perm(); perm&0o004 != 0 {
		fmt.Fprintf(warn, "warning: %s %s is readable by every user (mode %04o): chmod 600 %s\n", flag, path, perm, path)
	}
	return s, nil
}

// newVolumeAllowCmd returns "volume allow": add initiators to a volume's
// allowlist.
func newVolumeAllowCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "allow NAME IQN...",
		Short: "Allow iSCSI initiators to log in to a volume",
		Long: `Add initiator names (iqn.YYYY-MM.domain[:id], eui.<16 hex>, naa.<16 or 32 hex>)
to the allowlist of a volume. While the list is empty every initiator may log
in; once it names one, only those named may. The host applies the change to
new logins without a new attach.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("%s takes NAME and at least one initiator name: see %s --help", cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := o.client().AllowInitiators(cmd.Context(), args[0], args[1:]...)
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) { printAllowlist(w, v) })
		},
	}
}

// newVolumeDisallowCmd returns "volume disallow": remove initiators from a
// volume's allowlist.
func newVolumeDisallowCmd(o *rootOptions) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "disallow NAME (IQN... | --all)",
		Short: "Remove iSCSI initiators from a volume's allowlist",
		Long: `Remove initiator names from the allowlist of a volume. Each must be in the
list. Removing the last names is refused, since an empty list lets every
initiator in: allow the initiators that keep access first, or pass --all to
empty the list on purpose.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && len(args) != 1:
				return fmt.Errorf("%s --all takes only NAME", cmd.CommandPath())
			case !all && len(args) < 2:
				return fmt.Errorf("%s takes NAME and at least one initiator name, or NAME --all: see %s --help", cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.InitiatorsRequest{Disallow: args[1:], Clear: all}
			v, err := o.client().UpdateInitiators(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) { printAllowlist(w, v) })
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "empty the allowlist: every initiator may then log in")
	return cmd
}

// printAllowlist says who may log in to a volume.
func printAllowlist(w *tabwriter.Writer, v *api.Volume) {
	list := v.Auth.AllowedInitiators
	switch len(list) {
	case 0:
		fmt.Fprintf(w, "volume %s: the allowlist is empty: every initiator may log in\n", v.Name)
	case 1:
		fmt.Fprintf(w, "volume %s: 1 initiator may log in:\n", v.Name)
	default:
		fmt.Fprintf(w, "volume %s: %d initiators may log in:\n", v.Name, len(list))
	}
	for _, n := range list {
		fmt.Fprintf(w, "  %s\n", oneLine(n))
	}
}

// describeCHAP sums up CHAP credentials without secrets.
func describeCHAP(a api.VolumeAuth) string {
	if a.CHAPUser == "" {
		return "none: initiators log in without authentication"
	}
	s := "user " + oneLine(a.CHAPUser)
	if a.MutualUser != "" {
		return s + ", mutual: the target answers as " + oneLine(a.MutualUser)
	}
	return s + " (one-way)"
}

// printAuth prints the access-control lines of volume show: the CHAP users
// and the allowed initiators, one per line. It never prints a secret.
func printAuth(w *tabwriter.Writer, a api.VolumeAuth) {
	fmt.Fprintf(w, "CHAP:\t%s\n", describeCHAP(a))
	if len(a.AllowedInitiators) == 0 {
		fmt.Fprintf(w, "Initiators:\tany (no allowlist)\n")
		return
	}
	for i, n := range a.AllowedInitiators {
		label := ""
		if i == 0 {
			label = "Initiators:"
		}
		fmt.Fprintf(w, "%s\t%s\n", label, oneLine(n))
	}
}

// efficiency formats the share of raw bytes that hold volume data.
func efficiency(size, raw int64) string {
	if raw <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f %%", 100*float64(size)/float64(raw))
}

// chunkCount counts the member chunks of a volume.
func chunkCount(v *api.Volume) int {
	n := 0
	for _, s := range v.Sets {
		n += len(s.Members)
	}
	return n
}

// describeLayout explains a volume's layout: "mirror:2 (2 copies)" or
// "ec:4+2 (4 data + 2 parity chunks per set, stripe unit 64 KiB)".
func describeLayout(v *api.Volume) string {
	l, err := api.ParseLayout(v.Layout)
	if err != nil {
		return oneLine(v.Layout)
	}
	if l.Kind == api.LayoutEC {
		return fmt.Sprintf("%s (%d data + %d parity chunks per set, stripe unit %s)", l, l.K, l.M, formatSize(v.StripeUnit))
	}
	return fmt.Sprintf("%s (%d copies)", l, l.Copies)
}

// describeEfficiency gives size/raw and, when the last set is only partly
// used, what the layout itself stores.
func describeEfficiency(v *api.Volume) string {
	e := efficiency(v.SizeBytes, v.RawBytes)
	l, err := api.ParseLayout(v.Layout)
	if err != nil || v.RawBytes <= 0 {
		return e
	}
	if nominal := fmt.Sprintf("%.1f %%", 100*l.Efficiency()); nominal != e {
		return fmt.Sprintf("%s (%s stores %s; the last set is partly used)", e, l, nominal)
	}
	return e
}
