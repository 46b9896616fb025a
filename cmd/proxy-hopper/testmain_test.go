package main

import (
	"os"
	"testing"
)

// TestMain lets the agents these tests run (in process and as the built
// binary, which inherits the environment) reach their origins, which all
// listen on loopback, through server.allowDestinations.
func TestMain(m *testing.M) {
	os.Setenv("PROXY_HOPPER_ALLOW_DESTINATIONS", "127.0.0.0/8,::1")
	os.Exit(m.Run())
}
