package layerfile

import "strings"

// ExpandValue resolves a raw ENV value the way a shell would: quotes are
// removed, a backslash escapes the next character (inside double quotes only
// $, `, " and \), and $VAR, ${VAR}, ${VAR:-word}, ${VAR-word}, ${VAR:+word}
// and ${VAR+word} are expanded with lookup everywhere except inside single
// quotes. An unset variable expands to "". A '$' not followed by a name or
// '{' is kept.
func ExpandValue(raw string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	expandInto(&b, raw, lookup)
	return b.String()
}

func expandInto(b *strings.Builder, s string, lookup func(string) (string, bool)) {
	inDouble := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'' && !inDouble:
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				b.WriteString(s[i+1:])
				return
			}
			b.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inDouble = !inDouble
		case c == '\\':
			if i+1 >= len(s) {
				b.WriteByte(c)
				continue
			}
			n := s[i+1]
			if inDouble && !strings.ContainsRune("$`\"\\", rune(n)) {
				b.WriteByte(c)
				continue
			}
			b.WriteByte(n)
			i++
		case c == '$':
			i = expandVar(b, s, i, lookup) - 1
		default:
			b.WriteByte(c)
		}
	}
}

// expandVar expands the reference starting at s[i] == '$' and returns the
// offset just after it.
func expandVar(b *strings.Builder, s string, i int, lookup func(string) (string, bool)) int {
	j := i + 1
	if j < len(s) && s[j] == '{' {
		end := matchingBrace(s, j)
		if end < 0 {
			b.WriteString(s[i:])
			return len(s)
		}
		inner := s[j+1 : end]
		n := nameLen(inner)
		name, rest := inner[:n], inner[n:]
		if name == "" {
			b.WriteString(s[i : end+1])
			return end + 1
		}
		val, set := lookup(name)
		switch {
		case rest == "":
			b.WriteString(val)
		case strings.HasPrefix(rest, ":-"):
			if val == "" {
				expandInto(b, rest[2:], lookup)
			} else {
				b.WriteString(val)
			}
		case strings.HasPrefix(rest, "-"):
			if !set {
				expandInto(b, rest[1:], lookup)
			} else {
				b.WriteString(val)
			}
		case strings.HasPrefix(rest, ":+"):
			if val != "" {
				expandInto(b, rest[2:], lookup)
			}
		case strings.HasPrefix(rest, "+"):
			if set {
				expandInto(b, rest[1:], lookup)
			}
		default:
			b.WriteString(val)
		}
		return end + 1
	}
	k := j + nameLen(s[j:])
	if k == j {
		b.WriteByte('$')
		return j
	}
	val, _ := lookup(s[j:k])
	b.WriteString(val)
	return k
}

// matchingBrace returns the offset of the '}' closing the '{' at s[open].
func matchingBrace(s string, open int) int {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}
