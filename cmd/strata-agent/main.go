// Command strata-agent is the guest agent baked into every strata base
// image. It serves the host over a virtio-serial port (see package
// agentproto for the protocol): it runs commands, starts background
// processes, receives files, sets the clock and reseeds randomness after a
// restore. It never exits because of port errors: after a snapshot is
// restored in a new QEMU process, the host reconnects on the same port.
//
// Usage:
//
//	strata-agent [--port PATH] [--init [--hostname NAME]]
//
// --port defaults to /dev/virtio-ports/org.strata.agent0; the agent waits
// for it to appear. A unix socket path is dialled instead (tests run the
// agent on the host that way) and redialled when the connection ends.
//
// --init makes the agent PID 1 of a minimal initramfs: it mounts /proc,
// /sys, /dev, /dev/pts, /tmp and /run, sets the hostname, reaps orphans and
// then serves.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/version"
)

// DefaultPort is the guest device QEMU's virtserialport named
// org.strata.agent0 appears as.
const DefaultPort = "/dev/virtio-ports/org.strata.agent0"

func main() {
	port := flag.String("port", DefaultPort, "virtio-serial device (or unix socket) to serve on")
	initMode := flag.Bool("init", false, "run as PID 1 of a minimal initramfs")
	hostname := flag.String("hostname", "layerfile", "hostname to set in --init mode")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("strata-agent", version.Version)
		return
	}
	logger := log.New(os.Stderr, "strata-agent: ", log.LstdFlags|log.Lmsgprefix)
	if *initMode {
		if err := initSystem(*hostname); err != nil {
			logger.Printf("init: %v", err)
		}
	} else {
		// Orphans of our detached children come back to us, so their
		// statuses are collected (and no zombies pile up).
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	if os.Getenv("PATH") == "" {
		_ = os.Setenv("PATH", defaultPath)
	}

	ctx := context.Background()
	if !*initMode {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
		defer stop()
	}
	r := newReaper()
	sigchld := make(chan os.Signal, 16)
	signal.Notify(sigchld, unix.SIGCHLD)
	go r.loop(sigchld, ctx.Done())

	logger.Printf("version %s serving on %s", version.Version, *port)
	srv := newServer(portOpener(*port, logger), r, logger)
	for {
		err := srv.serve(ctx)
		if !*initMode {
			if errors.Is(err, context.Canceled) {
				return
			}
		}
		// PID 1 must never exit (the kernel would panic).
		logger.Printf("serve: %v", err)
		time.Sleep(time.Second)
	}
}
