//go:build !linux

package bpf

import "errors"

// ErrNotLoaded is returned when the data plane is not available.
var ErrNotLoaded = errors.New("bpf objects not loaded")

// Attachment is one attached program (Linux only).
type Attachment struct{}

func (Attachment) String() string { return "" }

// Status is not available outside Linux.
func Status() ([]Attachment, []string, error) { return nil, nil, errors.New("eBPF needs Linux") }

// DetachAll is not available outside Linux.
func DetachAll() (int, error) { return 0, errors.New("eBPF needs Linux") }

// StatusOf is not available outside Linux.
func StatusOf(string) ([]Attachment, []string, error) {
	return nil, nil, errors.New("eBPF needs Linux")
}

// DetachOptions narrow Detach.
type DetachOptions struct {
	PinDir  string
	Cgroups []uint64
}

// Detach is not available outside Linux.
func Detach(DetachOptions) (int, error) { return 0, errors.New("eBPF needs Linux") }

// CgroupID is not available outside Linux.
func CgroupID(string) (uint64, error) { return 0, errors.New("eBPF needs Linux") }

// CgroupPath is not available outside Linux.
func CgroupPath(string) (string, error) { return "", errors.New("eBPF needs Linux") }
