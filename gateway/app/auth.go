package app

import (
	"context"
	"fmt"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/protocols/mqtt"
)

// openAuth opens the device registry. In open mode the adapters get no
// authenticator or authorizer (everyone is accepted) but the registry still
// records online status.
func (g *Gateway) openAuth(ctx context.Context) (devices.Registry, mqtt.Authenticator, mqtt.Authorizer, error) {
	reg, err := devices.Open(ctx, g.cfg.Auth, g.log)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("auth: %w", err)
	}
	if g.cfg.Auth.Mode == devices.ModeOpen {
		return reg, nil, nil, nil
	}
	acl, err := devices.NewACL(g.cfg.Auth.ACL.Publish, g.cfg.Auth.ACL.Subscribe)
	if err != nil {
		reg.Close()
		return nil, nil, nil, fmt.Errorf("auth.acl: %w", err)
	}
	return reg, reg, acl, nil
}
