// Package plan turns a repository into the set of Layerfiles to run and the
// graph between them: FROM <path> makes a Layerfile the child of another,
// WAIT <path> makes it start after others. This file discovers Layerfiles,
// resolves FROM/WAIT targets and checks the graph (missing targets, cycles).
package plan

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/strata-ci/strata/internal/layerfile"
)

// LayerfileName is the exact name of a build definition file.
const LayerfileName = "Layerfile"

// StateDir is the product's state folder inside a repository; Discover
// skips it, like .git.
const StateDir = ".strata"

// Repo is a repository's Layerfiles and the graph between them.
type Repo struct {
	// Root is the absolute repository root.
	Root string
	// Files are the parsed Layerfiles, sorted by path (absolute paths).
	Files []*layerfile.File

	byPath map[string]*layerfile.File
	parent map[*layerfile.File]*layerfile.File
	waits  map[*layerfile.File][]*layerfile.File
}

// File returns the Layerfile at the absolute path p, or nil.
func (r *Repo) File(p string) *layerfile.File { return r.byPath[filepath.Clean(p)] }

// Parent returns the Layerfile f's FROM <path> names, or nil when f starts
// from an image (or its target is missing).
func (r *Repo) Parent(f *layerfile.File) *layerfile.File { return r.parent[f] }

// Waits returns the Layerfiles f's WAIT lines name, in order, without
// duplicates.
func (r *Repo) Waits(f *layerfile.File) []*layerfile.File { return r.waits[f] }

// Rel returns p relative to the repository root with forward slashes
// ("services/web/Layerfile"), or p itself when it is outside.
func (r *Repo) Rel(p string) string { return relTo(r.Root, p) }

func relTo(root, p string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return p
	}
	return filepath.ToSlash(rel)
}

// skipDir reports whether Discover skips a folder with this name.
func skipDir(name string) bool { return name == ".git" || name == StateDir }

// Discover returns the absolute paths of every file named exactly
// "Layerfile" under root, hidden folders included, .git and .strata
// excluded, sorted. Symbolic links to folders are not followed; a symbolic
// link named Layerfile counts when it points to a regular file.
func Discover(root string) ([]string, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", root, err)
	}
	var out []string
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != abs && skipDir(d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Name() != LayerfileName {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() {
				return nil
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", root, err)
	}
	slices.Sort(out)
	return out, nil
}

// TargetError is a FROM or WAIT target that does not resolve to a
// Layerfile.
type TargetError struct {
	Target string // as written
	Reason string
	Hint   string
	Err    error // underlying error, e.g. fs.ErrNotExist; may be nil
}

func (e *TargetError) Error() string { return fmt.Sprintf("%s: %s", e.Target, e.Reason) }
func (e *TargetError) Unwrap() error { return e.Err }

// ResolveTarget resolves a FROM or WAIT target written in the Layerfile
// fromFile to the absolute path of a Layerfile. A target starting with / is
// relative to the repository root, any other to fromFile's folder; it names
// a Layerfile or a folder holding one ("../base", "/base",
// "/base/Layerfile"). Errors are *TargetError.
func ResolveTarget(root, fromFile, target string) (string, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", target, err)
	}
	if target == "" {
		return "", &TargetError{Target: target, Reason: "empty path"}
	}
	var p string
	if strings.HasPrefix(target, "/") {
		p = filepath.Join(root, filepath.FromSlash(target))
	} else {
		from := fromFile
		if !filepath.IsAbs(from) {
			from = filepath.Join(root, from)
		}
		p = filepath.Join(filepath.Dir(from), filepath.FromSlash(target))
	}
	rel := relTo(root, p)
	if filepath.IsAbs(rel) {
		return "", &TargetError{Target: target, Reason: "points outside the repository",
			Hint: "paths starting with / are relative to the repository root, e.g. /base"}
	}
	for _, part := range strings.Split(rel, "/") {
		if skipDir(part) {
			return "", &TargetError{Target: target, Reason: fmt.Sprintf("is inside %s, where Layerfiles are not run", part)}
		}
	}
	st, err := os.Stat(p)
	if err != nil {
		te := &TargetError{Target: target, Reason: fmt.Sprintf("no such file or folder (/%s)", strings.TrimPrefix(rel, ".")), Err: err}
		if errors.Is(err, fs.ErrNotExist) {
			if fixed := caseInsensitiveMatch(root, rel); fixed != "" {
				te.Hint = "paths are case-sensitive: " + suggestLike(target, root, fromFile, fixed)
			}
		}
		return "", te
	}
	if st.IsDir() {
		lf := filepath.Join(p, LayerfileName)
		if st2, err := os.Stat(lf); err != nil || !st2.Mode().IsRegular() {
			return "", &TargetError{Target: target, Reason: fmt.Sprintf("folder /%s has no Layerfile", strings.TrimPrefix(rel, ".")), Err: fs.ErrNotExist}
		}
		return lf, nil
	}
	if filepath.Base(p) != LayerfileName {
		hint := ""
		if strings.EqualFold(filepath.Base(p), LayerfileName) {
			hint = "the file must be named exactly Layerfile"
		}
		return "", &TargetError{Target: target, Reason: fmt.Sprintf("/%s is not a Layerfile (only files named Layerfile are)", rel), Hint: hint}
	}
	return p, nil
}

