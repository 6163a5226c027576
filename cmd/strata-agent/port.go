package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"time"
)

// portOpener returns an OpenFunc for path: a character device (the
// virtio-serial port, or a pty in tests) is opened read-write and kept
// across host disconnects; a unix socket is dialled.
func portOpener(path string, logger *log.Logger) OpenFunc {
	return func(ctx context.Context) (Port, bool, error) {
		waited := time.Now()
		logged := false
		for {
			st, err := os.Stat(path)
			if err == nil {
				if st.Mode()&os.ModeSocket != 0 {
					var d net.Dialer
					c, err := d.DialContext(ctx, "unix", path)
					if err != nil {
						return nil, false, fmt.Errorf("dial %s: %w", path, err)
					}
					return c, false, nil
				}
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					return nil, false, fmt.Errorf("open %s: %w", path, err)
				}
				return f, true, nil
			}
			if !os.IsNotExist(err) {
				return nil, false, fmt.Errorf("stat %s: %w", path, err)
			}
			if !logged && time.Since(waited) > 2*time.Second {
				logger.Printf("waiting for %s to appear", path)
				logged = true
			}
			select {
			case <-ctx.Done():
				return nil, false, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}
