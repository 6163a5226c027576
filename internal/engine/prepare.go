package engine

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/strata-ci/strata/internal/cachekey"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/repofiles"
	"github.com/strata-ci/strata/internal/store"
	"github.com/strata-ci/strata/internal/vm"
)

// env is an ordered set of variables.
type env struct {
	keys []string
	vals map[string]string
}

func newEnv(kvs []string) env {
	e := env{vals: map[string]string{}}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		e.set(k, v)
	}
	return e
}

func (e *env) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

func (e env) lookup(k string) (string, bool) {
	v, ok := e.vals[k]
	return v, ok
}

func (e env) clone() env {
	c := env{keys: append([]string(nil), e.keys...), vals: make(map[string]string, len(e.vals))}
	for k, v := range e.vals {
		c.vals[k] = v
	}
	return c
}

func (e env) list() []string {
	out := make([]string, 0, len(e.keys))
	for _, k := range e.keys {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// state is what the instructions before a step have set up.
type state struct {
	env        env
	workdir    string
	user       string
	setupFiles []string
	buildEnv   map[string]string // BUILD ENV name -> host value
	secrets    []string          // SECRET ENV names
	noSnapshot bool              // CHECKPOINT disabled in force
	cacheDirs  []string
}

func (s state) clone() state {
	c := s
	c.env = s.env.clone()
	c.setupFiles = append([]string(nil), s.setupFiles...)
	c.secrets = append([]string(nil), s.secrets...)
	c.cacheDirs = append([]string(nil), s.cacheDirs...)
	c.buildEnv = make(map[string]string, len(s.buildEnv))
	for k, v := range s.buildEnv {
		c.buildEnv[k] = v
	}
	return c
}

// step is one instruction after FROM, with everything decided before any
// VM starts.
type step struct {
	index  int // 1-based
	ins    *layerfile.Instruction
	before state // state the step runs in
	after  state
	key    cachekey.Chain
	// textKey chains only the instruction texts (and the base): RUN
	// REPEATABLE state is found by it, since that state survives changes of
	// file contents and BUILD ENV values but not of any instruction above.
	textKey cachekey.Chain
	// inVM reports whether the step changes the VM (needs a machine and
	// ends with a snapshot); other steps only change the host-side state.
	inVM bool
	// entries are what a COPY brings in.
	entries []repofiles.Entry
	// reads: repository path -> digest for every file the steps up to and
	// including this one read (COPY counts as reading, SPEC §3).
	reads map[string]string
	// files: guest path -> repository file, for every file COPY placed.
	files map[string]store.FileEntry
	// skip is set on a true SKIP REMAINING IF.
	skip bool
	// checkpoint: "" none, "force" for a bare or named CHECKPOINT.
	forceSnapshot bool
	reportEnv     map[string]string // BUILD ENV name -> digest, for explain
	reportSecrets map[string]string // SECRET ENV name -> keyed digest
}

// plan is a Layerfile ready to run.
type plan struct {
	image   string // FROM vm/... name
	memory  int64
	steps   []*step
	digests *repofiles.Digester
	split   int // n of the SPLIT the plan stops before (SplitPrefix), else 0
	base    final
}

// final is the state after the last step of a Layerfile: where a child
// Layerfile (FROM <path>) starts.
type final struct {
	key, textKey cachekey.Chain
	state        state
	reads        map[string]string
	files        map[string]store.FileEntry
	img          ImageRef
	spec         vm.Spec
	args         string
	layer        string
}

// finalOf is the state after the plan's last step.
func (p *plan) finalOf() final {
	f := p.base
	if n := len(p.steps); n > 0 {
		last := p.steps[n-1]
		f.key, f.textKey, f.state, f.reads, f.files = last.key, last.textKey, last.after, last.reads, last.files
	}
	return f
}

// unsupported are directives that belong to the multi-Layerfile graph,
// not yet run by the engine.
var unsupported = map[layerfile.Kind]bool{
	layerfile.Clone: true,
}

// prepare computes every step's state, key and read set.
func prepare(cfg *Config, job *Job, imageID, machineArgs string, digests *repofiles.Digester) (*plan, error) {
	f := job.File
	if len(f.Instructions) == 0 || f.Instructions[0].Kind != layerfile.From {
		return nil, fmt.Errorf("%s: FROM must be the first directive", job.Rel)
	}
	p := &plan{digests: digests, memory: 2 << 30}
	p.image = f.Instructions[0].From.Image

	lookupEnv := cfg.LookupEnv
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	ig := repofiles.NewIgnorer(job.RepoRoot)
	layerfileDir := path.Dir(job.Rel)
	if layerfileDir == "." {
		layerfileDir = ""
	}

	cur := state{env: newEnv(job.Env), workdir: "/root", user: "root", buildEnv: map[string]string{}}
	chain := cachekey.Base(imageID, machineArgs)
	textChain := chain
	reads := map[string]string{}
	files := map[string]store.FileEntry{}
	if job.Parent != nil {
		// A child continues the parent's chain and state; its own
		// built-in variables (RUNNER_ID...) replace the parent's.
		pf := job.Parent.final
		p.base = *pf
		chain, textChain, reads, files = pf.key, pf.textKey, pf.reads, pf.files
		cur = pf.state.clone()
		for _, kv := range job.Env {
			k, v, _ := strings.Cut(kv, "=")
			cur.env.set(k, v)
		}
		chain = chain.Step("FROM "+job.Rel, nil, "")
		textChain = textChain.Step("FROM "+job.Rel, nil, "")
	}
	for i, ins := range f.Instructions[1:] {
		s := &step{index: i + 1, ins: ins, before: cur.clone()}
		if unsupported[ins.Kind] {
			return nil, fmt.Errorf("%s: %s is not supported by this engine yet", ins.Pos, ins.Kind)
		}
		switch ins.Kind {
		case layerfile.Run, layerfile.RunBackground, layerfile.RunRepeatable:
			s.inVM = true
		case layerfile.Copy:
			s.inVM = true
			entries, err := repofiles.Select(repofiles.Copy{
				Root: job.RepoRoot, LayerfileDir: layerfileDir,
				Sources: ins.Copy.Sources, Dest: ins.Copy.Dest, Workdir: cur.workdir,
			}, ig)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ins.Pos, err)
			}
			s.entries = entries
			reads = cloneMap(reads)
			files = cloneMap(files)
			for _, e := range entries {
				if e.IsDir() {
					continue
				}
				sum, err := digests.Digest(e.Source)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", ins.Pos, err)
				}
				// The mode is part of what a step read: chmod +x must
				// not reuse a snapshot that has the old mode.
				reads[e.Source] = sum + ":" + e.Mode.String()
				files[e.Guest] = store.FileEntry{Source: e.Source, Digest: sum, Mode: uint32(e.Mode)}
			}
		case layerfile.Env:
			for _, pair := range ins.Env.Pairs {
				cur.env.set(pair.Key, layerfile.ExpandValue(pair.Value, cur.env.lookup))
			}
		case layerfile.BuildEnv:
			for _, n := range ins.Names.Names {
				v, _ := lookupEnv(n)
				cur.buildEnv[n] = v
				cur.env.set(n, v)
			}
		case layerfile.SecretEnv:
			for _, n := range ins.Names.Names {
				v, ok := cfg.Secrets[n]
				if !ok {
					return nil, fmt.Errorf("%s: secret %s was not given: pass --secret %s=VALUE, --secret %s (from the environment) or --secrets-file", ins.Pos, n, n, n)
				}
				if !contains(cur.secrets, n) {
					cur.secrets = append(cur.secrets, n)
				}
				cur.env.set(n, v)
			}
		case layerfile.Workdir:
			s.inVM = true
			dir := ins.Path.Path
			if !path.IsAbs(dir) {
				dir = path.Join(cur.workdir, dir)
			}
			cur.workdir = path.Clean(dir)
		case layerfile.User:
			s.inVM = true
			cur.user = ins.Path.Path
		case layerfile.SetupFile:
			cur.setupFiles = append(cur.setupFiles, ins.Paths.Paths...)
		case layerfile.Cache:
			for _, d := range ins.Paths.Paths {
				if !path.IsAbs(d) {
					d = path.Join(cur.workdir, d)
				}
				if d = path.Clean(d); !contains(cur.cacheDirs, d) {
					cur.cacheDirs = append(cur.cacheDirs, d)
				}
			}
		case layerfile.Checkpoint:
			if ins.Checkpoint.Disabled {
				cur.noSnapshot = true
			} else {
				cur.noSnapshot = false
				s.forceSnapshot = true
			}
		case layerfile.Memory:
			p.memory = ins.Memory.Bytes
		case layerfile.SkipRemainingIf:
			ok, err := evalSkip(ins.Skip.Conds, cur.env)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ins.Pos, err)
			}
			s.skip = ok
		case layerfile.Label:
		case layerfile.ExposeWebsite, layerfile.ExposeTCP:
			// Host-side: wait for the port to answer (when executed), and
			// publish it at the end.
		case layerfile.Wait:
		case layerfile.Button:
		case layerfile.Split:
			if job.SplitPrefix {
				p.split = ins.Split.N
				return p, nil
			}
			s.inVM = true
			if !ins.Split.Unordered {
				cur.env.set("SPLIT", strconv.Itoa(job.SplitIndex))
			}
			cur.env.set("SPLIT_NUM", strconv.Itoa(ins.Split.N))
		}
		text := ins.Text
		if ins.Kind == layerfile.Split {
			text += fmt.Sprintf(" [copy %d]", job.SplitIndex)
		}
		secretVals := map[string]string{}
		for _, n := range cur.secrets {
			secretVals[n] = cfg.Secrets[n]
		}
		if ins.Kind != layerfile.Button { // not part of the cache key (SPEC §2)
			chain = chain.Step(text, cur.buildEnv, cachekey.SecretDigest(cfg.Salt, secretVals))
			textChain = textChain.Step(text, nil, "")
		}
		s.key, s.textKey = chain, textChain
		s.reads, s.files = reads, files
		s.after = cur.clone()
		s.reportEnv = map[string]string{}
		for n, v := range cur.buildEnv {
			s.reportEnv[n] = cachekey.SecretDigest(cfg.Salt, map[string]string{n: v})
		}
		s.reportSecrets = map[string]string{}
		for n, v := range secretVals {
			s.reportSecrets[n] = cachekey.SecretDigest(cfg.Salt, map[string]string{n: v})
		}
		p.steps = append(p.steps, s)
		if s.skip {
			break
		}
	}
	return p, nil
}

