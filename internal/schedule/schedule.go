// Package schedule runs a repository's Layerfiles as a graph: a Layerfile
// whose FROM names another starts from that parent's final state once the
// parent passed (the parent runs once however many children it has); WAIT
// orders without inheriting; independent Layerfiles run in parallel within
// a limit of concurrent VMs and of memory; when a parent or a waited-on
// Layerfile does not pass, its dependents are cancelled with a message that
// names it. A Layerfile with SPLIT n runs its steps before SPLIT once, then
// n copies from that point.
package schedule

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/strata-ci/strata/internal/engine"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/plan"
)

// Job is one engine run the scheduler asks for.
type Job struct {
	File   *layerfile.File
	Rel    string // relative to the repository root
	Runner string // runner name (split copies: name, name-2, ...)
	Parent *engine.Result
	// SplitPrefix / SplitIndex as in engine.Job.
	SplitPrefix bool
	SplitIndex  int
}

// Options configures Run.
type Options struct {
	// Jobs is the most VMs at once (at least 1).
	Jobs int
	// MemoryMB is the memory all running VMs may use together (0: no limit).
	MemoryMB int
	// RunnerName names a Layerfile's runner.
	RunnerName func(f *layerfile.File, rel string) string
	// Run runs one job.
	Run func(ctx context.Context, j Job) engine.Result
	// Cancelled reports a Layerfile cancelled because of another.
	Cancelled func(res engine.Result)
}

// node is one Layerfile in the graph.
type node struct {
	file   *layerfile.File
	rel    string
	parent *node
	waits  []*node
	done   chan struct{}
	result engine.Result   // the Layerfile's overall result
	runs   []engine.Result // every engine run (prefix, copies)
}

// Run runs every Layerfile of repo and returns, per Layerfile in repo order,
// the results of its runs (one, or the copies of a SPLIT).
func Run(ctx context.Context, repo *plan.Repo, opts Options) [][]engine.Result {
	if opts.Jobs < 1 {
		opts.Jobs = 1
	}
	nodes := map[*layerfile.File]*node{}
	var order []*node
	for _, f := range repo.Files {
		n := &node{file: f, rel: repo.Rel(f.Path), done: make(chan struct{})}
		nodes[f] = n
		order = append(order, n)
	}
	for _, n := range order {
		if p := repo.Parent(n.file); p != nil {
			n.parent = nodes[p]
		}
		for _, w := range repo.Waits(n.file) {
			n.waits = append(n.waits, nodes[w])
		}
	}
	slots := newSlots(opts.Jobs, opts.MemoryMB)
	var wg sync.WaitGroup
	for _, n := range order {
		wg.Add(1)
		go func(n *node) {
			defer wg.Done()
			defer close(n.done)
			runNode(ctx, n, opts, slots)
		}(n)
	}
	wg.Wait()
	out := make([][]engine.Result, len(order))
	for i, n := range order {
		out[i] = n.runs
	}
	return out
}

func runNode(ctx context.Context, n *node, opts Options, slots *slots) {
	runner := opts.RunnerName(n.file, n.rel)
	deps := append([]*node(nil), n.waits...)
	if n.parent != nil {
		deps = append([]*node{n.parent}, deps...)
	}
	for _, d := range deps {
		select {
		case <-d.done:
		case <-ctx.Done():
		}
		why := ""
		switch {
		case ctx.Err() != nil:
			why = "the run was cancelled"
		case !d.result.Passed():
			rel := "parent"
			if d != n.parent {
				rel = "waited-on"
			}
			why = fmt.Sprintf("%s Layerfile %s %s", rel, d.rel, d.result.Status)
		}
		if why != "" {
			n.result = engine.Result{Layerfile: n.rel, Runner: runner, Status: engine.Cancelled, Error: "cancelled: " + why}
			n.runs = []engine.Result{n.result}
			if opts.Cancelled != nil {
				opts.Cancelled(n.result)
			}
			return
		}
	}
	var parent *engine.Result
	if n.parent != nil {
		parent = &n.parent.result
	}
	mem := memoryMB(n)
	job := Job{File: n.file, Rel: n.rel, Runner: runner, Parent: parent, SplitPrefix: hasSplit(n.file)}
	res := slots.run(ctx, mem, func() engine.Result { return opts.Run(ctx, job) })
	n.runs = append(n.runs, res)
	n.result = res
	if !job.SplitPrefix || !res.Passed() || res.Split == 0 {
		return
	}
	// SPLIT n: the copies continue from the prefix's final snapshot.
	copies := make([]engine.Result, res.Split)
	var wg sync.WaitGroup
	for i := 0; i < res.Split; i++ {
		name := runner
		if i > 0 {
			name = runner + "-" + strconv.Itoa(i+1)
		}
		c := Job{File: n.file, Rel: n.rel, Runner: name, Parent: parent, SplitIndex: i}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			copies[i] = slots.run(ctx, mem, func() engine.Result { return opts.Run(ctx, c) })
		}(i)
	}
	wg.Wait()
	n.runs = append(n.runs, copies...)
	n.result = copies[0]
	for _, c := range copies {
		if !c.Passed() {
			n.result = c
			break
		}
	}
}

func hasSplit(f *layerfile.File) bool {
	for _, ins := range f.Instructions {
		if ins.Kind == layerfile.Split {
			return true
		}
	}
	return false
}

// memoryMB is the VM memory of a node: its own MEMORY, or for a child the
// parent's (a child runs in a copy of its parent's VM).
func memoryMB(n *node) int {
	for ; n != nil; n = n.parent {
		for i := len(n.file.Instructions) - 1; i >= 0; i-- {
			if ins := n.file.Instructions[i]; ins.Kind == layerfile.Memory {
				return int(ins.Memory.Bytes >> 20)
			}
		}
	}
	return 2048
}

// slots limits concurrent VMs by count and by memory.
type slots struct {
	mu       sync.Mutex
	cond     *sync.Cond
	total    int
	free     int
	freeMem  int
	limitMem bool
}

func newSlots(n, memMB int) *slots {
	s := &slots{total: n, free: n, freeMem: memMB, limitMem: memMB > 0}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *slots) run(ctx context.Context, mem int, fn func() engine.Result) engine.Result {
	stop := context.AfterFunc(ctx, s.cond.Broadcast)
	defer stop()
	s.mu.Lock()
	// A job larger than the whole memory budget still runs, alone.
	for ctx.Err() == nil && (s.free == 0 || (s.limitMem && s.freeMem < mem && s.free < s.total)) {
		s.cond.Wait()
	}
	if ctx.Err() != nil {
		s.mu.Unlock()
		return engine.Result{Status: engine.Cancelled, Error: "cancelled before it started"}
	}
	s.free--
	s.freeMem -= mem
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.free++
		s.freeMem += mem
		s.mu.Unlock()
		s.cond.Broadcast()
	}()
	return fn()
}
