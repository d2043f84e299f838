package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func newTokenCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "API tokens of operators (admin or reader)"}
	var role string
	create := &cobra.Command{
		Use:   "create NAME --role admin|reader",
		Short: "Create an API token; it is shown only this once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := o.client().CreateToken(cmd.Context(), api.CreateTokenRequest{Name: args[0], Role: role})
			if err != nil {
				return err
			}
			if o.output == "json" {
				return o.print(t, nil)
			}
			fmt.Fprintf(o.out, "Created token %s (role %s). It is shown only this once:\n  export %s=%s\n", t.Name, t.Role, EnvToken, t.Secret)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "admin (every route) or reader (routes that change nothing)")
	_ = create.MarkFlagRequired("role")
	cmd.AddCommand(create, &cobra.Command{
		Use:   "list",
		Short: "List API tokens (names and roles; never the tokens)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := o.client().ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(ts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tROLE\tCREATED")
				for _, t := range ts {
					fmt.Fprintf(w, "%s\t%s\t%s\n", t.Name, t.Role, ago(t.CreatedAt))
				}
			})
		},
	}, &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an API token at once (never the last admin token)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Revoked token %s.\n", args[0])
			return nil
		},
	})
	return cmd
}