// caseInsensitiveMatch finds an existing path under root equal to rel
// ignoring case, or "".
func caseInsensitiveMatch(root, rel string) string {
	dir := root
	var out []string
	for _, part := range strings.Split(rel, "/") {
		if part == "." || part == "" {
			continue
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return ""
		}
		found := ""
		for _, e := range ents {
			if strings.EqualFold(e.Name(), part) {
				found = e.Name()
				if found == part {
					break
				}
			}
		}
		if found == "" {
			return ""
		}
		out = append(out, found)
		dir = filepath.Join(dir, found)
	}
	return strings.Join(out, "/")
}

// suggestLike writes the repository path fixed the way target was written:
// absolute (/x/Layerfile) or relative to fromFile's folder.
func suggestLike(target, root, fromFile, fixed string) string {
	if strings.HasPrefix(target, "/") {
		return "/" + fixed
	}
	from := fromFile
	if !filepath.IsAbs(from) {
		from = filepath.Join(root, from)
	}
	rel, err := filepath.Rel(filepath.Dir(from), filepath.Join(root, filepath.FromSlash(fixed)))
	if err != nil {
		return "/" + fixed
	}
	return filepath.ToSlash(rel)
}

// edge is a FROM or WAIT line pointing to another Layerfile.
type edge struct {
	from   *layerfile.File
	to     *layerfile.File
	inst   *layerfile.Instruction
	target string
}

// Load discovers and parses every Layerfile under root and checks the graph:
// every FROM <path> and WAIT target must resolve to a Layerfile of the
// repository, and FROM/WAIT must not form a cycle. Problems are diagnostics
// (positions use absolute paths); the error is for what stops loading
// altogether (an unreadable folder or file).
func Load(root string) (*Repo, []layerfile.Diagnostic, error) {
	return LoadFiles(root, nil)
}

// LoadFiles is Load plus the given extra files, which need not be named
// Layerfile (lint accepts any file path). Paths are absolute or relative to
// the working directory.
func LoadFiles(root string, extra []string) (*Repo, []layerfile.Diagnostic, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", root, err)
	}
	paths, err := Discover(abs)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range extra {
		p, err := filepath.Abs(e)
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w", e, err)
		}
		if !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	r := &Repo{
		Root:   abs,
		byPath: map[string]*layerfile.File{},
		parent: map[*layerfile.File]*layerfile.File{},
		waits:  map[*layerfile.File][]*layerfile.File{},
	}
	var diags []layerfile.Diagnostic
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w", p, err)
		}
		f, ds := layerfile.Parse(p, data)
		diags = append(diags, ds...)
		r.Files = append(r.Files, f)
		r.byPath[p] = f
	}
	edges, ds := r.resolve()
	diags = append(diags, ds...)
	diags = append(diags, r.cycles(edges)...)
	layerfile.SortDiagnostics(diags)
	return r, diags, nil
}

