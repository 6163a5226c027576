package engine

import (
	"fmt"

	"github.com/strata-ci/strata/internal/layerfile"
)

// reasonFor says why step s has to run (SPEC §3: which key part or which
// read file changed). firstRan is the first step of this run that ran, if
// any: everything after it runs because it did.
func (r *runner) reasonFor(s *step, firstRan *step) string {
	if firstRan != nil {
		return fmt.Sprintf("step %d (line %d) above ran", firstRan.index, firstRan.ins.Pos.Line)
	}
	if s.ins.Kind == layerfile.RunRepeatable && r.cfg.Fresh {
		return "--fresh: RUN REPEATABLE starts from a clean state"
	}
	// A snapshot with this key exists but files it read changed.
	for _, c := range r.cfg.Store.Candidates(string(s.key)) {
		if c.MachineArgs != r.args {
			return "the VM's machine arguments changed (QEMU version, accelerator or memory)"
		}
		if p, how := firstDifference(c.Reads, s.reads); p != "" {
			return fmt.Sprintf("file %s %s", p, how)
		}
	}
	if !s.inVM && !s.forceSnapshot {
		if s.index > 1 {
			return "no snapshot of the steps above"
		}
	}
	if r.prev != nil {
		if why := r.diffPrevious(s); why != "" {
			return why
		}
	}
	for _, prior := range r.plan.steps[:s.index-1] {
		if prior.after.noSnapshot {
			return "no snapshot at this point (CHECKPOINT disabled)"
		}
	}
	if r.prev == nil {
		return "no snapshot yet"
	}
	return "no snapshot in the store for this step (removed by gc?)"
}

// diffPrevious compares this step and the ones above with the previous run
// of the same Layerfile.
func (r *runner) diffPrevious(s *step) string {
	prev := r.prev.Steps
	if r.prev.Error != "" && len(prev) == 0 {
		return ""
	}
	for _, cur := range r.plan.steps[:s.index] {
		i := cur.index - 1
		if i >= len(prev) {
			if cur == s {
				return "new line"
			}
			return fmt.Sprintf("line %d above is new", cur.ins.Pos.Line)
		}
		if prev[i].Instruction != cur.ins.Text {
			if cur == s {
				return "this line changed"
			}
			return fmt.Sprintf("line %d above changed", cur.ins.Pos.Line)
		}
		for name, d := range cur.reportEnv {
			if old, ok := prev[i].BuildEnv[name]; ok && old != d {
				return fmt.Sprintf("BUILD ENV %s changed", name)
			}
		}
		for name, d := range cur.reportSecrets {
			if old, ok := prev[i].Secrets[name]; ok && old != d {
				return fmt.Sprintf("SECRET ENV %s changed", name)
			}
		}
	}
	if i := s.index - 1; i < len(prev) && prev[i].Key != string(s.key) {
		return "the base image or VM shape changed"
	}
	return ""
}
