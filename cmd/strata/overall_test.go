package main

import (
	"testing"

	"github.com/strata-ci/strata/internal/engine"
)

func TestOverallExitCodes(t *testing.T) {
	res := func(statuses ...string) []engine.Result {
		var rs []engine.Result
		for _, s := range statuses {
			rs = append(rs, engine.Result{Status: s})
		}
		return rs
	}
	for _, c := range []struct {
		results     []engine.Result
		interrupted bool
		status      string
		code        int
	}{
		{res(engine.Passed, engine.Passed), false, "passed", 0},
		{res(engine.Passed, engine.Failed, engine.Cancelled), false, "failed", 1},
		{res(engine.Cancelled), false, "cancelled", 1}, // a dependent of a failure
		{res(engine.Passed, engine.Cancelled), true, "cancelled", 130},
		{res(engine.Failed, engine.Cancelled), true, "cancelled", 130},
		{res(engine.Errored, engine.Cancelled), true, "error", 3},
	} {
		status, code := overall(c.results, c.interrupted)
		if status != c.status || code != c.code {
			t.Errorf("overall(%v, interrupted=%v) = %s %d, want %s %d", c.results, c.interrupted, status, code, c.status, c.code)
		}
	}
}
