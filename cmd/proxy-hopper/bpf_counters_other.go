//go:build !linux

package main

import "errors"

func readCounterSets(int) ([]counterSet, error) { return nil, errors.New("eBPF needs Linux") }
