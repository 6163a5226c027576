package layerfile

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Parse reads one Layerfile. It never panics and always returns a non-nil
// File holding every instruction that parsed; diags lists every error and
// warning found, in order. The file is usable only if no diagnostic is an
// Error (see HasErrors).
func Parse(path string, data []byte) (*File, []Diagnostic) {
	f := &File{Path: path}
	text, diags, ok := decode(path, data)
	if !ok {
		return f, diags
	}
	p := &parser{path: path, file: f, diags: diags}
	lls, ldiags := logicalLines(path, splitLines(text))
	p.diags = append(p.diags, ldiags...)
	for _, ll := range lls {
		p.parseLine(ll)
	}
	p.checkFile(len(text) == 0)
	SortDiagnostics(p.diags)
	return f, p.diags
}

type parser struct {
	path  string
	file  *File
	diags []Diagnostic
	// seen lists every line whose keyword was recognised, even when its
	// arguments were bad: the FROM placement checks need them.
	seen []seenLine
}

type seenLine struct {
	kind Kind
	pos  Pos
	inst *Instruction // nil when the arguments were bad
}

// line is the parsing context of one logical line.
type line struct {
	p    *parser
	ll   *logicalLine
	kind Kind
	kw   string // keyword as written (words separated as in the source)
	args string // argument text (after the keyword and its blanks)
	base int    // offset of args in ll.text
	ok   bool   // no error so far
}

func (l *line) pos(off int) Pos { return l.ll.pos(l.p.path, l.base+off) }

func (l *line) errAt(off int, hint, format string, a ...any) {
	l.ok = false
	l.p.diags = append(l.p.diags, Diagnostic{Pos: l.pos(off), Severity: Error, Message: fmt.Sprintf(format, a...), Hint: hint})
}

func (l *line) warnAt(off int, hint, format string, a ...any) {
	l.p.diags = append(l.p.diags, Diagnostic{Pos: l.pos(off), Severity: Warning, Message: fmt.Sprintf(format, a...), Hint: hint})
}

// keyword tables.
var (
	singleKeywords = map[string]Kind{
		"FROM": From, "RUN": Run, "COPY": Copy, "ENV": Env, "WORKDIR": Workdir, "USER": User,
		"CACHE": Cache, "CHECKPOINT": Checkpoint, "SPLIT": Split, "WAIT": Wait, "BUTTON": Button,
		"MEMORY": Memory, "LABEL": Label, "CLONE": Clone,
	}
	// multiKeywords: first word → the words that must follow.
	multiKeywords = map[string][]struct {
		next []string
		kind Kind
	}{
		"BUILD":  {{[]string{"ENV"}, BuildEnv}},
		"SECRET": {{[]string{"ENV"}, SecretEnv}},
		"SKIP":   {{[]string{"REMAINING", "IF"}, SkipRemainingIf}},
		"SETUP":  {{[]string{"FILE"}, SetupFile}},
		"EXPOSE": {{[]string{"WEBSITE"}, ExposeWebsite}, {[]string{"TCP"}, ExposeTCP}},
	}
	dockerOnly = map[string]string{
		"CMD":         "a Layerfile has no default command; start long-running processes with RUN BACKGROUND <command>",
		"ENTRYPOINT":  "a Layerfile has no entrypoint; start long-running processes with RUN BACKGROUND <command>",
		"ARG":         "use ENV NAME=value, and BUILD ENV NAME to make the cache depend on a variable's value",
		"ADD":         "use COPY <src>... <dest> (to download, RUN curl -fsSLO <url>)",
		"VOLUME":      "a Layerfile builds a whole VM: its disk persists; use CACHE <dir> for directories kept across runs",
		"HEALTHCHECK": "check with a RUN step, e.g. RUN curl -fsS localhost:8080/health",
		"ONBUILD":     "put the instruction in the Layerfile that builds FROM this one",
		"STOPSIGNAL":  "Layerfiles have no stop signal",
		"SHELL":       "RUN always uses /bin/bash -c",
		"MAINTAINER":  "use a comment",
	}
	allKeywords = []string{"FROM", "RUN", "RUN BACKGROUND", "RUN REPEATABLE", "COPY", "ENV", "BUILD ENV",
		"SECRET ENV", "WORKDIR", "USER", "CACHE", "CHECKPOINT", "SKIP REMAINING IF", "SPLIT",
		"EXPOSE WEBSITE", "EXPOSE TCP", "WAIT", "BUTTON", "MEMORY", "LABEL", "SETUP FILE", "CLONE"}
)

// firstWord returns the blank-separated word of s starting at off and the
// offset just after it.
func firstWord(s string, off int) (string, int) {
	for off < len(s) && isBlankByte(s[off]) {
		off++
	}
	end := off
	for end < len(s) && !isBlankByte(s[end]) {
		end++
	}
	return s[off:end], end
}

