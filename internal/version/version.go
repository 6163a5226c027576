// Package version holds the product version, shared by the host binary and
// the guest agent (the agent version is part of every snapshot's metadata).
package version

// Version is overridden at link time with -ldflags "-X ...version.Version=...".
var Version = "0.1.0-dev"
