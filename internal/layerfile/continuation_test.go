package layerfile

import (
	"reflect"
	"testing"
)

func TestEncodingAndContinuation(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		wantText []string
		wantDiag []string
		lastPos  Pos
	}{
		{
			name:     "BOM and CRLF",
			src:      "\xEF\xBB\xBFFROM vm/debian:12\r\nRUN echo a \\\r\n  b\r\n",
			wantText: []string{"FROM vm/debian:12", "RUN echo a   b"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "lone CR line ends",
			src:      "FROM vm/debian:12\rRUN x\rRUN y",
			wantText: []string{"FROM vm/debian:12", "RUN x", "RUN y"},
			lastPos:  Pos{"L", 3, 1},
		},
		{
			name:     "comment line inside a continuation is dropped",
			src:      "FROM vm/debian:12\nRUN apt-get install \\\n# old-package \\\n    new-package\nRUN z\n",
			wantText: []string{"FROM vm/debian:12", "RUN apt-get install     new-package", "RUN z"},
			lastPos:  Pos{"L", 5, 1},
		},
		{
			name:     "blank line inside a continuation warns",
			src:      "FROM vm/debian:12\nRUN a \\\n\n  && b\n",
			wantText: []string{"FROM vm/debian:12", "RUN a   && b"},
			wantDiag: []string{"L:3:1: warning: blank line inside the instruction continued from line 2: skipped, and the next line still continues it (hint: remove the blank line, or the backslash at the end of the line above it if the instruction should end there)"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "several blank lines inside a continuation warn once",
			src:      "FROM vm/debian:12\nRUN a \\\n\n  \n\t\n  && b\n",
			wantText: []string{"FROM vm/debian:12", "RUN a   && b"},
			wantDiag: []string{"L:3:1: warning: 3 blank lines inside the instruction continued from line 2: skipped, and the next line still continues it (hint: remove the blank line, or the backslash at the end of the line above it if the instruction should end there)"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "continuation at the end of a shell comment",
			src:      "FROM vm/debian:12\nRUN make # build \\\n  && make test\n",
			wantText: []string{"FROM vm/debian:12", "RUN make # build   && make test"},
			wantDiag: []string{"L:2:10: warning: this shell comment ends with a line continuation, so line 3 is joined into the comment and ignored (hint: end the comment before the backslash, or put the comment on a line of its own)"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "quoted # is not a shell comment",
			src:      "FROM vm/debian:12\nRUN echo '# x' \\\n  && make\n",
			wantText: []string{"FROM vm/debian:12", "RUN echo '# x'   && make"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "continuation in a directive comment",
			src:      "FROM vm/debian:12\nCOPY a b/ # copy \\\n  c\nRUN x\n",
			wantText: []string{"FROM vm/debian:12", "COPY a b/", "RUN x"},
			wantDiag: []string{"L:2:11: warning: this comment ends with a line continuation, so line 3 is joined into the comment and ignored (hint: end the comment before the backslash, or put the comment on a line of its own)"},
			lastPos:  Pos{"L", 4, 1},
		},
		{
			name:     "backslash at end of file",
			src:      "FROM vm/debian:12\nRUN x \\",
			wantText: []string{"FROM vm/debian:12", "RUN x"},
			lastPos:  Pos{"L", 2, 1},
		},
		{
			name:     "indented keyword",
			src:      "FROM vm/debian:12\n\t  RUN x",
			wantText: []string{"FROM vm/debian:12", "RUN x"},
			lastPos:  Pos{"L", 2, 4},
		},
		{
			name:     "UTF-16",
			src:      "\xFF\xFEF\x00R\x00O\x00M\x00",
			wantDiag: []string{"L:1:1: error: file is encoded as UTF-16; Layerfiles must be UTF-8 (hint: save the file as UTF-8)"},
		},
		{
			name:     "UTF-16 without BOM",
			src:      "F\x00R\x00O\x00M\x00 \x00v\x00m\x00",
			wantDiag: []string{"L:1:1: error: file is encoded as UTF-16; Layerfiles must be UTF-8 (hint: save the file as UTF-8)"},
		},
		{
			name:     "NUL byte stops parsing",
			src:      "FROM vm/debian:12\nRUN a\x00b\n",
			wantDiag: []string{"L:2:6: error: NUL byte: this is not a text file (hint: save the file as plain UTF-8 text)"},
		},
		{
			name:     "invalid UTF-8",
			src:      "FROM vm/debian:12\nRUN echo é\xff\n",
			wantText: []string{"FROM vm/debian:12", "RUN echo é\xff"},
			wantDiag: []string{"L:2:11: error: invalid UTF-8 byte 0xFF (hint: save the file as UTF-8)"},
			lastPos:  Pos{"L", 2, 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, ds := Parse("L", []byte(tc.src))
			var texts, diags []string
			for _, in := range f.Instructions {
				texts = append(texts, in.Text)
			}
			for _, d := range ds {
				diags = append(diags, d.String())
			}
			if !reflect.DeepEqual(texts, tc.wantText) {
				t.Errorf("texts = %q, want %q", texts, tc.wantText)
			}
			if !reflect.DeepEqual(diags, tc.wantDiag) {
				t.Errorf("diags = %q, want %q", diags, tc.wantDiag)
			}
			if len(f.Instructions) > 0 {
				if got := f.Instructions[len(f.Instructions)-1].Pos; got != tc.lastPos {
					t.Errorf("last Pos = %v, want %v", got, tc.lastPos)
				}
			}
		})
	}
}

func TestSourceKeepsAllPhysicalLines(t *testing.T) {
	src := "FROM vm/debian:12\r\nRUN a \\\r\n# dropped\r\n\r\n  b\r\nRUN c\r\n"
	f, _ := Parse("L", []byte(src))
	if got, want := f.Instructions[1].Source, "RUN a \\\n# dropped\n\n  b"; got != want {
		t.Errorf("Source = %q, want %q", got, want)
	}
	if got, want := f.Instructions[1].Text, "RUN a   b"; got != want {
		t.Errorf("Text = %q, want %q", got, want)
	}
	if got := f.Instructions[2].Pos; got != (Pos{"L", 6, 1}) {
		t.Errorf("Pos after continuation = %v, want L:6:1", got)
	}
}

func TestArgumentPositionOnContinuationLine(t *testing.T) {
	_, ds := Parse("L", []byte("FROM vm/debian:12\nEXPOSE WEBSITE \\\n    http://localhost:9000/app\n"))
	if len(ds) != 1 || ds[0].Pos != (Pos{"L", 3, 5}) {
		t.Fatalf("diags = %v, want one at L:3:5", ds)
	}
}

func TestColumnsCountCharacters(t *testing.T) {
	_, ds := Parse("L", []byte("FROM vm/debian:12\nLABEL display_name=été\nSPLIT été\n"))
	if len(ds) != 1 || ds[0].Pos != (Pos{"L", 3, 7}) {
		t.Fatalf("diags = %v, want one at L:3:7", ds)
	}
}
