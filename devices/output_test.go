package devices

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	at := time.Date(2025, 2, 3, 4, 5, 6, 0, time.UTC)
	devs := []Device{
		{ID: "truck-1", Registered: true, Created: at, Online: true, LastSeen: at.Add(time.Hour)},
		{ID: "truck-2", Registered: true, Created: at, Disabled: true},
		{ID: "visitor", Online: true, LastSeen: at},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, devs); err != nil {
		t.Fatal(err)
	}
	want := `DEVICE   STATUS   LAST SEEN             CREATED               DISABLED
truck-1  online   2025-02-03T05:05:06Z  2025-02-03T04:05:06Z  no
truck-2  offline  never                 2025-02-03T04:05:06Z  yes
visitor  online   2025-02-03T04:05:06Z  unregistered          no
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, nil); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("WriteJSON(nil) = %q, %v", b.String(), err)
	}
	b.Reset()
	d := Device{ID: "t-1", Registered: true, HasPSK: true, Meta: map[string]string{"fleet": "n"}}
	if err := WriteJSON(&b, []Device{d}); err != nil {
		t.Fatal(err)
	}
	var back []Device
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back) != 1 || back[0].ID != "t-1" || !back[0].HasPSK {
		t.Errorf("round trip: %+v, %v\n%s", back, err, b.String())
	}
	if strings.Contains(b.String(), "last_seen") || strings.Contains(b.String(), "created") {
		t.Errorf("zero times written:\n%s", b.String())
	}
}

func TestCredentialsRedacted(t *testing.T) {
	c := Credentials{Password: "hunter2", PasswordHash: "", PSK: []byte("0123456789abcdef")}
	js, _ := json.Marshal(struct{ C Credentials }{c})
	for _, s := range []string{fmtAll(c), string(js)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "0123456789abcdef") || strings.Contains(s, "3031") {
			t.Errorf("credentials printed: %s", s)
		}
	}
}

func fmtAll(c Credentials) string {
	var b strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		b.WriteString(fmt.Sprintf(verb, c))
	}
	return b.String()
}
