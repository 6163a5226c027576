package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU serves a QMP socket: greeting, capability negotiation, replies
// (in reverse order for "slow" to check id matching) and an event.
func fakeQEMU(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		w := json.NewEncoder(c)
		_ = w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{}}})
		r := bufio.NewScanner(c)
		var held []map[string]any
		for r.Scan() {
			var m struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			_ = json.Unmarshal(r.Bytes(), &m)
			switch m.Execute {
			case "slow":
				held = append(held, map[string]any{"return": map[string]any{"n": 1}, "id": m.ID})
			case "fast":
				_ = w.Encode(map[string]any{"return": map[string]any{"n": 2}, "id": m.ID})
				for _, h := range held {
					_ = w.Encode(h)
				}
				held = nil
			case "bad":
				_ = w.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "nope"}, "id": m.ID})
			case "stop":
				_ = w.Encode(map[string]any{"event": "STOP", "timestamp": map[string]any{"seconds": 100, "microseconds": 5}})
				_ = w.Encode(map[string]any{"return": map[string]any{}, "id": m.ID})
			default:
				_ = w.Encode(map[string]any{"return": map[string]any{}, "id": m.ID})
			}
		}
	}()
	return path
}

func TestQMPClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, fakeQEMU(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	events, unsub := c.Subscribe()
	defer unsub()

	// Pipelined commands are matched to their replies by id.
	waitSlow := c.Send("slow", nil)
	waitFast := c.Send("fast", nil)
	var a, b struct{ N int }
	if err := waitSlow(ctx, &a); err != nil || a.N != 1 {
		t.Fatalf("slow: %v %+v", err, a)
	}
	if err := waitFast(ctx, &b); err != nil || b.N != 2 {
		t.Fatalf("fast: %v %+v", err, b)
	}
	var qe *QMPError
	if err := c.Execute(ctx, "bad", nil, nil); !errors.As(err, &qe) || qe.Desc != "nope" {
		t.Fatalf("error reply: %v", err)
	}
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Name != "STOP" || !ev.Time.Equal(time.Unix(100, 5000)) {
			t.Fatalf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no STOP event")
	}
}
