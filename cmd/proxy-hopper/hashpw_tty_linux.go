package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// askTwice asks for the password twice on the terminal tty with its echo
// off from before the first prompt (so nothing typed ahead is echoed)
// until after the second answer.
func askTwice(tty *os.File, stderr io.Writer) (string, string, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", "", fmt.Errorf("read password: %w", err)
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	quiet.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return "", "", fmt.Errorf("read password: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old) //nolint:errcheck // best effort on the way out
	r := bufio.NewReaderSize(io.LimitReader(tty, 2*maxPasswordLine+2), maxPasswordLine+1)
	var answers [2]string
	for i, prompt := range []string{"Password: ", "Repeat password: "} {
		fmt.Fprint(stderr, prompt)
		line, err := r.ReadString('\n')
		fmt.Fprintln(stderr)
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return "", "", fmt.Errorf("read password: %w", err)
		}
		if len(line) > maxPasswordLine {
			return "", "", fmt.Errorf("read password: the line is longer than %d bytes", maxPasswordLine)
		}
		answers[i] = strings.TrimRight(line, "\r\n")
	}
	return answers[0], answers[1], nil
}