func skipBlanks(s string, off int) int {
	for off < len(s) && isBlankByte(s[off]) {
		off++
	}
	return off
}

func (p *parser) parseLine(ll *logicalLine) {
	text := ll.text
	word, end := firstWord(text, 0)
	l := &line{p: p, ll: ll, ok: true}
	kind, kwEnd, ok := p.keyword(l, word, end)
	if !ok {
		return
	}
	l.kind = kind
	l.kw = text[:kwEnd]
	l.base = skipBlanks(text, kwEnd)
	if l.base == len(text) {
		l.base = kwEnd // errors about missing arguments point right after the keyword
	}
	l.args = text[l.base:]
	inst := &Instruction{Kind: kind, Pos: ll.pos(p.path, 0), Source: ll.source}
	if commentsAllowed(kind) {
		if c := commentStart(l.args); c >= 0 {
			l.checkSwallowed(c, "comment")
			l.args = l.args[:c]
		}
	} else if kind.IsRun() {
		if c := shellCommentStart(l.args); c >= 0 {
			l.checkSwallowed(c, "shell comment")
		}
	}
	l.args = strings.TrimRight(l.args, " \t")
	inst.Text = strings.TrimRight(text[:l.base+len(l.args)], " \t")
	l.parseArgs(inst)
	if l.ok {
		p.file.Instructions = append(p.file.Instructions, inst)
		p.seen = append(p.seen, seenLine{kind: kind, pos: inst.Pos, inst: inst})
	} else {
		p.seen = append(p.seen, seenLine{kind: kind, pos: inst.Pos})
	}
}

// checkSwallowed warns when a comment starting at args offset c is followed
// by a line continuation: the continued lines become part of the comment.
func (l *line) checkSwallowed(c int, what string) {
	i := l.ll.segmentOf(l.base + c)
	if i >= len(l.ll.segs)-1 {
		return
	}
	first, last := l.ll.segs[i+1].line, l.ll.segs[len(l.ll.segs)-1].line
	lines := fmt.Sprintf("line %d is", first)
	if last > first {
		lines = fmt.Sprintf("lines %d-%d are", first, last)
	}
	l.warnAt(c, "end the comment before the backslash, or put the comment on a line of its own",
		"this %s ends with a line continuation, so %s joined into the comment and ignored", what, lines)
}

func commentsAllowed(k Kind) bool {
	return !k.IsRun() && k != Button && k != SkipRemainingIf
}

// keyword recognises the directive at the start of a logical line. It
// reports unknown, legacy and Dockerfile-only directives.
func (p *parser) keyword(l *line, word string, end int) (Kind, int, bool) {
	text := l.ll.text
	if k, ok := singleKeywords[word]; ok {
		if k == Run {
			next, nend := firstWord(text, end)
			switch next {
			case "BACKGROUND":
				return RunBackground, nend, true
			case "REPEATABLE":
				return RunRepeatable, nend, true
			}
		}
		return k, end, true
	}
	if alts, ok := multiKeywords[word]; ok {
		for _, alt := range alts {
			e, matched := end, true
			for _, w := range alt.next {
				var got string
				got, e = firstWord(text, e)
				if got != w {
					matched = false
					break
				}
			}
			if matched {
				return alt.kind, e, true
			}
		}
		next, _ := firstWord(text, end)
		nextOff := skipBlanks(text, end)
		switch word {
		case "EXPOSE":
			if _, err := strconv.Atoi(strings.SplitN(next, "/", 2)[0]); err == nil && next != "" {
				port := strings.SplitN(next, "/", 2)[0]
				l.errAt(0, fmt.Sprintf("EXPOSE WEBSITE localhost:%s for a web preview, or EXPOSE TCP %s for a raw port", port, port),
					"EXPOSE <port> is Dockerfile syntax")
			} else if up := strings.ToUpper(next); up == "WEBSITE" || up == "TCP" {
				l.errAt(nextOff-l.base, "write EXPOSE "+up, "keywords are upper-case: %q", next)
			} else {
				l.errAt(nextOff-l.base, "EXPOSE WEBSITE localhost:8080, or EXPOSE TCP 5432", "expected WEBSITE or TCP after EXPOSE, found %q", next)
			}
		default:
			want := word + " " + strings.Join(alts[0].next, " ")
			got := strings.Join(strings.Fields(text[:min(len(text), len(want)+8)]), " ")
			if strings.HasPrefix(strings.ToUpper(got), want) {
				l.errAt(nextOff-l.base, "write "+want, "keywords are upper-case: expected %q", want)
			} else {
				l.errAt(nextOff-l.base, "write "+want+" ...", "expected %q", want)
			}
		}
		return Invalid, 0, false
	}
	l.base = 0
	switch {
	case word == "THEN":
		rest := strings.TrimLeft(text[end:], " \t")
		l.errAt(0, "drop THEN: "+rest, "THEN is an old Layerfile syntax that is no longer supported")
	case dockerOnly[word] != "":
		hint := dockerOnly[word]
		if word == "CMD" || word == "ENTRYPOINT" {
			if cmd := execFormCommand(strings.TrimSpace(text[end:])); cmd != "" {
				hint = "to start it in the VM: RUN BACKGROUND " + cmd
			}
		}
		l.errAt(0, hint, "%s is a Dockerfile directive; Layerfiles have no %s", word, word)
	case isKeywordWord(strings.ToUpper(word)):
		l.errAt(0, "write "+strings.ToUpper(word), "keywords are upper-case: %q", word)
	default:
		hint := ""
		if s := suggestKeyword(word); s != "" {
			hint = "did you mean " + s + "?"
		} else if word == strings.ToLower(word) {
			hint = "to run a shell command, write RUN " + strings.TrimSpace(text)
			if p.previousContinues(l.ll) {
				hint = "if this line belongs to the RUN above, end the line before it with a backslash"
			}
		}
		l.errAt(0, hint, "unknown directive %q", word)
	}
	return Invalid, 0, false
}

