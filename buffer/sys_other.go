//go:build !linux

package buffer

import "os"

func datasync(f *os.File) error { return f.Sync() }
