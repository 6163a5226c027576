package vm

// DisableBackgroundSnapshot makes q's machines save state with the guest
// paused, as when QEMU refuses the background-snapshot capability.
func DisableBackgroundSnapshot(q *QEMU) { q.noBackgroundSnapshot = true }
