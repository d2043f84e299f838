package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

type eventsOptions struct {
	volume, kind, server string
	limit                int
	follow, detail       bool
	// interval is how often --follow asks for new events.
	interval time.Duration
}

// newEventsCmd returns "chunkraid events": the cluster's event log.
func newEventsCmd(o *rootOptions) *cobra.Command {
	eo := eventsOptions{interval: time.Second}
	cmd := &cobra.Command{
		Use:   "events [--volume NAME] [--kind KIND] [--server NAME] [--limit N] [--detail] [--follow]",
		Short: "Show the cluster's events (state changes), oldest first",
		Long: `Show the newest events of the cluster, oldest first: volumes created,
attached and deleted, members degraded and resynced, chunkservers going
offline and coming back. The events of one cause are one line: every
member of a chunkserver that went offline degraded, their resyncs when it
came back ("cs3: 213 members resynced, 4.0 MiB copied in 3s (volume
demo: 213)"); --detail prints every event, with its ID. --volume, --kind
(member_degraded, resync_done, ...) and --server (a chunkserver or host)
keep only those events. With --follow, keep printing new events, every one,
until interrupted; with -o json, print a JSON array of every event, or one
JSON object per line with --follow.`,
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
	f.StringVar(&eo.kind, "kind", "", "only the events of this kind (member_degraded, resync_done, chunkserver_offline, ...)")
	f.StringVar(&eo.server, "server", "", "only the events about this chunkserver or host")
	f.BoolVar(&eo.detail, "detail", false, "every event on its own line, not one line per cause")
	f.IntVar(&eo.limit, "limit", 50, fmt.Sprintf("show at most this many of the newest lines (1 to %d)", api.MaxEvents))
	f.BoolVarP(&eo.follow, "follow", "f", false, "keep printing new events until interrupted")
	return cmd
}

func runEvents(ctx context.Context, o *rootOptions, eo eventsOptions) error {
	c := o.client()
	filter := api.EventFilter{Volume: eo.volume, Kind: eo.kind, Server: eo.server}
	grouped := !eo.follow && !eo.detail && o.output != "json"
	fetch := eo.limit
	if grouped {
		fetch = api.MaxEvents // the newest lines may summarise many events
	}
	evs, err := c.FindEvents(ctx, filter, 0, fetch)
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
		case grouped:
			gs := api.GroupEvents(evs)
			printGroups(o.out, gs[max(0, len(gs)-eo.limit):])
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
		evs, err = c.FindEvents(ctx, filter, last, api.MaxEvents)
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

// printGroups writes one line per cause: the event itself, or a summary of
// the group with the range of its IDs (events --detail shows each).
func printGroups(w io.Writer, gs []api.EventGroup) {
	fmt.Fprintf(w, "%-13s %-19s %-20s %-32s %s\n", "ID", "TIME", "KIND", "SUBJECT", "MESSAGE")
	for _, g := range gs {
		id, subject := strconv.FormatInt(g.FirstID, 10), g.Events[0].Subject
		if len(g.Events) > 1 {
			id = fmt.Sprintf("%d-%d", g.FirstID, g.LastID)
			subject = fmt.Sprintf("%s ×%d", g.Server, len(g.Events))
		}
		fmt.Fprintf(w, "%-13s %-19s %-20s %-32s %s\n", id, g.First.Local().Format("2006-01-02 15:04:05"),
			oneLine(g.Kind), oneLine(subject), oneLine(g.Summary()))
	}
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
