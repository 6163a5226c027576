package layerfile

import (
	"strconv"
	"strings"
)

// String prints f back as a Layerfile in canonical form, one instruction a
// line, that parses to the same instructions (the same Kind and arguments;
// Pos, Source and Text follow the new layout). Comments are not kept.
//
// One case cannot be printed faithfully: a RUN command or BUTTON message
// that ends with a backslash (possible only from a continuation at the very
// end of a file), since '#' is not a comment there.
func (f *File) String() string {
	var b strings.Builder
	for _, in := range f.Instructions {
		b.WriteString(in.Format())
		b.WriteByte('\n')
	}
	return b.String()
}

// Format returns the instruction in canonical form on one line.
func (in *Instruction) Format() string {
	kw := in.Kind.String()
	var parts []string
	switch in.Kind {
	case From:
		if a := in.From; a != nil {
			if a.Form == FromPath {
				parts = append(parts, quoteArg(a.Path))
			} else {
				parts = append(parts, a.Image)
			}
		}
	case Run, RunBackground, RunRepeatable:
		if in.Run != nil {
			parts = append(parts, in.Run.Command)
		}
	case Copy:
		if a := in.Copy; a != nil {
			for _, s := range a.Sources {
				parts = append(parts, quotePrefixed(s, "--"))
			}
			parts = append(parts, quoteArg(a.Dest))
		}
	case Env:
		if a := in.Env; a != nil {
			if len(a.Pairs) == 1 && hasUnquotedBlank(a.Pairs[0].Value) {
				parts = append(parts, a.Pairs[0].Key, a.Pairs[0].Value)
				break
			}
			for _, p := range a.Pairs {
				parts = append(parts, p.Key+"="+p.Value)
			}
		}
	case BuildEnv, SecretEnv:
		if in.Names != nil {
			parts = append(parts, in.Names.Names...)
		}
	case Workdir, User:
		if in.Path != nil {
			parts = append(parts, quoteArg(in.Path.Path))
		}
	case Cache, Wait, SetupFile:
		if in.Paths != nil {
			for _, p := range in.Paths.Paths {
				parts = append(parts, quoteArg(p))
			}
		}
	case Checkpoint:
		if a := in.Checkpoint; a != nil {
			switch {
			case a.Disabled:
				parts = append(parts, "disabled")
			case a.Name != "":
				parts = append(parts, a.Name)
			}
		}
	case SkipRemainingIf:
		if a := in.Skip; a != nil {
			for i, c := range a.Conds {
				if i > 0 {
					parts = append(parts, "AND")
				}
				v := quoteArg(c.Value)
				if strings.HasPrefix(v, "~") {
					v = `"` + v + `"`
				}
				parts = append(parts, c.Key+c.Op+v)
			}
		}
	case Split:
		if a := in.Split; a != nil {
			if a.Unordered {
				parts = append(parts, "UNORDERED")
			}
			parts = append(parts, strconv.Itoa(a.N))
		}
	case ExposeWebsite:
		if a := in.Website; a != nil {
			parts = append(parts, a.Scheme+"://localhost:"+strconv.Itoa(a.Port))
			if a.Path != "/" || a.Rewrite != "" {
				parts = append(parts, quoteArg(a.Path))
			}
			if a.Rewrite != "" {
				parts = append(parts, quoteArg(a.Rewrite))
			}
		}
	case ExposeTCP:
		if a := in.TCP; a != nil {
			parts = append(parts, strconv.Itoa(a.GuestPort))
			if a.HostPort != 0 {
				parts = append(parts, strconv.Itoa(a.HostPort))
			}
		}
	case Button:
		if in.Button != nil {
			parts = append(parts, in.Button.Message)
		}
	case Memory:
		if in.Memory != nil {
			parts = append(parts, FormatBytes(in.Memory.Bytes))
		}
	case Label:
		if a := in.Label; a != nil {
			parts = append(parts, a.Key+"="+quoteArg(a.Value))
		}
	case Clone:
		if a := in.Clone; a != nil {
			parts = append(parts, quoteArg(a.URL))
			if a.Default != "" {
				parts = append(parts, "DEFAULT="+quoteArg(a.Default))
			}
			for _, s := range a.Sources {
				parts = append(parts, quotePrefixed(s, "DEFAULT="))
			}
			parts = append(parts, quotePrefixed(a.Dest, "DEFAULT="))
		}
	}
	if len(parts) == 0 {
		return kw
	}
	line := kw + " " + strings.Join(parts, " ")
	if strings.HasSuffix(line, `\`) && commentsAllowed(in.Kind) {
		// A final backslash would continue the line; an empty comment
		// keeps it an argument.
		line += " #"
	}
	return line
}

// FormatBytes writes a memory size with the largest exact unit: "2G",
// "1536M", "100K".
func FormatBytes(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "G"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "M"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "K"
	}
	return strconv.FormatInt(n, 10)
}

// quotePrefixed quotes s like quoteArg, and also when it starts with prefix
// (which would otherwise read as an option).
func quotePrefixed(s, prefix string) string {
	q := quoteArg(s)
	if strings.HasPrefix(q, prefix) {
		return `"` + q + `"`
	}
	return q
}

// hasUnquotedBlank reports whether a raw value has a blank outside quotes.
func hasUnquotedBlank(s string) bool {
	if s == "" {
		return false
	}
	toks, err := tokenize(s)
	return err != nil || len(toks) != 1 || toks[0].off != 0 || len(toks[0].raw) != len(s)
}