// evalSkip evaluates SKIP REMAINING IF conditions (all must hold).
func evalSkip(conds []layerfile.Cond, e env) (bool, error) {
	for _, c := range conds {
		v, _ := e.lookup(c.Key)
		var holds bool
		switch c.Op {
		case "=":
			holds = v == c.Value
		case "!=":
			holds = v != c.Value
		case "=~", "!=~":
			re, err := regexp.Compile(c.Value)
			if err != nil {
				return false, fmt.Errorf("SKIP REMAINING IF %s: %w", c.Key, err)
			}
			holds = re.MatchString(v) == (c.Op == "=~")
		default:
			return false, fmt.Errorf("SKIP REMAINING IF: unknown operator %q", c.Op)
		}
		if !holds {
			return false, nil
		}
	}
	return true, nil
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// firstDifference names the first repository path whose digest differs
// between two read sets ("" when equal).
func firstDifference(old, now map[string]string) (string, string) {
	var paths []string
	for p := range old {
		paths = append(paths, p)
	}
	for p := range now {
		if _, ok := old[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		o, inOld := old[p]
		n, inNow := now[p]
		switch {
		case !inOld:
			return p, "added"
		case !inNow:
			return p, "deleted"
		case o != n:
			return p, "changed"
		}
	}
	return "", ""
}