// resolve fills the parent and waits maps and reports targets that do not
// resolve.
func (r *Repo) resolve() ([]edge, []layerfile.Diagnostic) {
	var edges []edge
	var diags []layerfile.Diagnostic
	for _, f := range r.Files {
		for _, in := range f.Instructions {
			var targets []string
			switch {
			case in.Kind == layerfile.From && in.From != nil && in.From.Form == layerfile.FromPath:
				targets = []string{in.From.Path}
			case in.Kind == layerfile.Wait && in.Paths != nil:
				targets = in.Paths.Paths
			default:
				continue
			}
			for _, t := range targets {
				to, err := r.target(f, t)
				if err != nil {
					d := layerfile.Diagnostic{Pos: argPos(in, t), Severity: layerfile.Error,
						Message: fmt.Sprintf("%s target %s", in.Kind, err.Error())}
					var te *TargetError
					if errors.As(err, &te) {
						d.Hint = te.Hint
					}
					diags = append(diags, d)
					continue
				}
				edges = append(edges, edge{from: f, to: to, inst: in, target: t})
				if in.Kind == layerfile.From {
					r.parent[f] = to
				} else if !slices.Contains(r.waits[f], to) {
					r.waits[f] = append(r.waits[f], to)
				}
			}
		}
	}
	return edges, diags
}

func (r *Repo) target(f *layerfile.File, t string) (*layerfile.File, error) {
	p, err := ResolveTarget(r.Root, f.Path, t)
	if err != nil {
		return nil, err
	}
	to := r.byPath[p]
	if to == nil {
		return nil, &TargetError{Target: t, Reason: fmt.Sprintf("/%s is not a Layerfile of this repository", r.Rel(p))}
	}
	return to, nil
}

// argPos is the position of argument arg in a one-line instruction, or the
// instruction's position.
func argPos(in *layerfile.Instruction, arg string) layerfile.Pos {
	pos := in.Pos
	if strings.Contains(in.Source, "\n") {
		return pos
	}
	kwEnd := len(in.Kind.String())
	if i := strings.Index(in.Text[min(kwEnd, len(in.Text)):], arg); i >= 0 {
		pos.Col += utf8.RuneCountInString(in.Text[:kwEnd+i])
	}
	return pos
}

// cycles reports every FROM/WAIT cycle, once at each of its edges, with the
// chain that forms it.
func (r *Repo) cycles(edges []edge) []layerfile.Diagnostic {
	out := map[*layerfile.File][]edge{}
	for _, e := range edges {
		out[e.from] = append(out[e.from], e)
	}
	const (
		white = iota
		grey
		black
	)
	color := map[*layerfile.File]int{}
	var stack []edge
	var found [][]edge
	seen := map[string]bool{}
	var visit func(f *layerfile.File)
	visit = func(f *layerfile.File) {
		color[f] = grey
		for _, e := range out[f] {
			switch color[e.to] {
			case white:
				stack = append(stack, e)
				visit(e.to)
				stack = stack[:len(stack)-1]
			case grey:
				// The cycle is the part of the stack starting at e.to, plus e.
				i := len(stack)
				for i > 0 && stack[i-1].from != e.to {
					i--
				}
				if e.from == e.to {
					i = len(stack)
				} else {
					i--
				}
				cyc := append(slices.Clone(stack[max(i, 0):]), e)
				if k := cycleKey(cyc); !seen[k] {
					seen[k] = true
					found = append(found, cyc)
				}
			}
		}
		color[f] = black
	}
	for _, f := range r.Files {
		if color[f] == white {
			visit(f)
		}
	}
	var diags []layerfile.Diagnostic
	for _, cyc := range found {
		for i, e := range cyc {
			rot := append(slices.Clone(cyc[i:]), cyc[:i]...)
			var b strings.Builder
			for _, re := range rot {
				fmt.Fprintf(&b, "%s (%s %s) -> ", r.Rel(re.from.Path), re.inst.Kind, re.target)
			}
			b.WriteString(r.Rel(rot[0].from.Path))
			diags = append(diags, layerfile.Diagnostic{
				Pos:      argPos(e.inst, e.target),
				Severity: layerfile.Error,
				Message:  "FROM/WAIT cycle: " + b.String(),
				Hint:     "a Layerfile cannot build on or wait for itself, directly or through others; remove one of these lines",
			})
		}
	}
	return diags
}

// cycleKey identifies a cycle regardless of where it was entered.
func cycleKey(cyc []edge) string {
	keys := make([]string, len(cyc))
	for i, e := range cyc {
		keys[i] = fmt.Sprintf("%p>%p@%d", e.from, e.to, e.inst.Pos.Line)
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}
