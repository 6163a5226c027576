package layerfile

import (
	"strings"
)

// token is one blank-separated argument.
type token struct {
	val string // quotes removed, escapes applied
	raw string // as written
	off int    // byte offset of raw in the argument string
}

// tokenError is an unterminated quote at off.
type tokenError struct {
	off   int
	quote byte
}

func isBlankByte(c byte) bool { return c == ' ' || c == '\t' }

// tokenize splits s into blank-separated words. Inside '...' every character
// is literal; inside "..." a backslash escapes " and \ (and is kept before
// any other character); outside quotes a backslash escapes the next
// character.
func tokenize(s string) ([]token, *tokenError) {
	var toks []token
	i := 0
	for {
		for i < len(s) && isBlankByte(s[i]) {
			i++
		}
		if i >= len(s) {
			return toks, nil
		}
		start := i
		var val strings.Builder
		for i < len(s) && !isBlankByte(s[i]) {
			c := s[i]
			switch c {
			case '\'':
				j := strings.IndexByte(s[i+1:], '\'')
				if j < 0 {
					return toks, &tokenError{off: i, quote: c}
				}
				val.WriteString(s[i+1 : i+1+j])
				i += j + 2
			case '"':
				i++
				closed := false
				for i < len(s) {
					if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
						val.WriteByte(s[i+1])
						i += 2
						continue
					}
					if s[i] == '"' {
						closed = true
						i++
						break
					}
					val.WriteByte(s[i])
					i++
				}
				if !closed {
					return toks, &tokenError{off: start + strings.IndexByte(s[start:], '"'), quote: c}
				}
			case '\\':
				if i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
				} else {
					val.WriteByte(c)
					i++
				}
			default:
				val.WriteByte(c)
				i++
			}
		}
		toks = append(toks, token{val: val.String(), raw: s[start:i], off: start})
	}
}

// unquote removes quotes and escapes from one word as tokenize would.
func unquote(raw string) (string, *tokenError) {
	toks, err := tokenize(raw)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	last := 0
	for _, t := range toks {
		b.WriteString(raw[last:t.off])
		b.WriteString(t.val)
		last = t.off + len(t.raw)
	}
	return b.String(), nil
}

// commentStart returns the offset of a trailing comment in an argument
// string: a '#' at the start of a word, outside quotes. -1 when none.
func commentStart(s string) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return -1
			}
			i += j + 1
		case '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '\\':
			i++
		case '#':
			if i == 0 || isBlankByte(s[i-1]) {
				return i
			}
		}
	}
	return -1
}

// shellCommentStart returns the offset of the first bash comment in a shell
// command (a '#' starting a word outside quotes), or -1.
func shellCommentStart(s string) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return -1
			}
			i += j + 1
		case '"', '`':
			q := s[i]
			for i++; i < len(s) && s[i] != q; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '\\':
			i++
		case '#':
			if i == 0 || strings.IndexByte(" \t;&|()<>", s[i-1]) >= 0 {
				return i
			}
		}
	}
	return -1
}

// quoteArg returns s as one word that tokenize reads back as s.
func quoteArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\") && !strings.HasPrefix(s, "#") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// nameLen returns the length of the variable name at the start of s.
func nameLen(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9') {
			continue
		}
		return i
	}
	return len(s)
}

// isName reports whether s is a variable name: [A-Za-z_][A-Za-z0-9_]*.
func isName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9') {
			continue
		}
		return false
	}
	return true
}
