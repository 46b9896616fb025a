//go:build unix

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// rawReader reads a socket through its raw file descriptor, so that a
// wait for data holds no buffer: the buffer is taken from bufs only when
// a read is tried, and given back before the wait when the socket has
// nothing (EAGAIN). nil when c has no file descriptor.
func rawReader(c net.Conn, bufs *sync.Pool) func(use func([]byte) error) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawRead{rc: rc, bufs: bufs}
	r.try = r.tryRead // bound once: no allocation per read
	return r.read
}

type rawRead struct {
	rc   syscall.RawConn
	bufs *sync.Pool
	try  func(fd uintptr) bool
	// Results of the last try.
	bp  *[]byte
	n   int
	err error
}

// tryRead is the RawConn.Read callback: false means "nothing yet, wait
// for the socket to be readable", with the buffer given back.
func (r *rawRead) tryRead(fd uintptr) bool {
	r.bp = r.bufs.Get().(*[]byte)
	for {
		r.n, r.err = syscall.Read(int(fd), *r.bp)
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.err == syscall.EAGAIN {
		r.bufs.Put(r.bp)
		r.bp = nil
		return false
	}
	return true
}

func (r *rawRead) read(use func([]byte) error) (int, error) {
	err := r.rc.Read(r.try)
	bp := r.bp
	r.bp = nil
	if bp == nil {
		if err == nil {
			err = io.ErrNoProgress
		}
		return 0, err
	}
	defer r.bufs.Put(bp)
	switch {
	case err != nil:
		return 0, err
	case r.err != nil:
		return 0, os.NewSyscallError("read", r.err)
	case r.n <= 0:
		return 0, io.EOF
	}
	if werr := use((*bp)[:r.n]); werr != nil {
		return r.n, errors.Join(errWriteFailed, werr)
	}
	return r.n, nil
}
