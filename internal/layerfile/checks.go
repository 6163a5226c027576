package layerfile

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// checkFile runs the checks that look at the whole file: FROM placement,
// MEMORY after a RUN, and servers started in the foreground.
func (p *parser) checkFile(empty bool) {
	if len(p.seen) == 0 {
		if len(p.diags) == 0 || !HasErrors(p.diags) {
			msg := "no instructions: a Layerfile starts with FROM"
			if empty {
				msg = "empty Layerfile: a Layerfile starts with FROM"
			}
			p.diags = append(p.diags, Diagnostic{Pos: Pos{File: p.path, Line: 1, Col: 1}, Severity: Error,
				Message: msg, Hint: "FROM vm/debian:12, or FROM <path to a parent Layerfile>"})
		}
		return
	}
	p.checkFrom()
	p.checkMemory()
	p.checkServers()
	p.checkSkipVariables()
}

// builtinVariables are the variables every step sees (SPEC §4).
var builtinVariables = []string{"CI", "CI_MACHINE", "IS_CI_MACHINE", "IN_CI_MACHINE", "IN_CI",
	"DEBIAN_FRONTEND", "GIT_BRANCH", "SUBDOMAIN", "GIT_COMMIT", "GIT_SHORT_COMMIT", "GIT_TAG",
	"GIT_COMMIT_TITLE", "JOB_ID", "RUNNER_ID", "RETRY_INDEX", "REPOSITORY_NAME", "REPOSITORY_OWNER",
	"EXPOSE_WEBSITE_HOST", "SPLIT", "SPLIT_NUM", "LAYERCI", "LAYERCI_JOB_ID", "LAYERCI_RUNNER_ID",
	"LAYERCI_BRANCH", "LAYERCI_REPO_NAME", "LAYERCI_REPO_OWNER"}

// checkSkipVariables warns when a SKIP REMAINING IF condition tests a
// variable that nothing sets but whose name is close to a built-in one
// (LAYER_CI_BRANCH for LAYERCI_BRANCH): the condition would never hold.
func (p *parser) checkSkipVariables() {
	defined := map[string]bool{}
	for _, s := range p.seen {
		in := s.inst
		if in == nil {
			continue
		}
		switch in.Kind {
		case Env:
			for _, pair := range in.Env.Pairs {
				defined[pair.Key] = true
			}
		case BuildEnv, SecretEnv:
			for _, n := range in.Names.Names {
				defined[n] = true
			}
		case SkipRemainingIf:
			for _, c := range in.Skip.Conds {
				if defined[c.Key] || slices.Contains(builtinVariables, c.Key) || len(c.Key) < 4 {
					continue
				}
				for _, b := range builtinVariables {
					if len(b) >= 4 && editDistance(c.Key, b) <= 2 {
						pos := in.Pos
						kw := len(in.Kind.String())
						if !strings.Contains(in.Source, "\n") {
							if i := strings.Index(in.Text[kw:], c.Key); i >= 0 {
								pos.Col += utf8.RuneCountInString(in.Text[:kw+i])
							}
						}
						p.add(pos, Warning, "SKIP REMAINING IF "+strings.Replace(in.Text[kw:], c.Key, b, 1)[1:],
							"%s is not set by strata or by this Layerfile; did you mean %s?", c.Key, b)
						break
					}
				}
			}
		}
	}
}

func (p *parser) add(pos Pos, sev Severity, hint, format string, a ...any) {
	p.diags = append(p.diags, Diagnostic{Pos: pos, Severity: sev, Message: fmt.Sprintf(format, a...), Hint: hint})
}

func (p *parser) checkFrom() {
	var froms []seenLine
	for _, s := range p.seen {
		if s.kind == From {
			froms = append(froms, s)
		}
	}
	first := p.seen[0]
	if len(froms) == 0 {
		p.add(first.pos, Error, "add FROM vm/debian:12 (or FROM <path to a parent Layerfile>) as the first instruction",
			"missing FROM: a Layerfile starts with FROM")
		return
	}
	if first.kind != From {
		p.add(froms[0].pos, Error, "move this FROM above line "+fmt.Sprint(first.pos.Line),
			"FROM must be the first instruction (line %d has %s before it)", first.pos.Line, first.kind)
	}
	for _, f := range froms[1:] {
		p.add(f.pos, Error, "a Layerfile has exactly one FROM; to build on top of this one, put the rest in another Layerfile that starts with FROM <path to this one>",
			"FROM repeated (the first FROM is at line %d)", froms[0].pos.Line)
	}
}

func (p *parser) checkMemory() {
	var firstRun *seenLine
	for i, s := range p.seen {
		if s.kind.IsRun() && firstRun == nil {
			firstRun = &p.seen[i]
		}
		if s.kind == Memory && firstRun != nil && s.inst != nil {
			p.add(s.pos, Warning, fmt.Sprintf("move %s above line %d", s.inst.Text, firstRun.pos.Line),
				"MEMORY after the first RUN (line %d): the VM is already running with the memory set before it", firstRun.pos.Line)
		}
	}
}

