package app

// AuthOptions is a stand-in until devices.Options lands.
type AuthOptions struct {
	Mode string `yaml:"mode"`
}

func (o *AuthOptions) SetDefaults() {
	if o.Mode == "" {
		o.Mode = "registry"
	}
}
func (o *AuthOptions) Validate() error { return nil }

// EnrichOptions is a stand-in until enrich.Options lands.
type EnrichOptions struct {
	Backend string `yaml:"backend"`
}

func (o *EnrichOptions) SetDefaults()    {}
func (o *EnrichOptions) Validate() error { return nil }
