package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// maxCDPMessage bounds one DevTools message read from Chromium.
const maxCDPMessage = 32 << 20

// Browser is a headless Chromium driven over the DevTools protocol on a
// pipe (--remote-debugging-pipe: commands to its fd 3, answers and events
// from its fd 4), with one page. Tests use it to click through a page:
// Eval runs JavaScript in the page as the DevTools console does (the
// page's CSP does not apply to it). Closed by t.Cleanup.
type Browser struct {
	t       testing.TB
	cmd     *exec.Cmd
	w       io.WriteCloser
	wmu     sync.Mutex // guards w
	mu      sync.Mutex // guards id and calls
	id      int
	calls   map[int]chan cdpMessage
	session string
	done    chan struct{} // closed when the reader ends
}

type cdpMessage struct {
	ID     int             `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// StartBrowser starts headless Chromium with one blank page.
func StartBrowser(t testing.TB) *Browser {
	t.Helper()
	bin := Chromium(t)
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	evR, evW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, chromiumArgs(t, "--remote-debugging-pipe", "about:blank")...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	cmd.ExtraFiles = []*os.File{cmdR, evW} // fd 3, fd 4
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	cmdR.Close()
	evW.Close()
	b := &Browser{t: t, cmd: cmd, w: cmdW, calls: map[int]chan cdpMessage{}, done: make(chan struct{})}
	go b.read(evR)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = b.call(ctx, "", "Browser.close", nil)
		cmdW.Close()
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		evR.Close()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var created struct {
		TargetID string `json:"targetId"`
	}
	b.mustCall(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &created)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.mustCall(ctx, "", "Target.attachToTarget", map[string]any{"targetId": created.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	b.mustCall(ctx, b.session, "Runtime.enable", nil, nil)
	return b
}

// read dispatches Chromium's answers to their calls; events are dropped.
func (b *Browser) read(r io.Reader) {
	defer close(b.done)
	br := bufio.NewReaderSize(r, 64<<10)
	var msg []byte
	for {
		part, err := br.ReadSlice(0)
		if len(msg)+len(part) > maxCDPMessage {
			return
		}
		msg = append(msg, part...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(bytes.TrimSuffix(msg, []byte{0}), &m) == nil && m.ID != 0 {
			b.mu.Lock()
			ch := b.calls[m.ID]
			delete(b.calls, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
		msg = msg[:0]
	}
}

// call sends one command (to the page's session when session is set).
func (b *Browser) call(ctx context.Context, session, method string, params any) (json.RawMessage, error) {
	b.mu.Lock()
	b.id++
	id := b.id
	ch := make(chan cdpMessage, 1)
	b.calls[id] = ch
	req := map[string]any{"id": id, "method": method}
	if params != nil {
		req["params"] = params
	}
	if session != "" {
		req["sessionId"] = session
	}
	b.mu.Unlock()
	out, _ := json.Marshal(req)
	b.wmu.Lock()
	_, err := b.w.Write(append(out, 0))
	b.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("send %s: %w", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return nil, fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		return m.Result, nil
	case <-b.done:
		return nil, fmt.Errorf("%s: chromium went away", method)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

func (b *Browser) mustCall(ctx context.Context, session, method string, params, out any) {
	b.t.Helper()
	res, err := b.call(ctx, session, method, params)
	if err != nil {
		b.t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(res, out); err != nil {
			b.t.Fatalf("%s: %v", method, err)
		}
	}
}

// Navigate loads url in the page and waits until its document is complete.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b.mustCall(ctx, b.session, "Page.navigate", map[string]any{"url": url}, nil)
	b.WaitFor(`document.readyState === "complete" && location.href !== "about:blank"`, 10*time.Second)
}

// Eval evaluates expr in the page (a promise is awaited) and decodes its
// value into out (nil: ignored). A thrown exception fails the test.
func (b *Browser) Eval(expr string, out any) {
	b.t.Helper()
	if err := b.eval(expr, out); err != nil {
		b.t.Fatal(err)
	}
}

func (b *Browser) eval(expr string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := b.call(ctx, b.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "returnByValue": true, "awaitPromise": true,
	})
	if err != nil {
		return err
	}
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		return fmt.Errorf("evaluate %.100q: %w", expr, err)
	}
	if r.ExceptionDetails != nil {
		return fmt.Errorf("evaluate %.100q: %s %s", expr, r.ExceptionDetails.Text, r.ExceptionDetails.Exception.Description)
	}
	if out != nil && len(r.Result.Value) > 0 {
		return json.Unmarshal(r.Result.Value, out)
	}
	return nil
}

// WaitFor polls expr in the page until it is true, failing the test
// after timeout.
func (b *Browser) WaitFor(expr string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		var ok bool
		if last = b.eval("Boolean("+expr+")", &ok); last == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			var doc string
			_ = b.eval("document.documentElement.outerHTML", &doc)
			b.t.Fatalf("waited %s for %s (last error: %v); page:\n%.4000s", timeout, expr, last, doc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DOM returns the page's current markup.
func (b *Browser) DOM() string {
	b.t.Helper()
	var doc string
	b.Eval("document.documentElement.outerHTML", &doc)
	return doc
}