// previousContinues reports whether the instruction right above ll (no blank
// line between) is a RUN, so ll is likely a forgotten continuation.
func (p *parser) previousContinues(ll *logicalLine) bool {
	if len(p.seen) == 0 {
		return false
	}
	last := p.seen[len(p.seen)-1]
	if !last.kind.IsRun() || last.inst == nil {
		return false
	}
	end := last.pos.Line + strings.Count(last.inst.Source, "\n")
	return end+1 == ll.segs[0].line
}

func isKeywordWord(w string) bool {
	if _, ok := singleKeywords[w]; ok {
		return true
	}
	_, ok := multiKeywords[w]
	return ok
}

// execFormCommand turns a Docker exec-form array ["a", "b c"] into a shell
// command line, or returns s unchanged when it is not an array.
func execFormCommand(s string) string {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return s
	}
	inner := strings.TrimSpace(s[1 : len(s)-1])
	var parts []string
	for _, f := range strings.Split(inner, ",") {
		f = strings.TrimSpace(f)
		v, err := strconv.Unquote(f)
		if err != nil {
			return s
		}
		parts = append(parts, quoteShell(v))
	}
	return strings.Join(parts, " ")
}

func quoteShell(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t'\"\\$`;&|<>()*?[]#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// suggestKeyword returns the keyword closest to w (a likely typo), or "".
func suggestKeyword(w string) string {
	if len(w) > 12 {
		return ""
	}
	up := strings.ToUpper(w)
	best, bestD := "", 3
	for _, k := range allKeywords {
		first, _, _ := strings.Cut(k, " ")
		if l := len(up) - len(first); l > 2 || l < -2 {
			continue
		}
		if d := editDistance(up, first); d < bestD && d <= len(first)/3 {
			best, bestD = first, d
		}
	}
	if best != "" && (w == up || len(w) > 3) {
		return best
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkMisspeltRun warns when "RUN BACKGROUD x" was meant as RUN BACKGROUND.
func (l *line) checkMisspeltRun() {
	w, end := firstWord(l.args, 0)
	rest := strings.TrimLeft(l.args[end:], " \t")
	if len(w) < 6 || len(w) > 12 || strings.ToUpper(w) != w || rest == "" {
		return
	}
	for _, mod := range []string{"BACKGROUND", "REPEATABLE"} {
		if editDistance(w, mod) <= 2 {
			l.warnAt(0, "RUN "+mod+" "+rest,
				"%q looks like a misspelt RUN %s; as written it runs as a shell command", w, mod)
			return
		}
	}
}

// tokens splits the arguments into words, reporting an unterminated quote.
func (l *line) tokens() ([]token, bool) {
	toks, err := tokenize(l.args)
	if err != nil {
		l.errAt(err.off, "close the quote, or escape it with a backslash", "unterminated %c quote", err.quote)
		return nil, false
	}
	return toks, true
}

func (l *line) parseArgs(inst *Instruction) {
	switch inst.Kind {
	case From:
		inst.From = l.parseFrom()
	case Run, RunBackground, RunRepeatable:
		if l.args == "" {
			l.errAt(0, l.kw+" <command>, e.g. "+l.kw+" make test", "%s needs a command", l.kw)
		}
		inst.Run = &RunArgs{Command: l.args}
		if inst.Kind == Run {
			l.checkMisspeltRun()
		}
	case Copy:
		inst.Copy = l.parseCopy()
	case Env:
		inst.Env = l.parseEnv()
	case BuildEnv, SecretEnv:
		inst.Names = l.parseNames(inst.Kind)
	case Workdir:
		inst.Path = l.parseOne("directory", "WORKDIR /app")
	case User:
		inst.Path = l.parseUser()
	case Cache, Wait, SetupFile:
		inst.Paths = l.parsePaths(inst.Kind)
	case Checkpoint:
		inst.Checkpoint = l.parseCheckpoint()
	case SkipRemainingIf:
		inst.Skip = l.parseSkip()
	case Split:
		inst.Split = l.parseSplit()
	case ExposeWebsite:
		inst.Website = l.parseWebsite()
	case ExposeTCP:
		inst.TCP = l.parseTCP()
	case Button:
		if l.args == "" {
			l.errAt(0, "BUTTON Deploy to production?", "BUTTON needs a message to show")
		}
		inst.Button = &ButtonArgs{Message: l.args}
	case Memory:
		inst.Memory = l.parseMemory()
	case Label:
		inst.Label = l.parseLabel()
	case Clone:
		inst.Clone = l.parseClone()
	}
}

var (
	vmImageRe      = regexp.MustCompile(`^vm/[a-z][a-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*$`)
	libraryImageRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._/-]*:[A-Za-z0-9][A-Za-z0-9._-]*$`)
	knownDistros   = map[string]string{"debian": "12", "ubuntu": "22.04", "alpine": "", "centos": "", "fedora": ""}
)

func (l *line) parseFrom() *FromArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) == 0 {
		l.errAt(0, "FROM vm/debian:12, or FROM <path to a parent Layerfile>", "FROM needs a base")
		return nil
	}
	if len(toks) > 1 {
		l.errAt(toks[1].off, "FROM "+toks[0].raw, "FROM takes one base, found %d words", len(toks))
		return nil
	}
	t := toks[0]
	v := t.val
	switch {
	case strings.HasPrefix(v, "vm/"):
		if !vmImageRe.MatchString(v) {
			hint := "FROM vm/<distro>:<version>, e.g. FROM vm/debian:12"
			if d := strings.TrimPrefix(v, "vm/"); !strings.Contains(d, ":") && knownDistros[d] != "" {
				hint = "FROM vm/" + d + ":" + knownDistros[d]
			}
			l.errAt(t.off, hint, "bad VM image %q: expected vm/<distro>:<version>", v)
			return nil
		}
		return &FromArgs{Form: FromVM, Image: v}
	case strings.Contains(v, ":"):
		if !strings.Contains(v, "/") {
			l.errAt(t.off, "FROM vm/"+v, "%q is a Docker image; a Layerfile starts from a VM image (vm/<distro>:<version>), another Layerfile, or <library>/<name>:<tag>", v)
			return nil
		}
		if !libraryImageRe.MatchString(v) {
			l.errAt(t.off, "FROM <library>/<name>:<tag>, e.g. FROM webapp.io/base:latest", "bad image name %q", v)
			return nil
		}
		return &FromArgs{Form: FromLibrary, Image: v}
	default:
		if _, ok := knownDistros[v]; ok {
			ver := knownDistros[v]
			if ver == "" {
				ver = "<version>"
			}
			l.errAt(t.off, "FROM vm/"+v+":"+ver, "%q looks like a distribution name; VM images are written vm/<distro>:<version>", v)
			return nil
		}
		return &FromArgs{Form: FromPath, Path: v}
	}
}

func (l *line) parseCopy() *CopyArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) > 0 && strings.HasPrefix(toks[0].raw, "--") {
		l.errAt(toks[0].off, "remove "+toks[0].raw+"; files are owned by the current USER", "COPY has no options (%s is Dockerfile syntax)", toks[0].raw)
		return nil
	}
	if len(toks) < 2 {
		hint := "COPY <source>... <destination>, e.g. COPY . ."
		if len(toks) == 1 {
			hint = "COPY " + toks[0].raw + " ."
		}
		l.errAt(len(l.args), hint, "COPY needs a source and a destination")
		return nil
	}
	args := &CopyArgs{Dest: toks[len(toks)-1].val}
	for _, t := range toks[:len(toks)-1] {
		args.Sources = append(args.Sources, t.val)
	}
	l.checkMultiSource(toks[:len(toks)-1], toks[len(toks)-1], "COPY")
	return args
}

// checkMultiSource enforces "two or more sources need a destination ending
// in /".
func (l *line) checkMultiSource(srcs []token, dest token, kw string) {
	if len(srcs) < 2 || strings.HasSuffix(dest.val, "/") {
		return
	}
	raws := make([]string, 0, len(srcs)+1)
	for _, s := range srcs {
		raws = append(raws, s.raw)
	}
	hint := kw + " " + strings.Join(raws, " ") + " " + quoteArg(dest.val+"/")
	l.errAt(dest.off, hint, "with %d sources the destination must be a folder ending in /", len(srcs))
}

func (l *line) parseEnv() *EnvArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) == 0 {
		l.errAt(0, "ENV NAME=value", "ENV needs NAME=value")
		return nil
	}
	args := &EnvArgs{}
	if !strings.Contains(toks[0].raw, "=") {
		// Legacy form: ENV NAME value...
		if !isName(toks[0].raw) {
			l.errAt(toks[0].off, "ENV NAME=value", "bad variable name %q", toks[0].raw)
			return nil
		}
		if len(toks) == 1 {
			l.errAt(len(l.args), "ENV "+toks[0].raw+"=value", "ENV %s needs a value", toks[0].raw)
			return nil
		}
		args.Pairs = []EnvPair{{Key: toks[0].raw, Value: l.args[toks[1].off:]}}
		return args
	}
	for i, t := range toks {
		k, v, found := strings.Cut(t.raw, "=")
		if !found {
			hint := "ENV NAME=value NAME2=value2"
			if i > 0 {
				prev := toks[i-1].raw
				pk, pv, _ := strings.Cut(prev, "=")
				hint = fmt.Sprintf("quote a value with spaces: %s=\"%s %s\"", pk, pv, t.raw)
			}
			l.errAt(t.off, hint, "expected NAME=value, found %q", t.raw)
			return nil
		}
		if !isName(k) {
			l.errAt(t.off, "names are letters, digits and _, not starting with a digit", "bad variable name %q", k)
			return nil
		}
		args.Pairs = append(args.Pairs, EnvPair{Key: k, Value: v})
	}
	return args
}

func (l *line) parseNames(k Kind) *NamesArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) == 0 {
		l.errAt(0, k.String()+" NAME", "%s needs at least one variable name", k)
		return nil
	}
	args := &NamesArgs{}
	for _, t := range toks {
		if name, _, found := strings.Cut(t.raw, "="); found && isName(name) {
			hint := "set it with ENV " + t.raw + ", then " + k.String() + " " + name
			if k == SecretEnv {
				hint = "secret values are given to strata, never written in the repository: SECRET ENV " + name
			}
			l.errAt(t.off, hint, "%s takes variable names, not values", k)
			return nil
		}
		if !isName(t.raw) {
			l.errAt(t.off, "names are letters, digits and _, not starting with a digit", "bad variable name %q", t.raw)
			return nil
		}
		args.Names = append(args.Names, t.raw)
	}
	return args
}

// parseOne reads exactly one (possibly quoted) word.
func (l *line) parseOne(what, example string) *PathArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	kw := l.kind.String()
	if len(toks) == 0 {
		l.errAt(0, example, "%s needs a %s", kw, what)
		return nil
	}
	if len(toks) > 1 {
		l.errAt(toks[1].off, "quote a name with spaces: "+kw+" "+quoteArg(strings.TrimSpace(l.args)), "%s takes one %s, found %d words", kw, what, len(toks))
		return nil
	}
	return &PathArgs{Path: toks[0].val}
}

var userRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

func (l *line) parseUser() *PathArgs {
	a := l.parseOne("user name", "USER app")
	if a == nil {
		return nil
	}
	if !userRe.MatchString(a.Path) {
		hint := "user names are lower-case letters, digits, _ and -, starting with a letter or _"
		if low := strings.ToLower(a.Path); userRe.MatchString(low) {
			hint = "USER " + low
		}
		l.errAt(0, hint, "bad user name %q", a.Path)
		return nil
	}
	return a
}

func (l *line) parsePaths(k Kind) *PathsArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) == 0 {
		ex := map[Kind]string{Cache: "CACHE ~/.npm", Wait: "WAIT ../base", SetupFile: "SETUP FILE /root/.env"}[k]
		l.errAt(0, ex, "%s needs at least one path", k)
		return nil
	}
	args := &PathsArgs{}
	for _, t := range toks {
		if t.val == "" {
			l.errAt(t.off, "", "empty path")
			return nil
		}
		args.Paths = append(args.Paths, t.val)
	}
	return args
}

var checkpointNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (l *line) parseCheckpoint() *CheckpointArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	switch {
	case len(toks) == 0:
		return &CheckpointArgs{}
	case len(toks) > 1:
		l.errAt(toks[1].off, "CHECKPOINT, CHECKPOINT <name> or CHECKPOINT disabled", "CHECKPOINT takes at most one name, found %d words", len(toks))
		return nil
	}
	v := toks[0].val
	if v == "disabled" {
		return &CheckpointArgs{Disabled: true}
	}
	if strings.EqualFold(v, "disabled") {
		l.errAt(toks[0].off, "CHECKPOINT disabled", "write %q in lower case to disable checkpoints", "disabled")
		return nil
	}
	if !checkpointNameRe.MatchString(v) {
		l.errAt(toks[0].off, "names are letters, digits, '.', '_' and '-', starting with a letter or digit", "bad checkpoint name %q", v)
		return nil
	}
	return &CheckpointArgs{Name: v}
}

// condition operators, longest first.
var skipOps = []string{"!=~", "=~", "!=", "="}

func (l *line) parseSkip() *SkipArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	const example = "SKIP REMAINING IF GIT_BRANCH!=main AND GIT_TAG=~^v"
	if len(toks) == 0 {
		l.errAt(0, example, "SKIP REMAINING IF needs a condition")
		return nil
	}
	args := &SkipArgs{}
	wantCond := true
	for i, t := range toks {
		switch {
		case t.raw == "AND":
			if wantCond {
				if i == 0 {
					l.errAt(t.off, example, "AND must join two conditions; none comes before it")
				} else {
					l.errAt(t.off, example, "AND must join two conditions; found AND AND")
				}
				return nil
			}
			wantCond = true
			continue
		case strings.EqualFold(t.raw, "AND"):
			l.errAt(t.off, "write AND", "keywords are upper-case: %q", t.raw)
			return nil
		case strings.EqualFold(t.raw, "OR") || t.raw == "||" || t.raw == "&&" || t.raw == "&":
			l.errAt(t.off, "for \"or\", use one SKIP REMAINING IF line per alternative", "only AND can join conditions, found %q", t.raw)
			return nil
		}
		if !wantCond {
			prev := toks[i-1].raw
			l.errAt(t.off, fmt.Sprintf("join conditions with AND: %s AND %s", prev, t.raw), "expected AND between conditions")
			return nil
		}
		c, ok := l.parseCond(t)
		if !ok {
			return nil
		}
		args.Conds = append(args.Conds, c)
		wantCond = false
	}
	if wantCond {
		last := toks[len(toks)-1]
		l.errAt(last.off, example, "AND at the end: expected a condition after it")
		return nil
	}
	return args
}

func (l *line) parseCond(t token) (Cond, bool) {
	raw := t.raw
	n := nameLen(raw)
	key := raw[:n]
	op := ""
	for _, o := range skipOps {
		if strings.HasPrefix(raw[n:], o) {
			op = o
			break
		}
	}
	if key == "" || op == "" {
		hint := "conditions are NAME=value, NAME!=value, NAME=~regexp or NAME!=~regexp"
		if strings.ContainsAny(raw, "=~!") && key == "" {
			hint = "a condition starts with a variable name, e.g. GIT_BRANCH=main"
		}
		l.errAt(t.off, hint, "bad condition %q", raw)
		return Cond{}, false
	}
	val, err := unquote(raw[n+len(op):])
	if err != nil {
		l.errAt(t.off+n+len(op)+err.off, "close the quote", "unterminated %c quote", err.quote)
		return Cond{}, false
	}
	if op == "=~" || op == "!=~" {
		if _, rerr := regexp.Compile(val); rerr != nil {
			l.errAt(t.off+n+len(op), "the pattern is an RE2 regular expression", "bad regular expression %q: %v", val, rerr)
			return Cond{}, false
		}
	}
	if amp := strings.IndexByte(val, '&'); amp >= 0 {
		rest := val[amp+1:]
		m := nameLen(rest)
		if m > 0 && strings.ContainsAny(rest[m:min(m+1, len(rest))], "=!") {
			l.warnAt(t.off, fmt.Sprintf("SKIP REMAINING IF %s%s%s AND %s", key, op, quoteArg(val[:amp]), rest),
				"the value of %s is %q: '&' does not join conditions", key, val)
		}
	}
	return Cond{Key: key, Op: op, Value: val}, true
}

func (l *line) parseSplit() *SplitArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	args := &SplitArgs{}
	if len(toks) > 0 && toks[0].raw == "UNORDERED" {
		args.Unordered = true
		toks = toks[1:]
	}
	kw := "SPLIT"
	if args.Unordered {
		kw = "SPLIT UNORDERED"
	}
	if len(toks) == 0 {
		l.errAt(len(l.args), kw+" 2", "%s needs the number of copies", kw)
		return nil
	}
	if len(toks) > 1 {
		l.errAt(toks[1].off, kw+" "+toks[0].raw, "%s takes one number, found %d words", kw, len(toks))
		return nil
	}
	n, err := strconv.Atoi(toks[0].raw)
	if err != nil {
		hint := kw + " 2"
		if strings.EqualFold(toks[0].raw, "UNORDERED") {
			hint = "SPLIT UNORDERED 2"
		}
		l.errAt(toks[0].off, hint, "%s needs the number of copies, found %q", kw, toks[0].raw)
		return nil
	}
	if n < 1 || n > maxSplit {
		l.errAt(toks[0].off, kw+" 2", "%s: number of copies must be 1 to %d, found %d", kw, maxSplit, n)
		return nil
	}
	args.N = n
	return args
}

const maxSplit = 1000

func (l *line) parsePort(t token, what string) (int, bool) {
	n, err := strconv.Atoi(t.val)
	if err != nil || n < 1 || n > 65535 {
		l.errAt(t.off, "ports are 1 to 65535", "bad %s %q", what, t.val)
		return 0, false
	}
	return n, true
}

func (l *line) parseWebsite() *WebsiteArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	const example = "EXPOSE WEBSITE localhost:8080 [/path [/rewrite]]"
	if len(toks) == 0 {
		l.errAt(0, example, "EXPOSE WEBSITE needs a location: localhost:PORT, http(s)://localhost[:PORT] or PORT")
		return nil
	}
	if len(toks) > 3 {
		l.errAt(toks[3].off, example, "EXPOSE WEBSITE takes a location, a path and a rewrite, found %d words", len(toks))
		return nil
	}
	loc := toks[0]
	args := &WebsiteArgs{Scheme: "http", Path: "/"}
	s := loc.val
	if scheme, rest, found := strings.Cut(s, "://"); found {
		args.Scheme = strings.ToLower(scheme)
		if args.Scheme != "http" && args.Scheme != "https" {
			l.errAt(loc.off, "use http:// or https://", "unsupported scheme %q", scheme)
			return nil
		}
		s = rest
	}
	if host, path, found := strings.Cut(s, "/"); found {
		if path != "" {
			hint := "put the path in its own argument: EXPOSE WEBSITE " + host + " /" + path
			for _, t := range toks[1:] {
				hint += " " + t.raw
			}
			l.errAt(loc.off, hint, "the location %q contains a path", loc.val)
			return nil
		}
		s = host
	}
	host, portStr, hasPort := strings.Cut(s, ":")
	if n, err := strconv.Atoi(s); err == nil && !strings.Contains(loc.val, "://") {
		host, portStr, hasPort = "localhost", strconv.Itoa(n), true
		if n < 1 || n > 65535 {
			l.errAt(loc.off, "ports are 1 to 65535", "bad port %q", s)
			return nil
		}
	}
	if !strings.EqualFold(host, "localhost") {
		port := portStr
		if !hasPort {
			port = "8080"
		}
		l.errAt(loc.off, fmt.Sprintf("EXPOSE WEBSITE localhost:%s (the server must listen inside this VM)", port),
			"EXPOSE WEBSITE publishes a port of this VM: the host must be localhost, found %q", host)
		return nil
	}
	switch {
	case hasPort:
		n, err := strconv.Atoi(portStr)
		if err != nil || n < 1 || n > 65535 {
			l.errAt(loc.off, "ports are 1 to 65535, e.g. localhost:8080", "bad port %q", portStr)
			return nil
		}
		args.Port = n
	case args.Scheme == "https":
		args.Port = 443
	default:
		args.Port = 80
	}
	if len(toks) > 1 {
		t := toks[1]
		if !strings.HasPrefix(t.val, "/") {
			hint := "paths start with /: EXPOSE WEBSITE " + loc.raw + " /" + t.val
			if t.val == ":" || strings.HasPrefix(t.val, ":") {
				hint = "remove the blanks around ':': EXPOSE WEBSITE " + strings.Join(strings.Fields(l.args), "")
			}
			l.errAt(t.off, hint, "the path %q must start with /", t.val)
			return nil
		}
		args.Path = t.val
	}
	if len(toks) > 2 {
		t := toks[2]
		if !strings.HasPrefix(t.val, "/") {
			l.errAt(t.off, "EXPOSE WEBSITE "+loc.raw+" "+toks[1].raw+" /"+t.val, "the rewrite %q must start with /", t.val)
			return nil
		}
		args.Rewrite = t.val
	}
	return args
}

func (l *line) parseTCP() *TCPArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) == 0 || len(toks) > 2 {
		off := 0
		if len(toks) > 2 {
			off = toks[2].off
		}
		l.errAt(off, "EXPOSE TCP 5432, or EXPOSE TCP 5432 15432 to choose the host port", "EXPOSE TCP takes a guest port and an optional host port")
		return nil
	}
	args := &TCPArgs{}
	if args.GuestPort, ok = l.parsePort(toks[0], "port"); !ok {
		return nil
	}
	if len(toks) == 2 {
		if args.HostPort, ok = l.parsePort(toks[1], "host port"); !ok {
			return nil
		}
	}
	return args
}

var memoryRe = regexp.MustCompile(`^([0-9]+)([A-Za-z]*)$`)

// minMemory is the smallest MEMORY accepted: a VM with less does not boot.
const minMemory = 128 << 20

func (l *line) parseMemory() *MemoryArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	if len(toks) != 1 {
		off := 0
		if len(toks) > 1 {
			off = toks[1].off
		}
		l.errAt(off, "MEMORY 4G", "MEMORY takes one size: <n>K, <n>M or <n>G")
		return nil
	}
	t := toks[0]
	m := memoryRe.FindStringSubmatch(t.val)
	if m == nil {
		l.errAt(t.off, "MEMORY 4G", "bad memory size %q: expected <n>K, <n>M or <n>G", t.val)
		return nil
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		l.errAt(t.off, "MEMORY 4G", "memory size %q is too large", t.val)
		return nil
	}
	var mult int64
	switch strings.ToUpper(m[2]) {
	case "":
		mult = 1
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	default:
		hint := "units are K, M and G (powers of 1024), e.g. MEMORY 4G"
		if u := strings.ToUpper(m[2][:1]); strings.Contains("KMG", u) {
			hint = "MEMORY " + m[1] + u
		}
		l.errAt(t.off+len(m[1]), hint, "bad memory unit %q: expected K, M or G", m[2])
		return nil
	}
	if n > (1<<40)/mult {
		l.errAt(t.off, "MEMORY 4G", "memory size %q is too large (the limit is 1024G)", t.val)
		return nil
	}
	b := n * mult
	if b < minMemory {
		hint := "MEMORY 2G"
		if m[2] == "" && n >= 128 {
			hint = "MEMORY " + m[1] + "M"
		}
		l.errAt(t.off, hint, "memory size %q is %d bytes, too small for a VM (at least 128M)", t.val, b)
		return nil
	}
	return &MemoryArgs{Bytes: b}
}

func (l *line) parseLabel() *LabelArgs {
	const example = "LABEL display_name=<name>, or LABEL status=merge|hidden"
	key, rest, found := strings.Cut(l.args, "=")
	if !found || (key != "display_name" && key != "status") {
		if !found {
			key, _ = firstWord(l.args, 0)
		}
		l.errAt(0, example, "unknown label %q: expected display_name or status", key)
		return nil
	}
	val, err := unquote(strings.Trim(rest, " \t"))
	if err != nil {
		l.errAt(len(key)+1+err.off, "close the quote", "unterminated %c quote", err.quote)
		return nil
	}
	if toks, _ := tokenize(strings.Trim(rest, " \t")); len(toks) == 1 {
		val = toks[0].val
	}
	if key == "status" && val != "merge" && val != "hidden" {
		l.errAt(len(key)+1, "LABEL status=merge, or LABEL status=hidden", "bad status %q: expected merge or hidden", val)
		return nil
	}
	if val == "" {
		l.errAt(len(key)+1, example, "empty %s", key)
		return nil
	}
	return &LabelArgs{Key: key, Value: val}
}

func (l *line) parseClone() *CloneArgs {
	toks, ok := l.tokens()
	if !ok {
		return nil
	}
	const example = "CLONE https://github.com/org/repo [DEFAULT=main] [<src>...] <dest>"
	if len(toks) < 2 {
		l.errAt(len(l.args), example, "CLONE needs a repository URL and a destination")
		return nil
	}
	args := &CloneArgs{URL: toks[0].val}
	rest := toks[1:]
	if d, found := strings.CutPrefix(rest[0].raw, "DEFAULT="); found {
		if d == "" {
			l.errAt(rest[0].off, example, "DEFAULT= needs a branch name")
			return nil
		}
		if args.Default, _ = unquote(d); args.Default == "" {
			l.errAt(rest[0].off, example, "DEFAULT= needs a branch name")
			return nil
		}
		rest = rest[1:]
	}
	for _, t := range rest {
		if strings.HasPrefix(t.raw, "DEFAULT=") {
			l.errAt(t.off, example, "DEFAULT= must come right after the URL")
			return nil
		}
	}
	if len(rest) == 0 {
		l.errAt(len(l.args), example, "CLONE needs a destination")
		return nil
	}
	for _, t := range rest[:len(rest)-1] {
		args.Sources = append(args.Sources, t.val)
	}
	args.Dest = rest[len(rest)-1].val
	l.checkMultiSource(rest[:len(rest)-1], rest[len(rest)-1], "CLONE "+toks[0].raw)
	if !l.ok {
		return nil
	}
	return args
}
