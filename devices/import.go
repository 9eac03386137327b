package devices

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ImportOptions control Import.
type ImportOptions struct {
	// Replace updates devices that already exist (password, PSK if given,
	// disabled, metadata); without it they are skipped and left unchanged.
	Replace bool
	// Progress receives one line per rejected row and one per stored batch;
	// nil for none.
	Progress io.Writer
	// BatchSize is how many rows are stored per registry write (default 500).
	BatchSize int
}

// ImportProblem is a row Import rejected.
type ImportProblem struct {
	Line   int    // line number in the CSV, from 1
	Device string // the device column, possibly invalid
	Err    error
}

func (p ImportProblem) String() string {
	if p.Device == "" {
		return fmt.Sprintf("line %d: %v", p.Line, p.Err)
	}
	return fmt.Sprintf("line %d: device %s: %v", p.Line, quoteShort(p.Device), p.Err)
}

// maxProblems bounds ImportSummary.Problems; Invalid counts them all.
const maxProblems = 1000

// ImportSummary counts what Import did.
type ImportSummary struct {
	Rows     int             // data rows read (not the header)
	Added    int             // new devices
	Updated  int             // existing devices replaced (Replace)
	Skipped  int             // existing devices left alone
	Invalid  int             // rows rejected, see Problems
	Problems []ImportProblem // the first 1000 rejected rows
}

func (s ImportSummary) String() string {
	return fmt.Sprintf("%d rows: %d added, %d updated, %d skipped (already registered), %d invalid",
		s.Rows, s.Added, s.Updated, s.Skipped, s.Invalid)
}

// Import registers a fleet from CSV. The first row is a header naming the
// columns, in any order:
//
//	device         the device id (required)
//	password       a plain password, hashed with argon2id
//	password_hash  instead of password: an argon2id or bcrypt hash from
//	               another system, stored as is
//	psk            optional DTLS pre-shared key in hex
//	disabled       optional: true/false, yes/no, 1/0
//	anything else  a metadata field, e.g. fleet,model,site (empty cells are
//	               left out)
//
// Lines starting with '#' are comments. Rows with an invalid id, no
// password (unless they have a psk), a bad hash, PSK or metadata, another
// number of cells than the header, or an id seen earlier in the file are
// reported with their line number and skipped; the rest are stored in
// batches. A bad header, a read error or a registry error stops the import
// and is returned with the summary so far (batches already stored stay
// stored; re-running with Replace is safe). Passwords are hashed on
// GOMAXPROCS goroutines: about 40 ms of CPU each, so 10,000 devices take a
// few minutes on two cores.
func Import(ctx context.Context, reg Registry, r io.Reader, opts ImportOptions) (ImportSummary, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	var sum ImportSummary
	var batch []Entry
	var batchLines []int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		out, err := reg.Put(ctx, batch, opts.Replace)
		if err != nil {
			return fmt.Errorf("store lines %d-%d: %w", batchLines[0], batchLines[len(batchLines)-1], err)
		}
		for _, o := range out {
			switch o {
			case Added:
				sum.Added++
			case Updated:
				sum.Updated++
			case Skipped:
				sum.Skipped++
			}
		}
		fmt.Fprintf(progress, "stored %d devices (up to line %d)\n", sum.Added+sum.Updated+sum.Skipped, batchLines[len(batchLines)-1])
		batch, batchLines = batch[:0], batchLines[:0]
		return nil
	}
	err := readImport(r, func(e Entry, line int) error {
		sum.Rows++
		batch = append(batch, e)
		batchLines = append(batchLines, line)
		if len(batch) >= opts.BatchSize {
			return flush()
		}
		return ctx.Err()
	}, func(p ImportProblem) {
		sum.Rows++
		sum.Invalid++
		if len(sum.Problems) < maxProblems {
			sum.Problems = append(sum.Problems, p)
		}
		fmt.Fprintln(progress, p.String())
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return sum, fmt.Errorf("import: %w", err)
	}
	return sum, nil
}

// importColumns maps the header to column indexes; -1 for absent.
type importColumns struct {
	device, password, hash, psk, disabled int
	meta                                  map[string]int
	n                                     int // columns in the header
}

