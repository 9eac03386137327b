package enrich

import (
	"maps"
	"time"
)

// entry is one cached Redis hash: a device or a lookup row.
type entry struct {
	key     string
	fields  hash      // nil: Redis said the key does not exist (negative entry)
	expires time.Time // fresh before this; zero after an invalidation
	checked time.Time // when Redis last returned fields; zero if from a snapshot
	gen     uint64    // changes whenever fields change
	removed bool      // evicted: refs composed from it are out of date

	// nested is fields as a map[string]any, built once, so every device
	// whose ref includes this lookup row shares it.
	nested map[string]any

	// For device entries: the ref composed from fields and the lookup rows
	// in deps, reused while none of them changed.
	ref  map[string]any
	deps []dep

	prev, next *entry // LRU list, most recent after cache.root
}

// dep is a lookup row a composed ref was built from. e is nil when the row
// was not cached at the time.
type dep struct {
	key string
	e   *entry
	gen uint64
}

// fresh reports whether the entry may be used without asking Redis.
func (e *entry) fresh(now time.Time) bool { return now.Before(e.expires) }

// nestedMap returns the fields as the map placed under ref[as].
func (e *entry) nestedMap() map[string]any {
	if e.nested == nil {
		e.nested = make(map[string]any, len(e.fields))
		for k, v := range e.fields {
			e.nested[k] = v
		}
	}
	return e.nested
}

// cache is a bounded LRU of Redis hashes keyed by Redis key. An entry past
// its expiry is kept: it is the stale fallback while Redis cannot answer.
// Entries leave only when the LRU bound evicts them. Not safe for
// concurrent use; the Enricher's mutex guards it.
type cache struct {
	max     int
	items   map[string]*entry
	root    entry  // sentinel: root.next is the most recently used
	gen     uint64 // last generation handed out
	version uint64 // bumped on every change a snapshot would see
	evicted uint64
}

func newCache(max int) *cache {
	c := &cache{max: max, items: make(map[string]*entry)}
	c.root.next, c.root.prev = &c.root, &c.root
	return c
}

func (c *cache) len() int { return len(c.items) }

// get returns the entry for key and marks it recently used.
func (c *cache) get(key string) *entry {
	e := c.items[key]
	if e != nil {
		c.touch(e)
	}
	return e
}

// getBytes is get for a key built in a scratch buffer; the map lookup
// does not allocate.
func (c *cache) getBytes(key []byte) *entry {
	e := c.items[string(key)]
	if e != nil {
		c.touch(e)
	}
	return e
}

// peek returns the entry for key without changing its recency.
func (c *cache) peek(key string) *entry { return c.items[key] }

// set stores fields (nil for "does not exist") for key. If they equal
// what is cached only the times change, so refs composed from the entry
// stay valid and steady-state refreshes allocate nothing.
func (c *cache) set(key string, fields hash, expires, checked time.Time) *entry {
	e := c.items[key]
	if e == nil {
		c.gen++
		e = &entry{key: key, fields: fields, expires: expires, checked: checked, gen: c.gen}
		c.items[key] = e
		c.pushFront(e)
		c.version++
		for len(c.items) > c.max {
			c.evict(c.root.prev)
		}
		return e
	}
	if (e.fields == nil) != (fields == nil) || !maps.Equal(e.fields, fields) {
		c.gen++
		e.fields, e.gen = fields, c.gen
		e.nested, e.ref, e.deps = nil, nil, nil
		c.version++
	}
	e.expires, e.checked = expires, checked
	c.touch(e)
	return e
}

// invalidate makes key's entry stale so the next use asks Redis; the data
// stays as the fallback. It reports whether the key was cached.
func (c *cache) invalidate(key string) bool {
	e := c.items[key]
	if e == nil {
		return false
	}
	e.expires = time.Time{}
	return true
}

// invalidateAll makes every entry stale and returns how many there are.
func (c *cache) invalidateAll() int {
	for _, e := range c.items {
		e.expires = time.Time{}
	}
	return len(c.items)
}

// each calls fn for every entry that holds fields, most recent first.
func (c *cache) each(fn func(key string, fields hash)) {
	for e := c.root.next; e != &c.root; e = e.next {
		if e.fields != nil {
			fn(e.key, e.fields)
		}
	}
}

func (c *cache) evict(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(c.items, e.key)
	e.removed = true
	e.nested, e.ref, e.deps = nil, nil, nil
	c.version++
	c.evicted++
}

func (c *cache) touch(e *entry) {
	if c.root.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	c.pushFront(e)
}

func (c *cache) pushFront(e *entry) {
	e.prev, e.next = &c.root, c.root.next
	c.root.next.prev = e
	c.root.next = e
}
