package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// maxSchemaErrors bounds how many violations one validation error lists:
// it travels in a Kafka header.
const maxSchemaErrors = 5

// schemaSet validates device payloads against the JSON Schema of their
// stream (egress.schemas). Drafts 4, 6, 7, 2019-09 and 2020-12 are
// understood (the schema's $schema says which; 2020-12 by default);
// "format" is annotation only, as the specification's default. $ref may
// point at other local files; nothing is fetched over the network.
type schemaSet struct {
	byStream map[string]*jsonschema.Schema
}

// compileSchemas loads every schema file; errors name the config key.
func compileSchemas(files map[string]string) (*schemaSet, error) {
	if len(files) == 0 {
		return nil, nil
	}
	set := &schemaSet{byStream: make(map[string]*jsonschema.Schema, len(files))}
	streams := make([]string, 0, len(files))
	for s := range files {
		streams = append(streams, s)
	}
	sort.Strings(streams)
	c := jsonschema.NewCompiler()
	for _, stream := range streams {
		key := "egress.schemas." + stream
		if stream == "" || strings.ContainsAny(stream, "/+#") {
			return nil, fmt.Errorf("egress.schemas: %q is not a stream name (the {stream} of devices/{device}/{stream})", stream)
		}
		path := files[stream]
		if path == "" {
			return nil, fmt.Errorf("%s: empty path; want a JSON Schema file", key)
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		sch, err := c.Compile(abs)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %s", key, path, oneLine(err.Error()))
		}
		set.byStream[stream] = sch
	}
	return set, nil
}

// validate checks rec's payload when its stream has a schema; the error
// wraps ErrSchema and lists the first few violations on one line.
func (s *schemaSet) validate(rec *Record) error {
	if s == nil {
		return nil
	}
	sch, ok := s.byStream[rec.Stream]
	if !ok {
		return nil
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(rec.Payload))
	if err != nil {
		return fmt.Errorf("%w (egress.schemas.%s): payload is not JSON: %s", ErrSchema, rec.Stream, oneLine(err.Error()))
	}
	err = sch.Validate(doc)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return fmt.Errorf("%w (egress.schemas.%s): %s", ErrSchema, rec.Stream, oneLine(err.Error()))
	}
	// The library's message is a tree, one violation per line under a
	// header line naming the schema file: keep the violations.
	var msgs []string
	lines := strings.Split(ve.Error(), "\n")
	for _, l := range lines[1:] {
		l = strings.TrimPrefix(strings.TrimSpace(l), "- ")
		if l == "" {
			continue
		}
		if len(msgs) == maxSchemaErrors {
			msgs = append(msgs, "...")
			break
		}
		msgs = append(msgs, l)
	}
	if len(msgs) == 0 {
		msgs = append(msgs, oneLine(ve.Error()))
	}
	return fmt.Errorf("%w (egress.schemas.%s): %s", ErrSchema, rec.Stream, strings.Join(msgs, "; "))
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
