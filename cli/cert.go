package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/internal/atomicfile"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

func newCertCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Certificates of the cluster CA"}
	var names []string
	var certOut, keyOut, caOut string
	issue := &cobra.Command{
		Use:   "issue --name NAME... --cert-out FILE --key-out FILE",
		Short: "Issue a metaserver certificate for several names (the key is made here and never sent)",
		Long: `Issue a certificate the cluster CA signs for a metaserver reached by every
--name (host names and IP addresses; repeat the flag). The key is made here
and only a certificate request is sent. Start the metaserver with
--tls-cert-file and --tls-key-file. Chunkservers need none: they get their
control API certificate when they register.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(names) == 0 {
				return errors.New("give at least one --name the metaserver is reached by")
			}
			for _, f := range []string{certOut, keyOut} {
				if _, err := os.Stat(f); err == nil {
					return fmt.Errorf("%s exists: not overwriting a certificate or key (remove it first)", f)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			csr, key, err := pki.NewRequest("chunkraid metaserver")
			if err != nil {
				return err
			}
			c, err := o.client().IssueCertificate(cmd.Context(), api.IssueCertificateRequest{
				Role: api.RoleMetaserverCert, Names: names, CSR: string(csr)})
			if err != nil {
				return err
			}
			if err := atomicfile.Write(keyOut, key, 0o600); err != nil {
				return fmt.Errorf("--key-out: %w", err)
			}
			if err := atomicfile.Write(certOut, []byte(c.Certificate), 0o644); err != nil {
				return fmt.Errorf("--cert-out: %w", err)
			}
			if caOut != "" {
				if err := atomicfile.Write(caOut, []byte(c.ClusterCA), 0o644); err != nil {
					return fmt.Errorf("--ca-out: %w", err)
				}
			}
			if o.output == "json" {
				return o.print(c, nil)
			}
			fmt.Fprintf(o.out, "Issued a metaserver certificate for %v, valid until %s:\n  certificate %s\n  key         %s (mode 0600)\nStart the metaserver with --tls-cert-file %s --tls-key-file %s.\n",
				c.Names, c.NotAfter.Format("2006-01-02"), certOut, keyOut, certOut, keyOut)
			return nil
		},
	}
	f := issue.Flags()
	f.StringArrayVar(&names, "name", nil, "host name or IP address the metaserver is reached by (repeat)")
	f.StringVar(&certOut, "cert-out", "", "write the certificate here (PEM)")
	f.StringVar(&keyOut, "key-out", "", "write the new key here (PEM, mode 0600)")
	f.StringVar(&caOut, "ca-out", "", "also write the cluster CA's certificate here")
	_ = issue.MarkFlagRequired("cert-out")
	_ = issue.MarkFlagRequired("key-out")
	cmd.AddCommand(issue)
	return cmd
}
