package repofiles

import (
	"bufio"
	"bytes"
	"os"
	"path"
	"regexp"
	"strings"
)

// ignoreRule is one line of a .layerignore file (gitignore syntax).
type ignoreRule struct {
	re      *regexp.Regexp
	negate  bool
	dirOnly bool
}

// ignoreFile is the parsed .layerignore of one directory (dir is relative
// to the repository root, "" for the root).
type ignoreFile struct {
	dir   string
	rules []ignoreRule
}

// parseIgnore reads gitignore-syntax rules.
func parseIgnore(dir string, data []byte) ignoreFile {
	f := ignoreFile{dir: dir}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if !strings.HasSuffix(line, `\ `) {
			line = strings.TrimRight(line, " \t")
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var r ignoreRule
		if strings.HasPrefix(line, "!") {
			r.negate = true
			line = line[1:]
		} else if strings.HasPrefix(line, `\`) {
			line = line[1:]
		}
		if strings.HasSuffix(line, "/") {
			r.dirOnly = true
			line = strings.TrimSuffix(line, "/")
		}
		anchored := strings.Contains(line, "/")
		line = strings.TrimPrefix(line, "/")
		if line == "" {
			continue
		}
		expr := globToRegexp(line)
		if !anchored {
			expr = "(?:.*/)?" + expr
		}
		re, err := regexp.Compile("^" + expr + "$")
		if err != nil {
			continue // an unmatchable pattern, as git treats it
		}
		r.re = re
		f.rules = append(f.rules, r)
	}
	return f
}

// globToRegexp translates one gitignore pattern to a regular expression.
func globToRegexp(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "/**") && i+3 == len(p):
			b.WriteString("/.*")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '[':
			end := strings.IndexByte(p[i+1:], ']')
			if end < 0 {
				b.WriteString(`\[`)
				continue
			}
			class := p[i+1 : i+1+end]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
			i += end + 1
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteString(regexp.QuoteMeta(string(p[i])))
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	return b.String()
}

// Ignorer answers whether repository paths are excluded by .layerignore
// files (the one at the root and any in subfolders, deeper ones winning).
type Ignorer struct {
	root  string
	files map[string]*ignoreFile // by directory, nil when there is none
}

// NewIgnorer reads .layerignore files lazily from root.
func NewIgnorer(root string) *Ignorer {
	return &Ignorer{root: root, files: map[string]*ignoreFile{}}
}

func (ig *Ignorer) load(dir string) *ignoreFile {
	if f, ok := ig.files[dir]; ok {
		return f
	}
	data, err := os.ReadFile(path.Join(ig.root, dir, ".layerignore"))
	var f *ignoreFile
	if err == nil {
		parsed := parseIgnore(dir, data)
		f = &parsed
	}
	ig.files[dir] = f
	return f
}

// Ignored reports whether rel (slash-separated, relative to the root) is
// excluded. It does not look at parents: callers walk top-down and prune
// excluded directories, which gives gitignore's rule that a file inside an
// excluded folder cannot be re-included.
func (ig *Ignorer) Ignored(rel string, isDir bool) bool {
	ignored := false
	var ancestors []string
	for d := path.Dir(rel); d != "." && d != "/"; d = path.Dir(d) {
		ancestors = append(ancestors, d)
	}
	// Root first, deepest last: later matches override earlier ones.
	dirs := []string{""}
	for i := len(ancestors) - 1; i >= 0; i-- {
		dirs = append(dirs, ancestors[i])
	}
	for _, d := range dirs {
		f := ig.load(d)
		if f == nil {
			continue
		}
		sub := rel
		if d != "" {
			sub = strings.TrimPrefix(rel, d+"/")
		}
		for _, r := range f.rules {
			if r.dirOnly && !isDir {
				continue
			}
			if r.re.MatchString(sub) {
				ignored = !r.negate
			}
		}
	}
	return ignored
}

// ExcludedWithParents reports whether rel or any folder above it is
// excluded (rel is checked both as a file and as a folder).
func (ig *Ignorer) ExcludedWithParents(rel string) bool {
	if rel == "" || rel == "." {
		return false
	}
	for d := path.Dir(rel); d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if ig.Ignored(d, true) {
			return true
		}
	}
	return ig.Ignored(rel, false) || ig.Ignored(rel, true)
}