func parseImportHeader(rec []string) (importColumns, error) {
	c := importColumns{device: -1, password: -1, hash: -1, psk: -1, disabled: -1, meta: map[string]int{}}
	seen := map[string]bool{}
	for i, name := range rec {
		name = strings.ToLower(strings.TrimSpace(name))
		if i == 0 {
			name = strings.TrimPrefix(name, "\ufeff") // spreadsheet byte order mark
		}
		if seen[name] {
			return c, fmt.Errorf("column %q twice", name)
		}
		seen[name] = true
		switch name {
		case "device":
			c.device = i
		case "password":
			c.password = i
		case "password_hash":
			c.hash = i
		case "psk":
			c.psk = i
		case "disabled":
			c.disabled = i
		default:
			if !ValidMetaKey(name) {
				return c, fmt.Errorf("column %s: not a valid metadata name (letters, digits, '.', '_', '-')", quoteShort(name))
			}
			c.meta[name] = i
		}
	}
	if c.device < 0 {
		return c, errors.New(`no "device" column: the header must name the columns, e.g. device,password,psk,fleet`)
	}
	if c.password < 0 && c.hash < 0 && c.psk < 0 {
		return c, errors.New(`no "password", "password_hash" or "psk" column`)
	}
	return c, nil
}

// readImport parses CSV and calls entry for each valid row and problem for
// each rejected one. It stops at the first error entry returns.
func readImport(r io.Reader, entry func(Entry, int) error, problem func(ImportProblem)) error {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	var cols *importColumns
	seen := map[string]int{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			if cols == nil {
				return errors.New("empty file: want a header row such as device,password")
			}
			return nil
		}
		var perr *csv.ParseError
		if errors.As(err, &perr) {
			if cols == nil {
				return fmt.Errorf("header: %w", err)
			}
			problem(ImportProblem{Line: perr.StartLine, Err: perr.Err})
			continue
		}
		if err != nil {
			return err
		}
		line, _ := cr.FieldPos(0)
		if cols == nil {
			c, err := parseImportHeader(rec)
			if err != nil {
				return fmt.Errorf("header (line %d): %w", line, err)
			}
			cols = &c
			cols.n = len(rec)
			continue
		}
		e, err := importRow(cols, rec)
		if err == nil {
			if first, dup := seen[e.Device.ID]; dup {
				err = fmt.Errorf("already given on line %d", first)
			}
		}
		if err != nil {
			id := ""
			if cols.device < len(rec) {
				id = strings.TrimSpace(rec[cols.device])
			}
			problem(ImportProblem{Line: line, Device: id, Err: err})
			continue
		}
		seen[e.Device.ID] = line
		if err := entry(e, line); err != nil {
			return err
		}
	}
}

func importRow(c *importColumns, rec []string) (Entry, error) {
	cell := func(i int) string {
		if i < 0 || i >= len(rec) {
			return ""
		}
		return strings.TrimSpace(rec[i])
	}
	var e Entry
	e.Device.ID = cell(c.device)
	if err := ValidID(e.Device.ID); err != nil {
		return e, err
	}
	if len(rec) != c.n {
		// A stray comma shifts cells into the wrong columns, the password
		// one included: refuse rather than guess.
		return e, fmt.Errorf("%d cells, the header has %d (quote cells that contain commas)", len(rec), c.n)
	}
	// Passwords are taken as written: spaces may be part of them.
	if c.password >= 0 && c.password < len(rec) {
		e.Credentials.Password = rec[c.password]
	}
	e.Credentials.PasswordHash = cell(c.hash)
	if p := cell(c.psk); p != "" {
		k, err := ParsePSK(p)
		if err != nil {
			return e, err
		}
		e.Credentials.PSK = k
	}
	if e.Credentials.Password == "" && e.Credentials.PasswordHash == "" && e.Credentials.PSK == nil {
		return e, errors.New("empty password")
	}
	if d := cell(c.disabled); d != "" {
		v, err := parseBool(d)
		if err != nil {
			return e, fmt.Errorf("disabled: %w", err)
		}
		e.Device.Disabled = v
	}
	for k, i := range c.meta {
		if v := cell(i); v != "" {
			if e.Device.Meta == nil {
				e.Device.Meta = map[string]string{}
			}
			e.Device.Meta[k] = v
		}
	}
	if err := validMeta(e.Device.Meta); err != nil {
		return e, err
	}
	return e, e.Credentials.validate()
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "yes", "y":
		return true, nil
	case "no", "n":
		return false, nil
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%s is not true/false, yes/no or 1/0", quoteShort(s))
	}
	return v, nil
}
