package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// maxPasswordLine bounds the line read from a non-terminal stdin.
const maxPasswordLine = 4 << 10

// hashPassword is `hash-password [PASSWORD]`: it prints the bcrypt hash
// (cost 12, as proxy-hopper) for auth.admin.passwordHash. The password is
// the argument, as proxy-hopper takes it; without one it is read from a
// terminal without echo (asked twice), else the first line of stdin.
func hashPassword(args []string, stdin *os.File, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hash-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: proxy-hopper hash-password [PASSWORD]")
		fmt.Fprintln(stderr, "Prints the bcrypt hash of PASSWORD for auth.admin.passwordHash. Without PASSWORD (which")
		fmt.Fprintln(stderr, "shell history and ps would see) it is asked for without echo, or read from stdin's first line.")
	}
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, err: err}
	}
	var pw string
	switch fs.NArg() {
	case 0:
		var err error
		if pw, err = readPassword(stdin, stderr); err != nil {
			return &exitError{code: 1, err: err}
		}
	case 1:
		pw = fs.Arg(0)
	default:
		fs.Usage()
		return &exitError{code: 2, err: errors.New("hash-password takes one PASSWORD at most")}
	}
	h, err := auth.HashPassword(pw)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	fmt.Fprintln(stdout, h)
	return nil
}

// readPassword asks on a terminal (echo off) or reads stdin's first line.
func readPassword(stdin *os.File, stderr io.Writer) (string, error) {
	if stdin != nil && term.IsTerminal(int(stdin.Fd())) {
		a, b, err := askTwice(stdin, stderr)
		if err != nil {
			return "", err
		}
		if a != b {
			return "", errors.New("the passwords do not match")
		}
		return a, nil
	}
	if stdin == nil {
		return "", errors.New("read password: no stdin")
	}
	line, err := bufio.NewReaderSize(io.LimitReader(stdin, maxPasswordLine+1), maxPasswordLine+1).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read password: %w", err)
	}
	if len(line) > maxPasswordLine {
		return "", fmt.Errorf("read password: the line is longer than %d bytes", maxPasswordLine)
	}
	return strings.TrimRight(line, "\r\n"), nil
}
