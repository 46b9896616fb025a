package agent

// The config file's watchers: SIGHUP and, with server.watchConfig, the
// file's directory; both end in ReloadFile.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// watchDebounce is how long the config watcher waits after the last change
// in the file's directory before it reads the file: editors write a file in
// several steps (truncate and write, or write a temporary file and rename).
const watchDebounce = 250 * time.Millisecond

func hashFile(ctx context.Context, path string) ([sha256.Size]byte, error) {
	data, err := config.ReadFile(ctx, path)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(data), nil
}

// startReloads makes Run reload the config file on SIGHUP and, with
// server.watchConfig, when the file changes. stop ends both.
func (a *Agent) startReloads(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { a.watchStore(ctx) })
	path := a.opts.ConfigPath
	if path == "" {
		return func() {
			cancel()
			wg.Wait()
		}
	}
	// The caller's channel, when given, holds a SIGHUP that arrived before
	// this point: it is taken now.
	hup, unregister := a.opts.Hangup, func() {}
	if hup == nil {
		own := make(chan os.Signal, 1)
		signal.Notify(own, syscall.SIGHUP)
		hup, unregister = own, func() { signal.Stop(own) }
	}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.log.Info("SIGHUP: reloading the config", "path", path)
				_, _ = a.ReloadFile(ctx)
			}
		}
	})
	if a.cfg.Server.WatchConfig {
		w, err := a.newConfigWatcher(path)
		if err != nil {
			a.log.Error("cannot watch the config file; SIGHUP still reloads it", "path", path, "err", err)
		} else {
			a.log.Info("watching the config file", "path", path)
			wg.Go(func() { w.run(ctx) })
		}
	}
	return func() {
		unregister()
		cancel()
		wg.Wait()
	}
}

// configWatcher reloads the config when its file changes. It watches the
// file's directory, so that a file replaced by rename (editors, `mv`,
// Kubernetes ConfigMap symlink swaps) is seen like one written in place;
// after watchDebounce without further events it reads the file and
// reloads when the content differs from the last one loaded.
type configWatcher struct {
	a    *Agent
	path string
	w    *fsnotify.Watcher
}

func (a *Agent) newConfigWatcher(path string) (*configWatcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(abs), err)
	}
	if h, err := hashFile(context.Background(), abs); err == nil {
		a.reload.mu.Lock()
		a.reload.fileHash = h
		a.reload.mu.Unlock()
	}
	return &configWatcher{a: a, path: abs, w: w}, nil
}

func (cw *configWatcher) run(ctx context.Context) {
	defer cw.w.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-cw.w.Events:
			if !ok {
				return
			}
			timer.Reset(watchDebounce)
		case err, ok := <-cw.w.Errors:
			if !ok {
				return
			}
			cw.a.log.Warn("config watcher", "path", cw.path, "err", err)
		case <-timer.C:
			h, err := hashFile(ctx, cw.path)
			if err != nil {
				continue // mid-replace: the next event brings it back
			}
			st := &cw.a.reload
			st.mu.Lock()
			same := h == st.fileHash
			st.mu.Unlock()
			if same {
				continue
			}
			cw.a.log.Info("config file changed: reloading", "path", cw.path)
			_, _ = cw.a.ReloadFile(ctx)
		}
	}
}
