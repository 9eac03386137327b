//go:build !linux

package main

import "os"

// describeFS cannot tell the file system type on this platform; make sure
// -dir is on a real disk.
func describeFS(string) (string, error) { return "file system type unknown", nil }

func fdatasync(f *os.File) error { return f.Sync() }
