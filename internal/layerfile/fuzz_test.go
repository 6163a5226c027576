package layerfile

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// normalized strips what legitimately changes when a file is printed back:
// positions, source text and logical text.
func normalized(f *File) []Instruction {
	var out []Instruction
	for _, in := range f.Instructions {
		c := *in
		c.Pos, c.Source, c.Text = Pos{}, "", ""
		out = append(out, c)
	}
	return out
}

// roundTrip checks that printing f and parsing the result gives the same
// instructions.
func roundTrip(t *testing.T, f *File) {
	t.Helper()
	for _, in := range f.Instructions {
		if strings.HasSuffix(in.Text, `\`) && !commentsAllowed(in.Kind) {
			return // a trailing backslash cannot be printed (see File.String)
		}
	}
	printed := f.String()
	g, _ := Parse(f.Path, []byte(printed))
	if a, b := normalized(f), normalized(g); !reflect.DeepEqual(a, b) {
		t.Fatalf("printed file parses differently\nprinted:\n%s\nbefore: %s\nafter:  %s", printed, dump(a), dump(b))
	}
	if again := g.String(); again != printed {
		t.Fatalf("printing is not stable:\nfirst:\n%s\nsecond:\n%s", printed, again)
	}
}

func dump(is []Instruction) string {
	var b strings.Builder
	for _, in := range is {
		fmt.Fprintf(&b, "%s %+v; ", in.Kind, args(&in))
	}
	return b.String()
}

func seedFuzz(f *testing.F) {
	for _, s := range []string{
		"FROM vm/debian:12\nRUN echo hi\n",
		"FROM ../base\nCOPY \"a b\" c/ d/\nENV A=1 B=\"x y\" C\nENV D hello world\n",
		"FROM vm/ubuntu:18.04\nSKIP REMAINING IF A=~\"^v\" AND B!=x\nSPLIT UNORDERED 3\n",
		"FROM /x\nEXPOSE WEBSITE https://localhost:8443 /api /v1\nEXPOSE TCP 5432 15432\nMEMORY 1536M\n",
		"FROM a/b:c\nLABEL display_name=\"x y\"\nCLONE https://x/y DEFAULT=main a b /c/\nCHECKPOINT disabled\n",
		"FROM vm/debian:12\nRUN a \\\n# c\n\n  b # d \\\n e\nBUTTON ok? # fine\nWORKDIR '/a b'\nUSER app\n",
		"\xEF\xBB\xBFFROM vm/debian:12\r\nRUN x\rRUN y \\",
		"THEN RUN x\nCMD [\"a\"]\nrun x\nEXPOSE 80\n",
	} {
		f.Add([]byte(s))
	}
	dir := os.Getenv("STRATA_CORPUS")
	if dir == "" {
		if root, err := repoRoot(); err == nil {
			dir = filepath.Join(filepath.Dir(root), "shared", "corpus", "layerfiles")
		}
	}
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if data, err := os.ReadFile(p); err == nil {
				f.Add(data)
			}
		}
		return nil
	})
}

// FuzzParse: Parse never panics, every diagnostic has a position inside the
// file, and printing the AST back parses to the same AST.
func FuzzParse(f *testing.F) {
	seedFuzz(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		file, ds := Parse("L", data)
		if file == nil {
			t.Fatal("nil File")
		}
		lines := strings.Count(string(data), "\n") + strings.Count(string(data), "\r") + 1
		for _, d := range ds {
			if d.Pos.Line < 1 || d.Pos.Col < 1 || d.Pos.Line > lines || d.Message == "" {
				t.Fatalf("bad diagnostic %#v", d)
			}
		}
		for _, in := range file.Instructions {
			if args(in) == nil {
				t.Fatalf("instruction %q has no arguments", in.Text)
			}
		}
		roundTrip(t, file)
	})
}

func TestRoundTripCorpus(t *testing.T) {
	dir := corpusDir(t)
	for _, rel := range corpusFiles(t, dir) {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		f, _ := Parse(rel, data)
		t.Run(rel, func(t *testing.T) { roundTrip(t, f) })
	}
}
