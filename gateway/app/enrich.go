package app

import (
	"context"

	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
)

// openEnricher builds the enricher for enrich.backend; "none" returns nil.
// It does not fail when Redis is down: the enricher starts from its
// snapshot and reconnects in the background.
func (g *Gateway) openEnricher(ctx context.Context) (gateway.Enricher, *enrich.Enricher, error) {
	if g.cfg.Enrich.Backend == enrich.BackendNone {
		return nil, nil, nil
	}
	e, err := enrich.New(ctx, g.cfg.Enrich, g.log)
	if err != nil {
		return nil, nil, err
	}
	return e, e, nil
}
