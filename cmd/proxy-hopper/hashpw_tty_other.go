//go:build !linux

package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// askTwice asks for the password twice on the terminal tty without echo.
func askTwice(tty *os.File, stderr io.Writer) (string, string, error) {
	var answers [2]string
	for i, prompt := range []string{"Password: ", "Repeat password: "} {
		fmt.Fprint(stderr, prompt)
		b, err := term.ReadPassword(int(tty.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", "", fmt.Errorf("read password: %w", err)
		}
		answers[i] = string(b)
	}
	return answers[0], answers[1], nil
}
