package agent

import (
	"os"
	"testing"
)

// TestMain lets the tests' agents reach their origins, which all listen on
// loopback, through server.allowDestinations (config tests that clear the
// environment see the real defaults).
func TestMain(m *testing.M) {
	os.Setenv("PROXY_HOPPER_ALLOW_DESTINATIONS", "127.0.0.0/8,::1")
	os.Exit(m.Run())
}
