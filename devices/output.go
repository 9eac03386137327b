package devices

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteTable writes devices as an aligned table for `iotgw devices list`:
// id, status (online/offline), last seen, created, disabled. Times are UTC
// to the second.
func WriteTable(w io.Writer, devs []Device) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATUS\tLAST SEEN\tCREATED\tDISABLED")
	for _, d := range devs {
		status := "offline"
		if d.Online {
			status = "online"
		}
		created := tableTime(d.Created, "-")
		if !d.Registered {
			created = "unregistered"
		}
		disabled := "no"
		if d.Disabled {
			disabled = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.ID, status, tableTime(d.LastSeen, "never"), created, disabled)
	}
	return tw.Flush()
}

func tableTime(t time.Time, zero string) string {
	if t.IsZero() {
		return zero
	}
	return t.UTC().Format(time.RFC3339)
}

// WriteJSON writes devices as an indented JSON array (never null), for
// `iotgw devices list --json` and scripts. Device has no secret fields, so
// nothing secret can be written.
func WriteJSON(w io.Writer, devs []Device) error {
	if devs == nil {
		devs = []Device{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(devs)
}
