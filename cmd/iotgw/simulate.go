package main

import (
	"context"
	"fmt"
	"io"
)

func simulateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return fmt.Errorf("not wired yet")
}

func runDevSimulator(ctx context.Context, mqttAddr string, trucks int, rate float64, stdout, stderr io.Writer) {
}
