package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

type eventsOptions struct {
	volume string
	limit  int
	follow bool
	// interval is how often --follow asks for new events.
	interval time.Duration
}

// newEventsCmd returns "chunkraid events": the cluster's event log.
func newEventsCmd(o *rootOptions) *cobra.Command {
	eo := eventsOptions{interval: time.Second}
	cmd := &cobra.Command{
		Use:   "events [--volume NAME] [--limit N] [--follow]",
		Short: "Show the cluster's events (state changes), oldest first",
		Long: `Show the newest events of the cluster, oldest first: volumes created,
attached and deleted, members degraded and resynced, chunkservers going
offline and coming back. With --follow, keep printing new events until
interrupted; with -o json, print a JSON array, or one JSON object per line
with --follow.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if eo.limit < 1 || eo.limit > api.MaxEvents {
				return fmt.Errorf("--limit %d: use 1 to %d", eo.limit, api.MaxEvents)
			}
			return runEvents(cmd.Context(), o, eo)
		},
	}
	f := cmd.Flags()
	f.StringVar(&eo.volume, "volume", "", "only the events of this volume")
	f.IntVar(&eo.limit, "limit", 50, fmt.Sprintf("show at most this many of the newest events (1 to %d)", api.MaxEvents))
	f.BoolVarP(&eo.follow, "follow", "f", false, "keep printing new events until interrupted")
	return cmd
}

func runEvents(ctx context.Context, o *rootOptions, eo eventsOptions) error {
	c := o.client()
	evs, err := c.ListEvents(ctx, eo.volume, 0, eo.limit)
	if err != nil {
		return err
	}
	if !eo.follow {
		switch {
		case o.output == "json":
			enc := json.NewEncoder(o.out)
			enc.SetIndent("", "  ")
			return enc.Encode(evs)
		case len(evs) == 0:
			fmt.Fprintln(o.out, "no events")
		default:
			printEvents(o.out, evs, true)
		}
		return nil
	}
	var last int64
	header := true
	t := time.NewTicker(eo.interval)
	defer t.Stop()
	for {
		if err := writeEvents(o, evs, header); err != nil {
			return err
		}
		if len(evs) > 0 {
			last = evs[len(evs)-1].ID
			header = false
		}
		select {
		case <-ctx.Done():
			return nil // interrupted: the normal end of --follow
		case <-t.C:
		}
		evs, err = c.ListEvents(ctx, eo.volume, last, api.MaxEvents)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// writeEvents prints one batch of followed events: JSON lines with -o
// json, table lines otherwise (the header only before the first event).
func writeEvents(o *rootOptions, evs []api.Event, header bool) error {
	if o.output != "json" {
		printEvents(o.out, evs, header && len(evs) > 0)
		return nil
	}
	enc := json.NewEncoder(o.out)
	for _, e := range evs {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// printEvents writes events as fixed-width lines, so that lines printed
// later by --follow line up with the first ones.
func printEvents(w io.Writer, evs []api.Event, header bool) {
	if header {
		fmt.Fprintf(w, "%-8s %-19s %-20s %-32s %s\n", "ID", "TIME", "KIND", "SUBJECT", "MESSAGE")
	}
	for _, e := range evs {
		fmt.Fprintf(w, "%-8d %-19s %-20s %-32s %s\n", e.ID, e.Time.Local().Format("2006-01-02 15:04:05"),
			oneLine(e.Kind), oneLine(e.Subject), oneLine(e.Message))
	}
}