func (p *parser) checkServers() {
	var expose *seenLine
	for i := len(p.seen) - 1; i >= 0; i-- {
		s := p.seen[i]
		if s.kind == ExposeWebsite {
			expose = &p.seen[i]
			continue
		}
		if s.kind != Run || s.inst == nil || expose == nil {
			continue
		}
		if srv := ForegroundServer(s.inst.Run.Command); srv != "" {
			p.add(s.pos, Warning, "RUN BACKGROUND "+s.inst.Run.Command,
				"%q starts a server in the foreground: this step never ends, so EXPOSE WEBSITE (line %d) is never reached", srv, expose.pos.Line)
		}
	}
}

// serverCommands are word prefixes of commands that start a server and do
// not return.
var serverCommands = [][]string{
	{"npm", "start"}, {"npm", "run", "start"}, {"npm", "run", "dev"}, {"npm", "run", "serve"}, {"npm", "run", "server"},
	{"yarn", "start"}, {"yarn", "dev"}, {"yarn", "serve"}, {"yarn", "run", "start"}, {"yarn", "run", "dev"}, {"yarn", "run", "serve"},
	{"pnpm", "start"}, {"pnpm", "dev"}, {"pnpm", "run", "start"}, {"pnpm", "run", "dev"},
	{"python", "-m", "http.server"}, {"python3", "-m", "http.server"}, {"python", "-m", "SimpleHTTPServer"},
	{"python", "manage.py", "runserver"}, {"python3", "manage.py", "runserver"}, {"./manage.py", "runserver"},
	{"flask", "run"}, {"python", "-m", "flask", "run"}, {"python3", "-m", "flask", "run"},
	{"rails", "s"}, {"rails", "server"}, {"bin/rails", "s"}, {"bin/rails", "server"},
	{"bundle", "exec", "rails", "s"}, {"bundle", "exec", "rails", "server"},
	{"http-server"}, {"npx", "http-server"}, {"npx", "serve"}, {"serve"},
	{"php", "-S"}, {"uvicorn"}, {"gunicorn"}, {"hypercorn"},
	{"ng", "serve"}, {"npx", "ng", "serve"}, {"next", "dev"}, {"next", "start"}, {"npx", "next", "dev"}, {"npx", "next", "start"},
	{"jekyll", "serve"}, {"bundle", "exec", "jekyll", "serve"}, {"hugo", "server"}, {"webpack-dev-server"}, {"npx", "webpack-dev-server"},
	{"docker-compose", "up"}, {"docker", "compose", "up"},
}

// ForegroundServer returns the part of a shell command that starts a server
// in the foreground (such as "npm start" or "python3 -m http.server 8000"),
// or "" when there is none. A command sent to the background with '&' does
// not count, nor does "docker-compose up -d".
func ForegroundServer(cmd string) string {
	for _, sc := range simpleCommands(cmd) {
		if sc.background {
			continue
		}
		words := strings.Fields(sc.text)
		for len(words) > 0 && (strings.Contains(words[0], "=") || words[0] == "sudo" || words[0] == "exec" || words[0] == "-E") {
			words = words[1:]
		}
		for _, pat := range serverCommands {
			if len(words) < len(pat) || !equalWords(words[:len(pat)], pat) {
				continue
			}
			if pat[len(pat)-1] == "up" && (containsWord(words, "-d") || containsWord(words, "--detach")) {
				continue
			}
			return strings.Join(words, " ")
		}
	}
	return ""
}

func equalWords(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func containsWord(ws []string, w string) bool {
	for _, x := range ws {
		if x == w {
			return true
		}
	}
	return false
}

type simpleCommand struct {
	text       string
	background bool
}

// simpleCommands splits a shell command at ;, &&, ||, |, & outside quotes
// (a rough split, good enough to spot a server command). A comment ends it.
func simpleCommands(s string) []simpleCommand {
	var out []simpleCommand
	start := 0
	emit := func(end int, bg bool) {
		if t := strings.TrimSpace(s[start:end]); t != "" {
			out = append(out, simpleCommand{text: t, background: bg})
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			if j := strings.IndexByte(s[i+1:], '\''); j >= 0 {
				i += j + 1
			}
		case '"', '`':
			for i++; i < len(s) && s[i] != c; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '\\':
			i++
		case '#':
			if i == 0 || strings.IndexByte(" \t;&|()", s[i-1]) >= 0 {
				emit(i, false)
				return out
			}
		case ';', '|', '(', ')', '{', '}':
			emit(i, false)
			if c == '|' && i+1 < len(s) && s[i+1] == '|' {
				i++
			}
			start = i + 1
		case '&':
			switch {
			case i+1 < len(s) && s[i+1] == '&':
				emit(i, false)
				i++
			case i > 0 && (s[i-1] == '>' || s[i-1] == '<'), i+1 < len(s) && s[i+1] == '>':
				continue // redirection: 2>&1, &>file
			default:
				emit(i, true)
			}
			start = i + 1
		}
	}
	emit(len(s), false)
	return out
}
