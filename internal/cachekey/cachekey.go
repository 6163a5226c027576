// Package cachekey computes step cache keys: a chain hash over the base
// image, the VM shape and every instruction up to and including the step,
// plus the BUILD ENV values and a keyed digest of SECRET ENV values in force
// at that step (SPEC §3). Files read by steps are not in the key: they are
// checked separately against each snapshot's read set, so one key can have
// several snapshots, one per set of file contents.
package cachekey

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"sort"
)

// Chain is the key of the state after some prefix of a Layerfile.
type Chain string

// Base starts a chain from the base image identity and the machine
// fingerprint (hypervisor, accelerator, memory, CPUs, devices).
func Base(imageID, machineArgs string) Chain {
	return Chain(digest("base", imageID, machineArgs))
}

// Step extends the chain with one instruction. buildEnv holds the BUILD ENV
// variables in force (name -> value); secretDigest is SecretDigest of the
// SECRET ENV values in force.
func (c Chain) Step(instruction string, buildEnv map[string]string, secretDigest string) Chain {
	parts := []string{"step", string(c), instruction}
	names := make([]string, 0, len(buildEnv))
	for k := range buildEnv {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		parts = append(parts, "env", k, buildEnv[k])
	}
	if secretDigest != "" {
		parts = append(parts, "secrets", secretDigest)
	}
	return Chain(digest(parts...))
}

// SecretDigest is a keyed digest of secret values: equal values give equal
// digests within one store (salt), but the digest reveals nothing usable
// about a low-entropy secret to someone who reads only the metadata.
func SecretDigest(salt []byte, secrets map[string]string) string {
	if len(secrets) == 0 {
		return ""
	}
	names := make([]string, 0, len(secrets))
	for k := range secrets {
		names = append(names, k)
	}
	sort.Strings(names)
	mac := hmac.New(sha256.New, salt)
	for _, k := range names {
		writeField(mac, k)
		writeField(mac, secrets[k])
	}
	return hex.EncodeToString(mac.Sum(nil))
}

// digest hashes fields unambiguously (each length-prefixed).
func digest(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		writeField(h, f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type writer interface{ Write([]byte) (int, error) }

func writeField(w writer, s string) {
	var n [8]byte
	l := uint64(len(s))
	for i := range n {
		n[i] = byte(l >> (8 * i))
	}
	w.Write(n[:])
	w.Write([]byte(s))
}
