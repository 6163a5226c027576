package layerfile

import (
	"strings"
	"testing"
)

// BenchmarkParsePathological parses large adversarial inputs; each must
// stay linear in its size (a regression shows as a jump in ns/op).
func BenchmarkParsePathological(b *testing.B) {
	const n = 200000
	cases := []struct{ name, src string }{
		{"long-name", "FROM vm/debian:12\nSKIP REMAINING IF " + strings.Repeat("A", n) + "=1\n"},
		{"amp-name", "FROM vm/debian:12\nSKIP REMAINING IF A=&" + strings.Repeat("B", n) + "\n"},
		{"continuations", "FROM vm/debian:12\nRUN " + strings.Repeat("a \\\n", n/4) + "\n"},
		{"blank-continuations", "FROM vm/debian:12\nRUN a \\\n" + strings.Repeat("\n", n) + "b\n"},
		{"tokens", "FROM vm/debian:12\nCOPY " + strings.Repeat("a ", n/2) + "b/\n"},
		{"quotes", "FROM vm/debian:12\nCOPY " + strings.Repeat("\"", n) + "\n"},
		{"comment-continuations", "FROM vm/debian:12\nRUN " + strings.Repeat(" #\\\n", n/4) + "\n"},
		{"unknown-lines", strings.Repeat("X\n", n/2)},
		{"long-word", strings.Repeat("Z", n)},
		{"servers", "FROM vm/debian:12\n" + strings.Repeat("RUN npm start\n", n/14) + "EXPOSE WEBSITE 80\n"},
		{"memory-after-run", "FROM vm/debian:12\nRUN x\n" + strings.Repeat("MEMORY 1G\n", n/10)},
		{"nul", strings.Repeat("\x00", n)},
		{"cr", strings.Repeat("\r", n)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			data := []byte(c.src)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				f, _ := Parse("L", data)
				_ = f.String()
			}
		})
	}
}
