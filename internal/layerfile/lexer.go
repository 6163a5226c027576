package layerfile

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// segment is the part of one physical line that went into a logical line.
type segment struct {
	line     int    // 1-based physical line number
	lineText string // the whole physical line, without its line end
	physOff  int    // byte offset in lineText where the segment starts
	logOff   int    // byte offset in the logical text where it starts
	// continued is true when the segment ended with a line continuation.
	continued bool
}

// logicalLine is one instruction's text after joining continued lines.
type logicalLine struct {
	text   string // starts at the keyword; not trimmed on the right
	segs   []segment
	source string // physical lines as written, joined by "\n"
}

// pos maps a byte offset in the logical text to a position in the file.
func (l *logicalLine) pos(file string, off int) Pos {
	i := len(l.segs) - 1
	for i > 0 && l.segs[i].logOff > off {
		i--
	}
	s := l.segs[i]
	b := s.physOff + off - s.logOff
	b = max(0, min(b, len(s.lineText)))
	return Pos{File: file, Line: s.line, Col: utf8.RuneCountInString(s.lineText[:b]) + 1}
}

// segmentOf returns the index of the segment holding logical offset off.
func (l *logicalLine) segmentOf(off int) int {
	i := len(l.segs) - 1
	for i > 0 && l.segs[i].logOff > off {
		i--
	}
	return i
}

// decode checks the encoding (SPEC §1) and returns the text without a
// byte-order mark. ok is false when the file cannot be read as text at all.
func decode(path string, data []byte) (text string, diags []Diagnostic, ok bool) {
	if bytes.HasPrefix(data, []byte{0xFF, 0xFE}) || bytes.HasPrefix(data, []byte{0xFE, 0xFF}) || looksUTF16(data) {
		return "", []Diagnostic{{
			Pos:      Pos{File: path, Line: 1, Col: 1},
			Severity: Error,
			Message:  "file is encoded as UTF-16; Layerfiles must be UTF-8",
			Hint:     "save the file as UTF-8",
		}}, false
	}
	data = bytes.TrimPrefix(data, []byte{0xEF, 0xBB, 0xBF})
	text = string(data)
	line, col := 1, 1
	for i := 0; i < len(text); {
		r, size := utf8.DecodeRuneInString(text[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			if len(diags) == 0 { // one report is enough
				diags = append(diags, Diagnostic{
					Pos:      Pos{File: path, Line: line, Col: col},
					Severity: Error,
					Message:  fmt.Sprintf("invalid UTF-8 byte 0x%02X", text[i]),
					Hint:     "save the file as UTF-8",
				})
			}
			col++
		case r == 0:
			diags = append(diags, Diagnostic{
				Pos:      Pos{File: path, Line: line, Col: col},
				Severity: Error,
				Message:  "NUL byte: this is not a text file",
				Hint:     "save the file as plain UTF-8 text",
			})
			return "", diags, false
		case r == '\n' || (r == '\r' && !strings.HasPrefix(text[i+1:], "\n")):
			line, col = line+1, 1
		case r == '\r':
		default:
			col++
		}
		i += size
	}
	return text, diags, true
}

// looksUTF16 recognises UTF-16 without a byte-order mark: ASCII text with a
// NUL in every other byte.
func looksUTF16(data []byte) bool {
	n := min(len(data), 512)
	if n < 4 {
		return false
	}
	even, odd := 0, 0
	for i := 0; i < n; i++ {
		if data[i] == 0 {
			if i%2 == 0 {
				even++
			} else {
				odd++
			}
		}
	}
	half := n / 2
	return even > half*3/4 || odd > half*3/4
}

// splitLines splits text at "\r\n", "\r" and "\n". A final line end does not
// start another line.
func splitLines(text string) []string {
	var lines []string
	start := 0
	for i := 0; i < len(text); i++ {
		switch text[i] {
		case '\n':
			lines = append(lines, text[start:i])
			start = i + 1
		case '\r':
			lines = append(lines, text[start:i])
			if i+1 < len(text) && text[i+1] == '\n' {
				i++
			}
			start = i + 1
		}
	}
	if start < len(text) {
		lines = append(lines, text[start:])
	}
	return lines
}

// isBlank reports whether s holds only spaces and tabs.
func isBlank(s string) bool { return strings.TrimLeft(s, " \t") == "" }

// isCommentLine reports whether the first non-blank character of s is '#'.
func isCommentLine(s string) bool { return strings.HasPrefix(strings.TrimLeft(s, " \t"), "#") }

// continues reports whether s ends with a backslash followed only by blanks,
// and returns s without them.
func continues(s string) (string, bool) {
	t := strings.TrimRight(s, " \t")
	if strings.HasSuffix(t, `\`) {
		return t[:len(t)-1], true
	}
	return s, false
}

// logicalLines groups physical lines into instructions: comments and blank
// lines between instructions are skipped; continued lines are joined (SPEC
// §1), dropping blank and comment lines inside a continuation, with a warning
// for a blank one.
func logicalLines(path string, lines []string) ([]*logicalLine, []Diagnostic) {
	var out []*logicalLine
	var diags []Diagnostic
	for i := 0; i < len(lines); i++ {
		first := lines[i]
		if isBlank(first) || isCommentLine(first) {
			continue
		}
		ll := &logicalLine{}
		var text strings.Builder
		startLine := i
		lead := len(first) - len(strings.TrimLeft(first, " \t"))
		content, cont := continues(first[lead:])
		ll.segs = append(ll.segs, segment{line: i + 1, lineText: first, physOff: lead, logOff: 0, continued: cont})
		text.WriteString(content)
		for cont && i+1 < len(lines) {
			i++
			l := lines[i]
			if isBlank(l) {
				first := i
				for i+1 < len(lines) && isBlank(lines[i+1]) {
					i++
				}
				what := "blank line"
				if i > first {
					what = fmt.Sprintf("%d blank lines", i-first+1)
				}
				diags = append(diags, Diagnostic{
					Pos:      Pos{File: path, Line: first + 1, Col: 1},
					Severity: Warning,
					Message:  fmt.Sprintf("%s inside the instruction continued from line %d: skipped, and the next line still continues it", what, startLine+1),
					Hint:     "remove the blank line, or the backslash at the end of the line above it if the instruction should end there",
				})
				continue
			}
			if isCommentLine(l) {
				continue
			}
			content, cont = continues(l)
			ll.segs = append(ll.segs, segment{line: i + 1, lineText: l, physOff: 0, logOff: text.Len(), continued: cont})
			text.WriteString(content)
		}
		ll.text = text.String()
		ll.source = strings.Join(lines[startLine:i+1], "\n")
		out = append(out, ll)
	}
	return out, diags
}
